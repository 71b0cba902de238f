"""INT8 post-training quantization of a model directory for the openvino plugin (`sodd quantize`).

Why NNCF on OpenVINO and not ONNX Runtime's static quantization: OpenVINO is already the fastest
fp32 backend here (4 to 6x Paddle on the light models, high-performance.md), its CPU plugin runs
INT8 convolutions on AVX512-VNNI / AMX, and NNCF quantizes the OpenVINO model read from the same
cut-before-NMS ONNX graph both plugins run, so the INT8 artefact is finished by the same numpy NMS
and keeps PaddleX's output contract. ONNX Runtime's CPU provider was 1.0 to 1.4x Paddle in fp32 and
its QDQ graphs would have had to win back that gap first.

What is written, beside the program in the model directory (or a copy of it, `--output`):

- `inference.int8.xml` / `.bin`: the quantized OpenVINO model (boxes and scores, before NMS);
- `inference.int8.json`: how it was made (the source program's fingerprint, calibration images,
  NNCF settings) and, with a labelled set, the mAP of Paddle fp32 and of INT8 on it and the cost in
  points. High-performance mode considers INT8 only when that measured cost is at most
  `MAX_MAP_COST` points and the fingerprint still matches the program.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sodd.model.int8 import INT8_BIN, INT8_REPORT, INT8_XML, program_fingerprint
from sodd.model.modeldir import ModelDir, read_model_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class QuantizeReport:
    source_fingerprint: str
    calibration_images: int
    subset_size: int
    preset: str
    head_in_f32: int  # convolutions left unquantized (last_convolutions)
    nncf: str
    openvino: str
    seconds: float
    # Filled with a labelled set: mAP (0.5:0.95) and mAP (0.5), in points, of both.
    dataset: str = ""
    map_fp32: float | None = None
    map_int8: float | None = None
    map50_fp32: float | None = None
    map50_int8: float | None = None
    map_cost: float | None = None  # map_fp32 - map_int8, points
    notes: list[str] = field(default_factory=list)


def image_files(sources: Sequence[Path]) -> list[Path]:
    """Image files named, or found (recursively, sorted) in the directories named."""
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif source.is_file():
            found.append(source)
        else:
            raise FileNotFoundError(f"no such image or directory: {source}")
    return found


def copy_model_dir(source: Path, target: Path) -> None:
    """The model directory's files (not its sub-directories) into `target`, for a read-only source."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(INT8_XML.rsplit(".", 1)[0]):
            shutil.copy2(path, target / path.name)


def calibration_inputs(model: ModelDir, images: Sequence[Path], input_names: Sequence[str]) -> list[dict]:
    """Each image decoded and preprocessed exactly as the daemon does, as the graph's named inputs."""
    from sodd.model.decode import decode_encoded
    from sodd.model.preprocess import batch_inputs, prepare

    names = tuple(input_names)
    items = []
    for path in images:
        pixels = decode_encoded(path.read_bytes(), 1 << 31, str(path))
        items.append(batch_inputs([prepare(pixels, model.preprocess)], names))
    return items


def last_convolutions(ov_model: object) -> list[str]:
    """The convolutions nearest the graph's outputs (the head's class and box-distribution layers).

    Quantizing them cost the default model 3.0 mAP points, nearly all of it in localisation (mAP50
    moved 0.6): the box branch's distribution logits need more than 8 bits. Found by walking up
    from the outputs through the ops that are not convolutions.
    """
    found: list[str] = []
    seen: set[str] = set()
    todo = [r for r in ov_model.get_results()]  # type: ignore[attr-defined]
    while todo:
        node = todo.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        kind = node.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            found.append(name)
            continue
        if kind in ("Parameter", "Constant"):
            continue
        todo.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return sorted(found)


def quantize(model_path: Path, images: Sequence[Path], *, output: Path | None = None, subset_size: int = 300,
             preset: str = "mixed", cache_dir: Path | None = None, keep_head: bool = True,
             progress: Callable[[str], None] = lambda s: None) -> tuple[Path, QuantizeReport]:
    """Quantize the directory's cut-before-NMS graph with NNCF; returns the directory holding the artefact."""
    import logging

    import nncf

    nncf.set_log_level(logging.WARNING)  # its per-node INFO lines would bury the command's own output
    from hw_plugins.onnx_common import default_onnx_cache, onnx_program, package_version
    from hw_plugins.openvino import import_openvino

    model = read_model_dir(model_path)
    if not images:
        raise ValueError("no calibration images")
    target = Path(output) if output else model.path
    if target.resolve() != model.path.resolve():
        copy_model_dir(model.path, target)
    ov = import_openvino()
    started = time.perf_counter()
    program = onnx_program(model, cache_dir or default_onnx_cache())
    progress(f"graph: {program.note}")
    ov_model = ov.Core().read_model(str(program.path))
    names = [i.get_node().get_friendly_name() for i in ov_model.inputs]
    items = calibration_inputs(model, images, names)
    progress(f"calibrating on {len(items)} images (subset {min(subset_size, len(items))}, preset {preset})")
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    last = last_convolutions(ov_model) if keep_head else []
    if last:
        progress(f"kept in f32: the {len(last)} convolutions that produce the boxes and scores")
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), preset=presets[preset],
                              target_device=nncf.TargetDevice.CPU, subset_size=min(subset_size, len(items)),
                              ignored_scope=nncf.IgnoredScope(names=last, validate=False) if last else None)
    # Written under temporary names and renamed, so a serving daemon never reads half a model.
    staged_xml = target / (INT8_XML + ".tmp.xml")
    ov.save_model(quantized, str(staged_xml), compress_to_fp16=False)
    staged_xml.with_suffix(".bin").replace(target / INT8_BIN)
    staged_xml.replace(target / INT8_XML)
    report = QuantizeReport(program_fingerprint(model), len(images), min(subset_size, len(items)), preset,
                            len(last), package_version("nncf"), package_version("openvino"),
                            round(time.perf_counter() - started, 1))
    write_report(target, report)
    return target, report


def write_report(target: Path, report: QuantizeReport) -> None:
    path = Path(target) / INT8_REPORT
    staged = path.with_suffix(".json.tmp")
    staged.write_text(json.dumps(asdict(report), indent=2) + "\n")
    staged.replace(path)


def coco_map(model_path: Path, device: str, dataset: Path, split: str = "val") -> tuple[float, float]:
    """mAP (0.5:0.95) and mAP (0.5), in points, of the model on a PaddleX COCO dataset (threshold 0)."""
    from sodd.datasets.coco import load_dataset
    from sodd.training.detections import LocalModel, run_detector
    from sodd.training.evaluation import evaluate_coco

    data = load_dataset(dataset, splits=(split,))
    part = data.splits[split]
    detector = LocalModel(Path(model_path), device, 0.0)
    try:
        run = run_detector(detector, part, data.root)
    finally:
        detector.close()
    metrics = evaluate_coco(part.coco, run.results, max_dets=100)
    return round(metrics.ap * 100, 2), round(metrics.ap50 * 100, 2)
