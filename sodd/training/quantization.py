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
# Outliers that 8 bits cannot carry, found before quantizing and left in f32 (PicoDet-XS has both,
# in its stem: with them quantized, every box was lost):
# - an activation with a channel this many times wider than its median channel: OpenVINO's CPU
#   plugin quantizes activations with one scale per tensor (PicoDet-XS: one channel at 2,190, the
#   median at 7), so the narrow channels are erased where the tensor is read;
ACTIVATION_OUTLIER_RATIO = 20.0
# - a convolution with an output channel whose weights stay under this share of its widest
#   channel's: NNCF floors each channel's weight scale at 1 % of the widest channel's, so such a
#   channel gets few levels or none (PicoDet-XS's first convolution lost two of its eight).
WEIGHT_OUTLIER_SHARE = 0.01
# Calibration images the activation search runs in f32 (the ranges settle within a few images).
OUTLIER_IMAGES = 16
# The operations whose inputs are quantized: those OpenVINO's CPU plugin runs on INT8 kernels.
# Quantizing the inputs of the others too (NNCF's default: batch norms, multiplies, adds, divides
# in attention and activation blocks) only added rounding and conversions: the default model cost
# 2.9 mAP points at 1.16x OpenVINO fp32, against 0.24 points at 1.50x with convolutions alone.
INT8_OPERATIONS = ("Convolution", "GroupConvolution", "MatMul")


@dataclass
class QuantizeReport:
    source_fingerprint: str
    calibration_images: int
    subset_size: int
    preset: str
    head_in_f32: int  # convolutions left unquantized (last_convolutions)
    outliers_in_f32: int  # operations left unquantized for outliers (outlier_operations)
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
    # The same model with its unquantized layers in bf16 (int8-bf16), measured where the CPU has bf16.
    map_int8_bf16: float | None = None
    map50_int8_bf16: float | None = None
    map_cost_bf16: float | None = None
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

    Left in f32 by default (`--quantize-head` quantizes them): when NNCF also quantized element-wise
    inputs, quantizing them cost the default model 0.3 more mAP points, in localisation (the box
    branch's distribution logits). With convolutions alone quantized (INT8_OPERATIONS) the head
    costs nothing measurable and would run 8 % faster. Found by walking up from the outputs through
    the ops that are not convolutions.
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


def unquantized_types(ov_model: object) -> list[str]:
    """The graph's operation types whose inputs stay in f32: all but INT8_OPERATIONS (and the
    graph's inputs, outputs and constants, which carry no quantizer anyway)."""
    kinds = {node.get_type_name() for node in ov_model.get_ops()}  # type: ignore[attr-defined]
    return sorted(kinds - set(INT8_OPERATIONS) - {"Parameter", "Result", "Constant"})


def outlier_operations(core: object, ov_model: object, items: Sequence[dict]) -> list[str]:
    """Operations whose quantization would lose an outlier: readers of wide-channel activations
    (ACTIVATION_OUTLIER_RATIO) and convolutions with starved weight channels (WEIGHT_OUTLIER_SHARE)."""
    return sorted(set(wide_activation_readers(core, ov_model, items)) | set(starved_weight_convolutions(ov_model)))


def wide_activation_readers(core: object, ov_model: object, items: Sequence[dict],
                            ratio: float = ACTIVATION_OUTLIER_RATIO) -> list[str]:
    """Operations reading an activation whose widest channel (largest absolute value over the first
    OUTLIER_IMAGES calibration inputs, run in f32) is over `ratio` times its median channel's.
    Only readers whose inputs are quantized (INT8_OPERATIONS) are listed: the others stay in f32."""
    import numpy as np

    probe = ov_model.clone()  # type: ignore[attr-defined]
    skipped = ("Constant", "Parameter", "Result")
    tensors = [output for node in probe.get_ordered_ops() if node.get_type_name() not in skipped
               for output in node.outputs()
               if output.get_partial_shape().rank.is_static and output.get_partial_shape().rank.get_length() == 4
               and output.get_element_type().is_real()]
    probe.add_outputs(tensors)  # a tensor that is already an output keeps its one result

    def produced(output: object) -> tuple[str, int]:
        source = output.get_node().input_value(0)  # type: ignore[attr-defined] - the result's input
        return source.get_node().get_friendly_name(), source.get_index()

    position = {produced(output): i for i, output in enumerate(probe.outputs)}
    where = [position[(t.get_node().get_friendly_name(), t.get_index())] for t in tensors]
    compiled = core.compile_model(probe, "CPU")  # type: ignore[attr-defined]
    widest: list[np.ndarray | None] = [None] * len(tensors)
    for item in items[:OUTLIER_IMAGES]:
        results = compiled(item)
        for i in range(len(tensors)):
            values = np.abs(results[where[i]])
            per_channel = values.reshape(values.shape[0], values.shape[1], -1).max(axis=(0, 2))
            previous = widest[i]
            widest[i] = per_channel if previous is None else np.maximum(previous, per_channel)
    found: set[str] = set()
    for tensor, channels in zip(tensors, widest, strict=True):
        if channels is None or channels.size < 2 or channels.max() <= ratio * max(float(np.median(channels)), 1e-6):
            continue
        for target in tensor.get_target_inputs():
            node = target.get_node()
            if node.get_type_name() in INT8_OPERATIONS:
                found.add(node.get_friendly_name())
    return sorted(found)


def starved_weight_convolutions(ov_model: object, share: float = WEIGHT_OUTLIER_SHARE) -> list[str]:
    """Convolutions with a non-zero output channel whose largest weight is under `share` of the
    largest weight of any channel."""
    import numpy as np

    found = []
    for node in ov_model.get_ordered_ops():  # type: ignore[attr-defined]
        if node.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        source = node.input_value(1).get_node()
        while source.get_type_name() in ("Reshape", "Convert"):
            source = source.input_value(0).get_node()
        if source.get_type_name() != "Constant":
            continue
        weights = np.abs(source.get_data().astype(np.float32))
        per_channel = weights.reshape(weights.shape[0], -1).max(axis=1)
        live = per_channel[per_channel > 0]
        if live.size > 1 and live.min() < share * live.max():
            found.append(node.get_friendly_name())
    return found


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
    core = ov.Core()
    ov_model = core.read_model(str(program.path))
    names = [i.get_node().get_friendly_name() for i in ov_model.inputs]
    items = calibration_inputs(model, images, names)
    progress(f"calibrating on {len(items)} images (subset {min(subset_size, len(items))}, preset {preset})")
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    last = last_convolutions(ov_model) if keep_head else []
    if last:
        progress(f"kept in f32: the {len(last)} convolutions that produce the boxes and scores")
    outliers = [name for name in outlier_operations(core, ov_model, items) if name not in last]
    if outliers:
        progress(f"kept in f32: {len(outliers)} operations whose input or weights have outlier channels")
    ignored = last + outliers
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), preset=presets[preset],
                              target_device=nncf.TargetDevice.CPU, subset_size=min(subset_size, len(items)),
                              ignored_scope=nncf.IgnoredScope(names=ignored, types=unquantized_types(ov_model),
                                                              validate=False))
    # Written under temporary names and renamed, so a serving daemon never reads half a model.
    staged_xml = target / (INT8_XML + ".tmp.xml")
    ov.save_model(quantized, str(staged_xml), compress_to_fp16=False)
    staged_xml.with_suffix(".bin").replace(target / INT8_BIN)
    staged_xml.replace(target / INT8_XML)
    report = QuantizeReport(program_fingerprint(model), len(images), min(subset_size, len(items)), preset,
                            len(last), len(outliers), package_version("nncf"), package_version("openvino"),
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
