"""Build hook of the light client: the sodd.v1 stubs are generated from the proto into the wheel.

A checkout has the proto in ../proto; an sdist carries it in proto/ (added by `sdist` below). The
stubs land in the build tree as `sodd/v1/`, a namespace portion (`sodd` has no __init__ here), so
the client needs nothing of the server and imports them as the server does: `from sodd.v1 import ...`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_FILES = ("sodd/v1/detector.proto",)


def proto_root() -> Path:
    for root in (HERE / "proto", HERE.parent / "proto"):
        if all((root / f).is_file() for f in PROTO_FILES):
            return root
    raise FileNotFoundError(f"{PROTO_FILES[0]} is neither in {HERE / 'proto'} nor in {HERE.parent / 'proto'}")


def generate(out: Path, python: str = sys.executable) -> list[Path]:
    """Run protoc (grpcio-tools) on the proto files into `out`; returns the generated package dir."""
    root = proto_root()
    subprocess.run([python, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={out}", f"--pyi_out={out}",
                    f"--grpc_python_out={out}", *(str(root / f) for f in PROTO_FILES)], check=True)
    package = out / "sodd" / "v1"
    (package / "__init__.py").touch()
    return sorted(package.iterdir())


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class SdistWithProto(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for f in PROTO_FILES:
            target = Path(base_dir) / "proto" / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f, target)


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto})
