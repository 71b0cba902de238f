"""All-or-nothing file changes for conversion and split.

Changes are planned first and applied by `commit()`: new content goes to temporary files beside
their targets, then every target is put in place by rename. A file about to be replaced is first
renamed aside, so when any step fails the renames are undone in reverse and every file on disk is
left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@dataclass
class _Step:
    kind: str  # "write" (temp -> dst) or "move" (src -> dst)
    dst: Path
    src: Path | None = None  # a move's source
    data: bytes | None = None  # a write's content
    copy_from: Path | None = None  # a write's content, copied from a file
    temp: Path | None = None
    stash: Path | None = None
    done: bool = False


class AtomicChanges:
    """A batch of writes, copies and renames that happens completely or not at all."""

    def __init__(self) -> None:
        self._steps: list[_Step] = []
        self._created_dirs: list[Path] = []

    def write_bytes(self, path: Path, data: bytes) -> None:
        self._steps.append(_Step("write", Path(path), data=data))

    def write_json(self, path: Path, content: Any) -> None:
        # PaddleX writes its annotation files the same way: UTF-8, non-ASCII kept.
        self.write_bytes(path, json.dumps(content, ensure_ascii=False).encode("utf-8"))

    def copy_file(self, src: Path, dst: Path) -> None:
        self._steps.append(_Step("write", Path(dst), copy_from=Path(src)))

    def move(self, src: Path, dst: Path) -> None:
        self._steps.append(_Step("move", Path(dst), src=Path(src)))

    @property
    def targets(self) -> list[Path]:
        return [step.dst for step in self._steps]

    def commit(self) -> None:
        try:
            for step in self._steps:
                if step.kind == "write":
                    self._stage(step)
            for step in self._steps:
                self._apply(step)
        except BaseException:
            self._rollback()
            raise
        for step in self._steps:
            if step.stash is not None:
                step.stash.unlink(missing_ok=True)

    def _stage(self, step: _Step) -> None:
        self._make_dirs(step.dst.parent)
        fd, name = tempfile.mkstemp(prefix=f".{step.dst.name}.", suffix=".tmp", dir=step.dst.parent)
        step.temp = Path(name)
        with os.fdopen(fd, "wb") as out:
            if step.copy_from is not None:
                with open(step.copy_from, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                out.write(step.data or b"")
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes owner-only files; give the file the mode it replaces, or the usual default.
        mode = step.dst.stat().st_mode & 0o7777 if step.dst.exists() else 0o666 & ~_umask()
        os.chmod(step.temp, mode)

    def _apply(self, step: _Step) -> None:
        self._make_dirs(step.dst.parent)
        if step.dst.exists() or step.dst.is_symlink():
            step.stash = self._free_name(step.dst)
            os.replace(step.dst, step.stash)
        source = step.temp if step.kind == "write" else step.src
        assert source is not None
        os.replace(source, step.dst)
        step.done = True

    def _rollback(self) -> None:
        for step in reversed(self._steps):
            try:
                if step.done:
                    if step.kind == "move":
                        assert step.src is not None
                        os.replace(step.dst, step.src)
                    else:
                        step.dst.unlink(missing_ok=True)
                if step.stash is not None and step.stash.exists():
                    os.replace(step.stash, step.dst)
                if step.temp is not None:
                    step.temp.unlink(missing_ok=True)
            except OSError:
                continue  # undo as much as possible; the original error is what the user needs
        for directory in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                directory.rmdir()

    def _make_dirs(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            d.mkdir()
            self._created_dirs.append(d)

    @staticmethod
    def _free_name(path: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
        os.close(fd)
        return Path(name)
