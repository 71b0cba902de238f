"""Run PaddleX 3.7.2's own predictor; executed with the PaddleX reference interpreter.

PaddleX needs opencv-contrib-python, which cannot share an environment with the daemon's
opencv-python-headless, so the tests run this script in `.venv-paddlex` and read its JSON.

    python paddlex_reference.py JOBS.json OUT.json

JOBS: a list of {"model_dir", "model_name", "inputs": [paths], "threshold": float | {id: float} | null,
      "batch_size": int, "save_json_dir": path | null, "save_img_dir": path | null,
      "save_json_file": path | null}; OUT: one list of results per job.
"""

from __future__ import annotations

import json
import sys


def main(job_path: str, out_path: str) -> None:
    from paddlex import create_model

    with open(job_path) as f:
        jobs = json.load(f)
    models = {}
    all_results = []
    for job in jobs:
        key = (job["model_name"], job["model_dir"])
        if key not in models:
            models[key] = create_model(model_name=job["model_name"], model_dir=job["model_dir"], device="cpu")
        threshold = job.get("threshold")
        if isinstance(threshold, dict):
            threshold = {int(k): v for k, v in threshold.items()}
        results = []
        for res in models[key].predict(job["inputs"], batch_size=job.get("batch_size", 1), threshold=threshold):
            results.append({
                "input_path": res["input_path"],
                "boxes": [
                    {"cls_id": b["cls_id"], "label": b["label"], "score": float(b["score"]),
                     "coordinate": [float(c) for c in b["coordinate"]]}
                    for b in res["boxes"]
                ],
            })
            if job.get("save_json_dir"):
                res.save_to_json(job["save_json_dir"])
            if job.get("save_json_file"):
                res.save_to_json(save_path=job["save_json_file"])
            if job.get("save_img_dir"):
                res.save_to_img(save_path=job["save_img_dir"])
        all_results.append(results)
    with open(out_path, "w") as f:
        json.dump(all_results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
