"""`sodd lite`: convert a model directory into a Paddle Lite program for ARM boards.

Runs on the build machine (x86_64 with PyPI's paddlelite wheel, Python 3.10): Paddle Lite's
optimiser turns the directory's legacy `inference.pdmodel` into `inference.<target>.nb` (target
`arm` by default), which the arm plugin on a board loads without converting. Boards' Lite runtimes
often have no optimiser, and converting there costs minutes. The program is written without the
exporting machine's call stacks, and the same model converts to the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lite", help="convert a model directory into a Paddle Lite .nb program (ARM boards)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="PaddleX model directory with a legacy inference.pdmodel")
    p.add_argument("--target", default="arm", choices=("arm", "x86"),
                   help="Paddle Lite target (valid places) of the program (default: arm)")
    p.add_argument("--output", type=Path,
                   help="the .nb file to write (default: MODEL_DIR/inference.<target>.nb)")
    p.set_defaults(func=run)


def convert(model_dir: Path, target: str = "arm", output: Path | None = None) -> tuple[Path, float]:
    """Write the `.nb` program; returns its path and the seconds Opt took."""
    from hw_plugins.arm_lite import PIR_ONLY_HINT, TARGET_NB, convert_program, machine_target
    from hw_plugins.arm_lite.tool import trial
    from sodd.model.modeldir import read_model_dir

    model = read_model_dir(model_dir)
    if model.legacy_model_file is None:
        raise ValueError(f"{model_dir}: {PIR_ONLY_HINT}")
    output = Path(output) if output else model.path / TARGET_NB.format(target=target)
    if output.suffix != ".nb":
        raise ValueError(f"--output must end in .nb (Paddle Lite appends it), got {output}")
    with tempfile.TemporaryDirectory(prefix=".sodd-lite-", dir=output.parent) as tmp:
        staged = Path(tmp) / "model.nb"
        seconds = convert_program(model.legacy_model_file, model.params_file, target, staged)
        if target == machine_target():
            h, w = model.input_size or (640, 640)
            trial(str(staged), h, w)  # only a program for this machine can be tried here
        shutil.move(staged, output)
    return output, seconds


def run(args: argparse.Namespace) -> int:
    try:
        import paddlelite.lite  # noqa: F401
    except ImportError as exc:
        from hw_plugins.arm_lite import unavailable_reason

        print(f"sodd lite: {unavailable_reason(exc)}", file=sys.stderr)
        return 1
    try:
        output, seconds = convert(args.model_dir, args.target, args.output)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"sodd lite: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.model_dir} for Paddle Lite target {args.target} in {seconds:.1f} s: {output} "
          f"({output.stat().st_size / 2**20:.2f} MiB)")
    return 0
