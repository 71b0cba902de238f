"""Model sources on disk: which versions exist, which are complete, which the policy wants.

A model source is a directory holding either version sub-directories (`1/`, `2/`, ... positive
integers, each a PaddleX model directory) or, directly, one PaddleX model directory (version 1).
A model repository is a directory of model sources, one per model name.

When is a version complete? All of inference.yml, inference.pdiparams and a program
(inference.json or inference.pdmodel) are present, and no file in the directory has changed
(size or modification time) for `settle_seconds`. Copying a directory in place therefore loads
only once the copy has stopped for that long; writing it elsewhere and renaming it in loads after
the same settle time. A version still missing files after the settle time is reported as failed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sodd.model.names import NAME_LIMIT
from sodd.observability.logs import escape, has_control

log = logging.getLogger(__name__)
# Repository directory names already warned about (see scan_repository).
_skipped: set[str] = set()

REQUIRED_FILES = ("inference.yml", "inference.pdiparams")
PROGRAM_FILES = ("inference.json", "inference.pdmodel")
_VERSION_DIR = re.compile(r"^[1-9][0-9]{0,17}$")


@dataclass(frozen=True)
class VersionDir:
    version: int
    path: Path
    # (name, size, mtime_ns) of every file: a changed fingerprint means changed content.
    fingerprint: tuple[tuple[str, int, int], ...]
    newest_change: float  # wall-clock time of the newest file change
    missing: tuple[str, ...]

    def settled(self, settle_seconds: float, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.newest_change >= settle_seconds


def _fingerprint(path: Path) -> tuple[tuple[tuple[str, int, int], ...], float]:
    entries, newest = [], os.stat(path).st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:  # removed while we looked: the next scan sees it
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
            newest = max(newest, st.st_mtime)
    return tuple(sorted(entries)), newest


def _version_dir(version: int, path: Path) -> VersionDir:
    fingerprint, newest = _fingerprint(path)
    names = {entry[0] for entry in fingerprint}
    missing = [f for f in REQUIRED_FILES if f not in names]
    if not any(p in names for p in PROGRAM_FILES):
        missing.append("inference.json or inference.pdmodel")
    return VersionDir(version, path, fingerprint, newest, tuple(missing))


def scan_source(source: Path) -> dict[int, VersionDir]:
    """The versions in a model source; an absent or unreadable source has none."""
    try:
        entries = list(source.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    if (source / "inference.yml").exists() or any((source / p).exists() for p in PROGRAM_FILES):
        return {1: _version_dir(1, source)}
    versions = {}
    for entry in entries:
        if entry.is_dir() and _VERSION_DIR.match(entry.name):
            versions[int(entry.name)] = _version_dir(int(entry.name), entry)
    return versions


def scan_repository(root: Path) -> dict[str, Path]:
    """Model name -> source directory for each sub-directory of a repository. A name with control
    characters (a newline, say) is skipped, with one warning: it could forge log lines, and no
    client could name it anyway."""
    try:
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    for name in [n for n in found if has_control(n) or len(n) > NAME_LIMIT]:
        del found[name]
        if name not in _skipped and len(_skipped) < 1000:  # warned once each, and bounded
            _skipped.add(name)
            log.warning("model repository %s: skipping directory %s: its name has control characters or is "
                        "too long", root, escape(name))
    return found
