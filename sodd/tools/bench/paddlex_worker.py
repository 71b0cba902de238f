"""PaddleX 3.7.2's own predict loop, timed; run with the PaddleX environment's interpreter.

It imports only the standard library and paddlex (PaddleX's environment has no sodd):

    python paddlex_worker.py JOB.json OUT.json
    python paddlex_worker.py --rounds JOB.json    (interleaved rounds, ordered on stdin)

JOB: {"model_name", "model_dir", "sets": [[image files], ...], "requests": int, "warmup": int}
OUT: {"results": [{"latencies": [seconds per request], "seconds": wall time, "errors": {message: count}}
      per set], "paddlex": version, "paddle": version}
One process runs every set, so a size sweep pays PaddleX's start-up once.
"""

from __future__ import annotations

import json
import os
import sys
import time

RESULT_MARK = "SODD-BENCH-RESULT "


def serve_rounds(job_path: str) -> None:
    """Interleaved rounds: one `{"set": i, "requests": n, "warmup": w}` line on stdin per round, one
    RESULT_MARK line on stdout per answer (PaddleX may print other lines; the caller skips them)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    import paddle
    import paddlex
    from paddlex import create_model

    with open(job_path) as f:
        job = json.load(f)
    model = create_model(model_name=job["model_name"], model_dir=job["model_dir"], device="cpu")
    print(RESULT_MARK + json.dumps({"paddlex": paddlex.__version__, "paddle": paddle.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        order = json.loads(line)
        result = measure(model, job["sets"][order["set"]], order["requests"], order["warmup"])
        print(RESULT_MARK + json.dumps(result), flush=True)


def main(job_path: str, out_path: str) -> None:
    # Run as a script, this file's folder comes first on sys.path, where sodd's own modules would
    # shadow packages PaddleX imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    import paddle
    import paddlex
    from paddlex import create_model

    with open(job_path) as f:
        job = json.load(f)
    model = create_model(model_name=job["model_name"], model_dir=job["model_dir"], device="cpu")
    results = [measure(model, paths, job["requests"], job["warmup"]) for paths in job["sets"]]
    with open(out_path, "w") as f:
        json.dump({"results": results, "paddlex": paddlex.__version__, "paddle": paddle.__version__}, f)


def measure(model, paths: list[str], requests: int, warmup: int) -> dict:  # noqa: ANN001 - a PaddleX predictor
    for i in range(warmup):
        list(model.predict(paths[i % len(paths)]))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        try:
            results = list(model.predict(paths[i % len(paths)]))
        except Exception as exc:  # noqa: BLE001 - counted as lost
            key = f"{type(exc).__name__}: {str(exc)[:200]}"
            errors[key] = errors.get(key, 0) + 1
            continue
        if len(results) != 1:
            errors["no result"] = errors.get("no result", 0) + 1
            continue
        latencies.append(time.perf_counter() - t0)
    return {"latencies": latencies, "seconds": time.perf_counter() - start, "errors": errors}


if __name__ == "__main__":
    if sys.argv[1] == "--rounds":
        serve_rounds(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
