"""One benchmark run: every system on the same model directory and images, one after another.

Order: plain loops, PaddleX's predict loop, sodd, then PaddleX's serving, so that no two systems
compete for the cores; each server is stopped before the next one starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sodd_client.bench import run_load

from sodd.bench import http_load, machine, plain
from sodd.bench import paddlex_baselines as pdx
from sodd.bench.daemon import MODEL_NAME, BenchDaemon
from sodd.bench.images import ImageSet
from sodd.bench.plain import PlainSetup
from sodd.bench.stats import Measurement
from sodd.modeldir import read_model_dir


@dataclass(frozen=True)
class Plan:
    model_dir: Path
    image_sets: Sequence[ImageSet]
    concurrency: Sequence[int]
    requests: int
    warmup: int
    workdir: Path
    address: str | None = None  # a running daemon; None starts one
    model: str = ""  # the model's name on that daemon
    # Daemon configurations to start in turn, (name, `sodd serve` arguments); the name becomes the
    # sodd rows' set-up ("" for a single unnamed one). Ignored with `address`.
    variants: Sequence[tuple[str, Sequence[str]]] = (("", ()),)
    plain_setups: Sequence[PlainSetup] = ()
    paddlex_python: Path | None = None
    paddlex_predict: bool = True
    paddlex_serving: bool = True
    threads: int = field(default_factory=machine.usable_cores)  # for the PaddleX baselines
    timeout: float = 300.0


@dataclass
class Outcome:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it was not measured
    versions: dict[str, str] = field(default_factory=dict)


def run(plan: Plan, progress: Callable[[Measurement], None] = lambda m: None) -> Outcome:
    model = read_model_dir(plan.model_dir)
    outcome = Outcome()

    def record(m: Measurement) -> None:
        outcome.measurements.append(m)
        progress(m)

    for setup in plan.plain_setups:
        for images in plan.image_sets:
            record(plain.measure_in_child(plan.model_dir, images, setup, plan.requests, plan.warmup))

    python = pdx.find_python(str(plan.paddlex_python) if plan.paddlex_python else None)
    if python is None and (plan.paddlex_predict or plan.paddlex_serving):
        reason = "PaddleX environment not found (set SODD_PADDLEX_PYTHON or --paddlex-python)"
        for name, wanted in (("paddlex-predict", plan.paddlex_predict), ("paddlex-serving", plan.paddlex_serving)):
            if wanted:
                outcome.skipped[name] = reason
    if python is not None and plan.paddlex_predict:
        predicted = pdx.measure_predict(python, model, plan.image_sets, plan.requests, plan.warmup, plan.threads)
        outcome.versions.update(predicted.versions)
        for m in predicted.measurements:
            record(m)

    if plan.address is not None:
        _load_sodd(plan, plan.address, plan.model, "", record)
    else:
        for variant, serve_args in plan.variants:
            log_path = plan.workdir / f"sodd-serve{'-' + variant if variant else ''}.log"
            with BenchDaemon(plan.model_dir, log_path, serve_args) as daemon:
                _load_sodd(plan, daemon.address, MODEL_NAME, variant, record)

    if python is not None and plan.paddlex_serving:
        with pdx.PaddlexServer(python, model, plan.threads, plan.workdir) as server:
            for images in plan.image_sets:
                for c in plan.concurrency:
                    record(http_load.measure(server.url, images.encoded, images.label, c, plan.requests,
                                             max(plan.warmup, c), plan.timeout))
    return outcome


def _load_sodd(plan: Plan, address: str, model: str, variant: str, record: Callable[[Measurement], None]) -> None:
    for images in plan.image_sets:
        for c in plan.concurrency:
            result = asyncio.run(run_load(address, images.encoded, c, plan.requests, model=model,
                                          warmup=max(plan.warmup, c), timeout=plan.timeout))
            record(Measurement("sodd", variant, images.label, c, plan.requests, result.ok, result.seconds,
                               result.latencies, result.errors, result.stage_means()))
