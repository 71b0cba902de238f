"""High-performance mode: measure the CPU backends on a model at load and serve the fastest one
whose boxes agree with Paddle Inference fp32.

The candidates are device strings (plugins and options), so the choice is one an operator could
also make by hand. Each is loaded, run on a few synthetic small-object scenes at the model's input
size, and timed in interleaved rounds (every round runs every candidate once, so a load change on
the machine hits all of them alike; `Timing`). A candidate qualifies when its boxes agree with the fp32
reference under `Tolerance`; the fastest qualified one wins, and the reference itself always
qualifies, so the mode never serves worse boxes than normal mode.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sodd.model import pipeline
from sodd.model.int8 import int8_candidates
from sodd.model.modeldir import ModelDir
from sodd.model.overlap import box_areas, overlap_terms
from sodd.model.postprocess import split_per_image
from sodd.plugins.devices import DeviceSpec, parse_device
from sodd.plugins.protocol import Predictor

log = logging.getLogger(__name__)

REFERENCE = "cpu"
# Tried in this order; the reference first. bf16 candidates usually fail the tolerance and are
# measured so the table shows what they would give.
CANDIDATES = ("cpu", "cpu?precision=bf16", "openvino", "openvino?precision=bf16", "onnxruntime")
# 64-bit ARM: Paddle's aarch64 wheels have no oneDNN, so no Paddle bf16; OpenVINO's ARM CPU plugin
# and ONNX Runtime run the converted graph in f32.
ARM_CANDIDATES = ("cpu", "openvino", "onnxruntime")


def machine_candidates(machine: str | None = None) -> tuple[str, ...]:
    """The candidates this machine's backends can run: all of them on x86_64, ARM's on aarch64."""
    machine = (machine or platform.machine()).lower()
    return ARM_CANDIDATES if machine in ("aarch64", "arm64") or machine.startswith("armv") else CANDIDATES


WARMUP_IMAGES = 3
TIMED_ROUNDS = 12


@dataclass(frozen=True)
class Timing:
    """How the candidates are timed.

    At load (the default) every candidate runs once per round, `rounds` rounds: quick, and a load
    change hits all of them alike. But Paddle's OpenMP threads keep spinning for 200 ms after a run
    (KMP_BLOCKTIME), so in that order every other backend shares the cores with them and times
    slower than it serves (PicoDet-XS, OpenVINO fp32, 2 cores: 8.2 against 6.6 ms). The choice stays sound,
    since only the reference gains; `sodd bench-hp`, which reports what each backend gives when it
    serves alone, runs turns of `turn` back-to-back runs, each after `settle_s` idle and one untimed
    run that wakes the backend's own threads.
    """

    rounds: int = TIMED_ROUNDS  # timed runs per candidate
    turn: int = 1  # timed runs per candidate in a row
    settle_s: float = 0.0  # idle time before each turn


def _idle(seconds: float) -> None:
    threading.Event().wait(seconds)


@dataclass(frozen=True)
class Tolerance:
    """When a backend's boxes count as the same as Paddle Inference fp32's.

    Checked rows: per image, each side's rows scoring at least `min_score`, at most `top` of them
    (the best). Each checked row must have a row of the same class on the other side (among all its
    rows, so rank and threshold edges do not count) with IoU >= `min_iou` and a score within
    `max_score_diff`. `min_matched` of the checked rows must match, which leaves room for the rare
    pair of overlapping boxes whose IoU sits on the NMS threshold and flips with a 1e-6 change.
    """

    min_score: float = 0.05
    top: int = 100
    min_iou: float = 0.95
    max_score_diff: float = 0.01
    min_matched: float = 0.98

    def describe(self) -> str:
        return (f"same class, IoU >= {self.min_iou}, score within {self.max_score_diff} for "
                f">= {self.min_matched:.0%} of the top {self.top} boxes scoring >= {self.min_score}")


# What bf16 backends reach against fp32 on real images (tests/test_high_performance.py): the same
# objects with moved scores and corners. Stated for reference; the selection uses `Tolerance()`.
BF16_TOLERANCE = Tolerance(min_score=0.3, min_iou=0.7, max_score_diff=0.05, min_matched=0.85)


@dataclass(frozen=True)
class Agreement:
    checked: int
    matched: int
    min_iou: float  # worst IoU among matched rows (1.0 when none)
    max_score_diff: float  # worst score difference among matched rows

    @property
    def fraction(self) -> float:
        return self.matched / self.checked if self.checked else 1.0


@dataclass
class Measured:
    device: str
    median_ms: float | None = None
    agreement: Agreement | None = None
    qualified: bool = False
    error: str = ""


@dataclass
class Selection:
    device: DeviceSpec
    device_label: str  # how responses, GetModel and metrics name the choice
    predictor: Predictor
    table: list[Measured]
    tolerance: Tolerance

    def summary(self) -> str:
        ref = next((m for m in self.table if m.device == REFERENCE and m.median_ms), None)
        chosen = next(m for m in self.table if m.device == self.device_label)
        speedup = f", {ref.median_ms / chosen.median_ms:.2f}x Paddle fp32" if ref and chosen.median_ms else ""
        rows = "; ".join(_row_text(m) for m in self.table)
        return f"high-performance: {self.device_label} ({chosen.median_ms:.1f} ms{speedup}); measured: {rows}"


def _row_text(m: Measured) -> str:
    if m.error:
        return f"{m.device} failed ({m.error[:120]})"
    agree = "" if m.agreement is None else f", {m.agreement.matched}/{m.agreement.checked} boxes agree"
    return f"{m.device} {m.median_ms:.1f} ms{agree}{'' if m.qualified else ', rejected'}"


def device_label(spec: DeviceSpec) -> str:
    """The device name plus options that change results, e.g. `cpu?precision=bf16`."""
    options = {k: v for k, v in spec.options.items() if k == "precision"}
    return spec.name + ("?" + "&".join(f"{k}={v}" for k, v in sorted(options.items())) if options else "")


def warmup_images(model: ModelDir, count: int = WARMUP_IMAGES) -> list[np.ndarray]:
    """Synthetic small-object scenes (fixed seeds) at the model's input size, at most 640 px."""
    from sodd.datasets.synth.generator import SynthConfig, render_image

    h, w = model.input_size or (640, 640)
    size = (min(h, 640), min(w, 640))
    return [render_image(np.random.default_rng([20261125, i]), SynthConfig(image_size=size))[0]
            for i in range(count)]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with many; two degenerate boxes (no area) count as equal when their corners are."""
    area, areas = box_areas(box), box_areas(others)
    inter, union = overlap_terms(box, others, area, areas)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((area <= 0) | (areas <= 0), (np.abs(others - box).max(axis=1) < 1e-3).astype(float), iou)


def _checked(rows: np.ndarray, tol: Tolerance) -> np.ndarray:
    rows = rows[rows[:, 1] >= tol.min_score]
    return rows[np.argsort(-rows[:, 1], kind="stable")[:tol.top]]


def _match(checked: np.ndarray, other: np.ndarray, tol: Tolerance) -> tuple[int, float, float]:
    matched, worst_iou, worst_diff = 0, 1.0, 0.0
    for row in checked:
        same = other[other[:, 0] == row[0]]
        if not len(same):
            continue
        iou = _iou(row[2:6], same[:, 2:6])
        diff = np.abs(same[:, 1] - row[1])
        ok = (iou >= tol.min_iou) & (diff <= tol.max_score_diff)
        if ok.any():
            best = int(np.argmax(np.where(ok, iou, -1)))
            matched += 1
            worst_iou, worst_diff = min(worst_iou, float(iou[best])), max(worst_diff, float(diff[best]))
    return matched, worst_iou, worst_diff


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], tol: Tolerance) -> Agreement:
    """Both directions, over per-image box rows [n, 6] of the two backends."""
    checked = matched = 0
    worst_iou, worst_diff = 1.0, 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        for a, b in ((ref, cand), (cand, ref)):
            rows = _checked(a, tol)
            m, iou, diff = _match(rows, b, tol)
            checked, matched = checked + len(rows), matched + m
            worst_iou, worst_diff = min(worst_iou, iou), max(worst_diff, diff)
    return Agreement(checked, matched, worst_iou, worst_diff)


def _rows(outputs: list[np.ndarray]) -> np.ndarray:
    return split_per_image(outputs[0], outputs[1])[0]


def select_backend(model: ModelDir, load: Callable[[DeviceSpec], Predictor], *, name: str = "",
                   candidates: Sequence[str] | None = None, timing: Timing = Timing(),
                   tolerance: Tolerance = Tolerance()) -> Selection:
    """Load every candidate, time it, check its boxes against the reference, keep the winner open.

    `load` builds a predictor for a device spec (the registry's own loading path). The reference
    (`cpu`, Paddle Inference fp32) must load; other candidates that fail are listed and skipped.
    `candidates` defaults to what this machine has (`machine_candidates`).
    """
    # INT8 (`sodd quantize`) joins only when its measured mAP cost is at most 1 point (sodd.training.quantization).
    candidates = (*machine_candidates(), *int8_candidates(model)) if candidates is None else candidates
    images = warmup_images(model)
    prepared = pipeline.prepare_images(model, images)
    loaded: dict[str, Predictor] = {}
    table: list[Measured] = []
    for text in candidates:
        spec = parse_device(text)
        label = device_label(spec)
        try:
            loaded[label] = load(spec)
            table.append(Measured(label))
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is just not a candidate
            if text == REFERENCE:
                raise
            table.append(Measured(label, error=str(getattr(exc, "message", exc))))
            log.warning("model %s: high-performance candidate %s did not load: %s", name, label, exc)
    try:
        results = _measure(loaded, prepared, timing, table)
        reference = results[device_label(parse_device(REFERENCE))]
        if not any((rows[:, 1] >= tolerance.min_score).any() for rows in reference):
            # A model that finds nothing confident on the scenes (fresh weights): compare every row.
            tolerance = replace(tolerance, min_score=0.0)
        for m in table:
            if m.error:
                continue
            m.agreement = agreement(reference, results[m.device], tolerance)
            if "int8" in m.device:
                # Quantized boxes never meet the fp32 tolerance; the measured mAP cost is its criterion.
                m.qualified = m.device in int8_candidates(model)
            elif m.agreement.checked:
                m.qualified = m.agreement.fraction >= tolerance.min_matched
            else:
                # Nothing to compare: trust only full-precision backends, whose agreement the tests show.
                m.qualified = "bf16" not in m.device
        best = min((m for m in table if m.qualified and m.median_ms is not None), key=lambda m: m.median_ms)
    except BaseException:
        for predictor in loaded.values():
            predictor.close()
        raise
    for label, predictor in loaded.items():
        if label != best.device:
            predictor.close()
    selection = Selection(parse_device(best.device), best.device, loaded[best.device], table, tolerance)
    log.info("model %s: high-performance mode, %s", name, _table_text(table, tolerance))
    return selection


def _measure(loaded: dict[str, Predictor], prepared: list, timing: Timing, table: list[Measured]) -> dict:
    """Outputs per candidate and image, then `timing.rounds` timed runs of every candidate, in turns."""
    inputs = {label: [pipeline.network_inputs([p], predictor.input_names) for p in prepared]
              for label, predictor in loaded.items()}
    results: dict[str, list[np.ndarray]] = {}
    by_label = {m.device: m for m in table}
    for label, predictor in list(loaded.items()):
        try:
            results[label] = [_rows(predictor.run(x)) for x in inputs[label]]
        except Exception as exc:  # noqa: BLE001 - a candidate failing its first run is dropped
            if label == REFERENCE:
                raise
            by_label[label].error = f"{type(exc).__name__}: {exc}"
            loaded.pop(label).close()
    times: dict[str, list[float]] = {label: [] for label in loaded}
    for t in range(math.ceil(timing.rounds / timing.turn)):
        runs = range(t * timing.turn, min((t + 1) * timing.turn, timing.rounds))
        for label, predictor in loaded.items():
            if timing.settle_s > 0:
                _idle(timing.settle_s)
            if timing.turn > 1:
                predictor.run(inputs[label][runs[0] % len(prepared)])
            for r in runs:
                x = inputs[label][r % len(prepared)]
                started = time.perf_counter()
                predictor.run(x)
                times[label].append(time.perf_counter() - started)
    for label, samples in times.items():
        by_label[label].median_ms = statistics.median(samples) * 1000
    return results


def _table_text(table: list[Measured], tolerance: Tolerance) -> str:
    lines = [f"agreement with Paddle Inference fp32: {tolerance.describe()}",
             f"{'backend':<26}{'median ms':>10}  {'agree':>9}  {'min IoU':>7}  {'max dscore':>10}  verdict"]
    for m in table:
        if m.error:
            lines.append(f"{m.device:<26}{'-':>10}  {'-':>9}  {'-':>7}  {'-':>10}  failed: {m.error[:100]}")
            continue
        a = m.agreement
        agree = f"{a.matched}/{a.checked}" if a else "-"
        lines.append(f"{m.device:<26}{m.median_ms:>10.1f}  {agree:>9}  {a.min_iou if a else 1:>7.3f}  "
                     f"{a.max_score_diff if a else 0:>10.4f}  {'ok' if m.qualified else 'rejected'}")
    return "\n".join(lines)
