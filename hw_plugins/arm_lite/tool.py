"""Paddle Lite steps that run in a child process: `Opt` conversion and a trial run of a `.nb`.

Lite 2.13 segfaults instead of raising on some programs (e.g. `flatten_contiguous_range`) and on
a `.nb` built for another target; in a child that only fails the load, not the daemon.

    python -m hw_plugins.arm_lite.tool convert MODEL PARAMS TARGET OUT_PREFIX
    python -m hw_plugins.arm_lite.tool trial NB HEIGHT WIDTH
"""

from __future__ import annotations

import sys

import numpy as np


def convert(model_file: str, params_file: str, target: str, out_prefix: str) -> None:
    from paddlelite import lite

    opt = lite.Opt()
    opt.set_model_file(model_file)
    opt.set_param_file(params_file)
    opt.set_valid_places(target)
    opt.set_model_type("naive_buffer")
    opt.set_optimize_out(out_prefix)  # Opt appends ".nb"
    opt.run()


def trial(nb_file: str, height: int, width: int) -> None:
    from paddlelite import lite

    config = lite.MobileConfig()
    config.set_model_from_file(nb_file)
    predictor = lite.create_paddle_predictor(config)
    neutral = {
        "image": np.full((1, 3, height, width), 114.0, dtype=np.float32),
        "scale_factor": np.ones((1, 2), dtype=np.float32),
        "im_shape": np.array([[height, width]], dtype=np.float32),
    }
    for name in predictor.get_input_names():
        if name not in neutral:
            raise SystemExit(f"the program takes an input {name!r}; known inputs: {sorted(neutral)}")
        predictor.get_input_by_name(name).from_numpy(neutral[name])
    predictor.run()
    for name in predictor.get_output_names():
        predictor.get_output_by_name(name).numpy()


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "convert":
        convert(*argv[1:])
    elif len(argv) == 4 and argv[0] == "trial":
        trial(argv[1], int(argv[2]), int(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
