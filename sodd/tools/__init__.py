"""Tools around the daemon: benchmarks (`sodd bench`) and the in-process fuzzing harness.

May import anything in sodd except sodd.commands and sodd.cli.
"""
