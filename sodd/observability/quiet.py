"""Keeping Paddle's start-up noise out of sodd's output.

Two kinds of noise reach a user who never asked for them: the "No ccache found" UserWarning that
`import paddle` raises (it matters only to people compiling C++ extensions), and lines such as
`ReduceMeanCheckIfOneDNNSupport` that Paddle's oneDNN passes write with `std::cout` while a
predictor is built, straight to file descriptor 1, mixed into the output of commands. The first is
filtered by message (`sodd/__init__.py` installs the filter); the second by routing descriptor 1
through a pipe while predictors load and forwarding every line except the known noise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

# Lines Paddle's native code prints on stdout while building a predictor; exact matches only, so
# nothing else is ever dropped.
NATIVE_NOISE = frozenset({b"ReduceMeanCheckIfOneDNNSupport"})

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_reader: threading.Thread | None = None
_lines: list[bytes] = []


def filter_import_warnings() -> None:
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)


def _drain(read_fd: int, sink: list[bytes]) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            sink.extend(line + b"\n" for line in complete)
        if pending:
            sink.append(pending)


def _forward(lines: list[bytes]) -> None:
    kept = b"".join(line for line in lines if line.rstrip(b"\r\n") not in NATIVE_NOISE)
    while kept:
        kept = kept[os.write(1, kept):]


@contextlib.contextmanager
def native_stdout_filtered() -> Iterator[None]:
    """While inside, file descriptor 1 goes through a pipe that drops `NATIVE_NOISE` lines.

    Re-entrant and usable from several threads at once (models load in parallel): the first to
    enter installs the pipe, the last to leave restores descriptor 1 and forwards what was written.
    """
    global _depth, _saved_fd, _reader
    with _lock:
        if _depth == 0:
            try:
                sys.stdout.flush()
                read_fd, write_fd = os.pipe()
                saved = os.dup(1)
            except (OSError, ValueError):  # no usable descriptor 1: nothing to filter
                saved = None
            if saved is not None:
                os.dup2(write_fd, 1)
                os.close(write_fd)
                _saved_fd, _lines[:] = saved, []
                _reader = threading.Thread(target=_drain, args=(read_fd, _lines), name="stdout-filter", daemon=True)
                _reader.start()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    sys.stdout.flush()
                os.dup2(_saved_fd, 1)  # closes the pipe's last write end, so the reader sees EOF
                os.close(_saved_fd)
                _saved_fd = None
                if _reader is not None:
                    # A child process started meanwhile may still hold the pipe: do not wait on it.
                    _reader.join(timeout=5.0)
                    _reader = None
                lines, _lines[:] = list(_lines), []
                _forward(lines)
