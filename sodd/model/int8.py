"""The INT8 artefact beside a model directory: its file names, its report, and whether serving may use it.

`sodd quantize` (sodd.training.quantization) writes it; the openvino plugin loads it and
high-performance mode reads its measured cost here, so neither needs the quantization tooling.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sodd.model.modeldir import ModelDir

INT8_XML = "inference.int8.xml"
INT8_BIN = "inference.int8.bin"
INT8_REPORT = "inference.int8.json"
INT8_DEVICE = "openvino?precision=int8"
INT8_BF16_DEVICE = "openvino?precision=int8-bf16"  # the same model, its unquantized layers in bf16
# Where the report keeps each INT8 device's measured cost: bf16 moves the boxes again, so each has its own.
COST_KEYS = {INT8_DEVICE: "map_cost", INT8_BF16_DEVICE: "map_cost_bf16"}
MAX_MAP_COST = 1.0  # mAP(0.5:0.95) points high-performance mode accepts for INT8

def program_fingerprint(model: ModelDir) -> str:
    """SHA-256 of the program and weights the artefact was made from."""
    digest = hashlib.sha256()
    for path in (model.model_file, model.params_file):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_report(model_path: Path) -> dict | None:
    path = Path(model_path) / INT8_REPORT
    if not path.is_file() or not (Path(model_path) / INT8_XML).is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def int8_map_costs(model: ModelDir) -> dict[str, float]:
    """The measured mAP cost of each INT8 device on the directory's artefact; none when there is no
    artefact or the artefact was made from another program."""
    report = read_report(model.path)
    if not report or report.get("source_fingerprint") != program_fingerprint(model):
        return {}
    return {device: float(report[key]) for device, key in COST_KEYS.items() if report.get(key) is not None}


def int8_candidates(model: ModelDir) -> tuple[str, ...]:
    """What high-performance mode adds to its candidates: INT8 only at a measured cost <= 1 point."""
    return tuple(device for device, cost in int8_map_costs(model).items() if cost <= MAX_MAP_COST)
