"""Files the built-in plugins derive from a model directory (Paddle Lite `.nb`, TensorRT programs).

Deriving them takes seconds to minutes, so they are kept in a cache directory under a name made
from a hash of the model files and of every option that changes the result: a changed model or
option never reuses a stale file. Files are published by rename, so two daemons loading the same
model at once each see either no file or a complete one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 1 << 20


def default_cache_root() -> Path:
    """systemd's CacheDirectory= first, then the XDG cache of the user running the daemon."""
    if os.environ.get("CACHE_DIRECTORY"):
        # systemd may list several directories separated by ':'; the first is ours.
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "sodd"
    return Path.home() / ".cache" / "sodd"


def content_key(files: Iterable[Path], settings: Mapping[str, str]) -> str:
    """A hex digest of the files' bytes and the settings, independent of paths and mtimes."""
    digest = hashlib.sha256(b"sodd-artifact-v1\0")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    for key in sorted(settings):
        digest.update(f"{key}={settings[key]}\0".encode())
    return digest.hexdigest()


@contextmanager
def staging_dir(cache_dir: Path) -> Iterator[Path]:
    """A private directory beside the cache entries (same file system, so rename is atomic)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=cache_dir) as tmp:
        yield Path(tmp)


def publish(staged: Path, final: Path) -> None:
    """Move a finished file into place; a concurrent writer of the same key wrote the same bytes."""
    os.replace(staged, final)
