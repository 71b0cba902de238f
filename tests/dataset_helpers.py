"""Shared by the dataset tests: a snapshot of a folder (to show a failure changed nothing) and the
`sodd dataset` command run in-process."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from sodd.commands import dataset as dataset_command


def snapshot(root: Path) -> dict[str, Any]:
    """Every file and link under `root` with its content and mode."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_file():
                state[rel] = ("file", path.read_bytes(), path.stat().st_mode)
            else:
                state[rel] = ("dir",)
    return state


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    dataset_command.register(parser.add_subparsers())
    args = parser.parse_args(["dataset", *argv])
    return args.func(args)
