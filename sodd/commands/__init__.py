"""The `sodd` sub-commands, one module each: argument parsing and output only; the work is done by the
packages they call. May import anything in sodd.
"""
