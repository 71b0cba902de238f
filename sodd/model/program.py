"""Legacy programs without the exporting machine's traces.

`paddle.jit.save` records, in every op of a legacy ProgramDesc, the Python call stack that created
it (the `op_callstack` attribute): file paths of the exporter's virtualenv, home directory and
source tree. Programs shipped to devices should carry none of that, and the same weights should
export to the same bytes wherever they are exported, so the exporter drops those attributes and
writes the program with a deterministic serialisation. The attribute is debugging information:
Paddle Inference, Paddle Lite's `Opt` and paddle2onnx run the program the same without it.
"""

from __future__ import annotations

import re
from pathlib import Path

# Op attributes that hold where the exporting process ran, not what the program computes.
TRACE_ATTRS = ("op_callstack",)
# An absolute path ending in a Python source file, as call stacks show them.
_PATH_RE = re.compile(rb"/[\w.+-]+(?:/[\w.+-]+)+\.py\b")


def strip_program(data: bytes) -> tuple[bytes, int]:
    """The serialised ProgramDesc without trace attributes, and how many were removed."""
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc.FromString(data)
    removed = 0
    for block in program.blocks:
        for op in block.ops:
            kept = [a for a in op.attrs if a.name not in TRACE_ATTRS]
            if len(kept) != len(op.attrs):
                removed += len(op.attrs) - len(kept)
                del op.attrs[:]
                op.attrs.extend(kept)
    return program.SerializeToString(deterministic=True), removed


def strip_program_file(path: Path) -> int:
    """Rewrite a legacy `.pdmodel` in place without trace attributes; returns how many were removed."""
    path = Path(path)
    data, removed = strip_program(path.read_bytes())
    if removed:
        staged = path.with_name(path.name + ".stripped")
        staged.write_bytes(data)
        staged.replace(path)
    return removed


def source_paths(data: bytes) -> list[str]:
    """Absolute paths of Python files found in a program's bytes (none in a clean one)."""
    return sorted({m.decode("utf-8", "replace") for m in _PATH_RE.findall(data)})
