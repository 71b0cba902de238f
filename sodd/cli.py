"""The `sodd` command: one sub-command per module in `sodd.commands`.

Each module there exposes `register(subparsers)`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning an exit code. Discovering them keeps this file
unchanged when a command is added.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from sodd import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sodd", description="Small-object detection daemon and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
