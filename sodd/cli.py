"""The `sodd` command: one sub-command per module in `sodd.commands`.

Each module there exposes `register(subparsers)`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning an exit code. Discovering them keeps this file
unchanged when a command is added. Only the module of the command being run is imported (the
command `model-info` lives in `model_info.py`), so `sodd serve` never pays for the training
stack; `sodd --help` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from sodd import commands


def command_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sodd", description="Small-object detection daemon and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [only] if only else command_modules():
        importlib.import_module(f"{commands.__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argv[0].replace("-", "_") if argv else ""
    args = build_parser(first if first in command_modules() else None).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
