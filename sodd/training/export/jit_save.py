"""Save one program format of a Layer; run by `paddlex_dir` in a fresh interpreter.

The caller sets FLAGS_enable_pir_api before this process imports paddle, which decides whether
`paddle.jit.save` writes the PIR `inference.json` or the legacy `inference.pdmodel`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys


def main(job_json: str) -> None:
    import paddle

    job = json.loads(job_json)
    module_name, func_name = job["factory"].split(":")
    layer = getattr(importlib.import_module(module_name), func_name)(**job["factory_kwargs"])
    if job["weights"]:
        layer.set_state_dict(paddle.load(job["weights"]))
    layer.eval()
    h, w = job["input_size"]
    specs = [
        paddle.static.InputSpec([None, 3, h, w], "float32", name="image"),
        paddle.static.InputSpec([None, 2], "float32", name="scale_factor"),
    ]
    static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
    prefix = job["prefix"]
    if job["format"] == "legacy":
        from sodd.model.program import strip_program_file

        # Keep the PIR export's parameter file: both formats write the same bytes, and
        # saving to a scratch prefix avoids racing the file the PIR program points at.
        scratch = prefix + ".legacy_tmp"
        paddle.jit.save(static, scratch)
        strip_program_file(scratch + ".pdmodel")  # no call stacks: no build paths, same bytes everywhere
        os.replace(scratch + ".pdmodel", prefix + ".pdmodel")
        for suffix in (".pdiparams", ".pdiparams.info"):
            if os.path.exists(scratch + suffix):
                if not os.path.exists(prefix + suffix):
                    os.replace(scratch + suffix, prefix + suffix)
                else:
                    os.remove(scratch + suffix)
    else:
        paddle.jit.save(static, prefix)


if __name__ == "__main__":
    main(sys.argv[1])
