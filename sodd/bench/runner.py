"""One benchmark run: every system on the same model directory and images, one after another.

Order: the plain loops and PaddleX's predict loop (each in its own process, one after another),
then the servers: sodd (each variant) and PaddleX's serving, measured in turn at each image size
and concurrency. Nothing is measured while another system works.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sodd_client.bench import run_load

from sodd.bench import http_load, plain
from sodd.bench import paddlex_baselines as pdx
from sodd.bench.daemon import MODEL_NAME, BenchDaemon
from sodd.bench.images import ImageSet
from sodd.bench.plain import PlainSetup
from sodd.bench.stats import Measurement
from sodd.devices import usable_cores
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
    threads: int = field(default_factory=usable_cores)  # for the PaddleX baselines
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

    # The servers start together and are measured in turn at each point, so a change in the
    # machine's other load between points hits sodd and PaddleX's serving alike. An idle server
    # only waits on its socket.
    with contextlib.ExitStack() as stack:
        servers: list[Callable[[ImageSet, int], Measurement]] = []
        if plan.address is not None:
            servers.append(_sodd_point(plan, plan.address, plan.model, ""))
        else:
            for variant, serve_args in plan.variants:
                log_path = plan.workdir / f"sodd-serve{'-' + variant if variant else ''}.log"
                daemon = stack.enter_context(BenchDaemon(plan.model_dir, log_path, serve_args))
                servers.append(_sodd_point(plan, daemon.address, MODEL_NAME, variant))
        if python is not None and plan.paddlex_serving:
            server = stack.enter_context(pdx.PaddlexServer(python, model, plan.threads, plan.workdir))
            servers.append(_http_point(plan, server.url))
        for images in plan.image_sets:
            for c in plan.concurrency:
                for measure in servers:
                    record(measure(images, c))
    return outcome


def _sodd_point(plan: Plan, address: str, model: str, variant: str) -> Callable[[ImageSet, int], Measurement]:
    def measure(images: ImageSet, c: int) -> Measurement:
        result = asyncio.run(run_load(address, images.encoded, c, plan.requests, model=model,
                                      warmup=max(plan.warmup, c), timeout=plan.timeout))
        return Measurement("sodd", variant, images.label, c, plan.requests, result.ok, result.seconds,
                           result.latencies, result.errors, result.stage_means())
    return measure


def _http_point(plan: Plan, url: str) -> Callable[[ImageSet, int], Measurement]:
    def measure(images: ImageSet, c: int) -> Measurement:
        return http_load.measure(url, images.encoded, images.label, c, plan.requests, max(plan.warmup, c),
                                 plan.timeout)
    return measure
