"""Configuration: the settings `sodd serve` runs with, their types, defaults and checks, read once and frozen.

Owns the schema of every setting, the TOML file, and the values other packages receive.
May import: sodd.errors, sodd.model, sodd.plugins (device strings). Nothing on the request path
reads files or the environment; it reads these objects.
"""
