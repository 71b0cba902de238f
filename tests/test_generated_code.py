"""The committed gRPC code is what protoc makes of proto/ (it is never edited by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto"))
    # In a child process: grpc_tools' bundled protobuf and paddle's cannot share one process.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], check=True)
    for generated in (tmp_path / "sodd" / "v1").iterdir():
        committed = REPO / "sodd" / "v1" / generated.name
        assert committed.read_text() == generated.read_text(), f"run `make proto`: {committed} is stale"
