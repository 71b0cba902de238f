"""One benchmark run: every system on the same model directory and images, one after another.

Order: the plain loops and PaddleX's predict loop (each in its own process, one after another),
then the servers: sodd (each variant) and PaddleX's serving, measured in turn at each image size
and concurrency. Nothing is measured while another system works. With rounds, the comparisons
that the targets make are interleaved instead: at one client sodd alternates with PaddleX's
predict loop, at TARGET_CLIENTS with the plain loops (kept loaded in their own processes), so a
drift of the machine's load hits both sides of each ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sodd_client.bench import run_load

from sodd.model.modeldir import read_model_dir
from sodd.plugins.devices import usable_cores
from sodd.tools.bench import http_load
from sodd.tools.bench import paddlex_baselines as pdx
from sodd.tools.bench.daemon import MODEL_NAME, BenchDaemon
from sodd.tools.bench.images import ImageSet
from sodd.tools.bench.plain import PlainRounds, PlainSetup
from sodd.tools.bench.report import TARGET_CLIENTS
from sodd.tools.bench.stats import Measurement


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
    # One client: sodd and PaddleX's predict in this many alternating rounds (requests split among
    # them), so the machine's load drifts hit both; 0 measures PaddleX's predict loop on its own first.
    # At TARGET_CLIENTS the plain loops alternate with sodd in as many rounds.
    rounds: int = 0


@dataclass
class Outcome:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it was not measured
    versions: dict[str, str] = field(default_factory=dict)
    interleaved: list[Interleaved] = field(default_factory=list)
    throughput_rounds: list[ThroughputRounds] = field(default_factory=list)


class RoundRatios:
    """sodd against a baseline in alternating rounds: one ratio per round, and their median."""

    @property
    def ratios(self) -> list[float]:
        sodd, baseline = self._pairs()
        return [s / b for s, b in zip(sodd, baseline, strict=True) if b > 0]

    @property
    def ratio(self) -> float:
        return float(statistics.median(self.ratios))

    def _pairs(self) -> tuple[list[float], list[float]]:
        raise NotImplementedError


@dataclass(frozen=True)
class Interleaved(RoundRatios):
    """One client, sodd and PaddleX's predict in alternating rounds: each round's p50, in seconds."""

    size: str
    variant: str
    sodd_p50: list[float]
    paddlex_p50: list[float]

    def _pairs(self) -> tuple[list[float], list[float]]:
        return self.sodd_p50, self.paddlex_p50


# Requests per client in each throughput round at least: a round starts with no request in flight
# and ends with the last ones finishing alone, and short rounds would mostly measure that.
ROUND_REQUESTS_PER_CLIENT = 6


@dataclass(frozen=True)
class ThroughputRounds(RoundRatios):
    """Many clients of sodd and the plain loops in alternating rounds: each round's images/s."""

    size: str
    variant: str
    clients: int
    sodd: list[float]
    plain: dict[str, list[float]]  # set-up -> images/s per round

    @property
    def best_plain(self) -> list[float]:
        """Each round's best plain set-up."""
        return [max(rates) for rates in zip(*self.plain.values(), strict=True)]

    def _pairs(self) -> tuple[list[float], list[float]]:
        return self.sodd, self.best_plain


def run(plan: Plan, progress: Callable[[Measurement], None] = lambda m: None) -> Outcome:
    model = read_model_dir(plan.model_dir)
    outcome = Outcome()

    def record(m: Measurement) -> None:
        outcome.measurements.append(m)
        progress(m)

    plain_interleaved = plan.rounds > 1 and bool(plan.plain_setups) and TARGET_CLIENTS in plan.concurrency
    if not plain_interleaved:
        for setup in plan.plain_setups:
            with PlainRounds(plan.model_dir, setup, plan.image_sets, plan.workdir) as loop:
                for index in range(len(plan.image_sets)):
                    record(loop.measure(index, plan.requests, plan.warmup))

    python = pdx.find_python(str(plan.paddlex_python) if plan.paddlex_python else None)
    if python is None and (plan.paddlex_predict or plan.paddlex_serving):
        reason = "PaddleX environment not found (set SODD_PADDLEX_PYTHON or --paddlex-python)"
        for name, wanted in (("paddlex-predict", plan.paddlex_predict), ("paddlex-serving", plan.paddlex_serving)):
            if wanted:
                outcome.skipped[name] = reason
    interleave = python is not None and plan.paddlex_predict and plan.rounds > 1 and 1 in plan.concurrency
    if python is not None and plan.paddlex_predict and not interleave:
        predicted = pdx.measure_predict(python, model, plan.image_sets, plan.requests, plan.warmup, plan.threads)
        outcome.versions.update(predicted.versions)
        for m in predicted.measurements:
            record(m)

    # The servers start together and are measured in turn at each point, so a change in the
    # machine's other load between points hits sodd and PaddleX's serving alike. An idle server
    # only waits on its socket.
    with contextlib.ExitStack() as stack:
        servers: list[Callable[..., Measurement]] = []
        if plan.address is not None:
            servers.append(_sodd_point(plan, plan.address, plan.model, ""))
        else:
            for variant, serve_args in plan.variants:
                log_path = plan.workdir / f"sodd-serve{'-' + variant if variant else ''}.log"
                daemon = stack.enter_context(BenchDaemon(plan.model_dir, log_path, serve_args))
                servers.append(_sodd_point(plan, daemon.address, MODEL_NAME, variant))
        sodd_servers = list(servers)
        if python is not None and plan.paddlex_serving:
            server = stack.enter_context(pdx.PaddlexServer(python, model, plan.threads, plan.workdir))
            servers.append(_http_point(plan, server.url))
        rounds = None
        if interleave:
            assert python is not None
            rounds = stack.enter_context(pdx.PredictRounds(python, model, plan.image_sets, plan.threads,
                                                           plan.workdir))
            outcome.versions.update(rounds.versions)
        loops = [stack.enter_context(PlainRounds(plan.model_dir, setup, plan.image_sets, plan.workdir))
                 for setup in plan.plain_setups] if plain_interleaved else []
        for index, images in enumerate(plan.image_sets):
            for c in plan.concurrency:
                if c == 1 and rounds is not None:
                    _interleave(plan, index, images, sodd_servers, rounds, record, outcome)
                    others = servers[len(sodd_servers):]
                elif c == TARGET_CLIENTS and loops:
                    _interleave_plain(plan, index, images, sodd_servers, loops, record, outcome)
                    others = servers[len(sodd_servers):]
                else:
                    others = servers
                for measure in others:
                    record(measure(images, c))
    return outcome


# Idle time before each system's turn in the interleaved rounds. Paddle's OpenMP threads spin for
# 200 ms after their last work (KMP_BLOCKTIME): a turn that starts at once shares the two cores
# with the other system's spinning threads for its first requests. PicoDet-XS: 1.32 -> 1.17.
SETTLE_SECONDS = 0.5


def _interleave(plan: Plan, index: int, images: ImageSet, sodd_servers: list, rounds: pdx.PredictRounds,
                record: Callable[[Measurement], None], outcome: Outcome) -> None:
    """sodd (each variant) and PaddleX's predict take turns, `plan.rounds` rounds of one client each."""
    per_round = max(1, plan.requests // plan.rounds)
    sodd_rounds: list[list[Measurement]] = [[] for _ in sodd_servers]
    paddlex_rounds: list[dict] = []
    settle = threading.Event()
    for r in range(plan.rounds):
        for i, measure in enumerate(sodd_servers):
            settle.wait(SETTLE_SECONDS)
            sodd_rounds[i].append(measure(images, 1, per_round, plan.warmup if r == 0 else 1))
        settle.wait(SETTLE_SECONDS)
        paddlex_rounds.append(rounds.measure(index, per_round, plan.warmup if r == 0 else 1))
    paddlex_p50 = [statistics.median(p["latencies"]) if p["latencies"] else 0.0 for p in paddlex_rounds]
    for parts in sodd_rounds:
        record(_joined(parts))
        outcome.interleaved.append(Interleaved(images.label, parts[0].setup,
                                               [m.percentile(50) for m in parts], paddlex_p50))
    record(Measurement("paddlex-predict", f"1x{rounds.threads}", images.label, 1, per_round * plan.rounds,
                       sum(len(p["latencies"]) for p in paddlex_rounds), sum(p["seconds"] for p in paddlex_rounds),
                       [x for p in paddlex_rounds for x in p["latencies"]],
                       _summed([p["errors"] for p in paddlex_rounds])))


def _interleave_plain(plan: Plan, index: int, images: ImageSet, sodd_servers: list, loops: list[PlainRounds],
                      record: Callable[[Measurement], None], outcome: Outcome) -> None:
    """At TARGET_CLIENTS clients, sodd (each variant) and each plain set-up take turns, `plan.rounds` rounds."""
    clients = TARGET_CLIENTS
    per_round = max(plan.requests // plan.rounds, ROUND_REQUESTS_PER_CLIENT * clients)
    sodd_rounds: list[list[Measurement]] = [[] for _ in sodd_servers]
    plain_rounds: list[list[Measurement]] = [[] for _ in loops]
    settle = threading.Event()
    for r in range(plan.rounds):
        warmup = plan.warmup if r == 0 else 1
        for i, measure in enumerate(sodd_servers):
            settle.wait(SETTLE_SECONDS)
            sodd_rounds[i].append(measure(images, clients, per_round, warmup))
        for i, loop in enumerate(loops):
            settle.wait(SETTLE_SECONDS)
            plain_rounds[i].append(loop.measure(index, per_round, warmup))
    for parts in plain_rounds:
        record(_joined(parts))
    plain_rates = {loop.setup.name: [m.throughput for m in parts] for loop, parts in zip(loops, plain_rounds,
                                                                                       strict=True)}
    for parts in sodd_rounds:
        record(_joined(parts))
        outcome.throughput_rounds.append(ThroughputRounds(images.label, parts[0].setup, clients,
                                                          [m.throughput for m in parts], plain_rates))


def _joined(parts: list[Measurement]) -> Measurement:
    first = parts[0]
    ok = sum(m.ok for m in parts)
    stages = {k: sum(m.stages.get(k, 0.0) * m.ok for m in parts) / ok for k in first.stages} if ok else {}
    return Measurement(first.system, first.setup, first.size, first.concurrency, sum(m.requests for m in parts), ok,
                       sum(m.seconds for m in parts), [x for m in parts for x in m.latencies],
                       _summed([m.errors for m in parts]), stages)


def _summed(errors: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in errors:
        for k, v in e.items():
            out[k] = out.get(k, 0) + v
    return out


def _sodd_point(plan: Plan, address: str, model: str, variant: str) -> Callable[..., Measurement]:
    def measure(images: ImageSet, c: int, requests: int | None = None, warmup: int | None = None) -> Measurement:
        requests = plan.requests if requests is None else requests
        result = asyncio.run(run_load(address, images.encoded, c, requests, model=model,
                                      warmup=max(plan.warmup if warmup is None else warmup, c), timeout=plan.timeout))
        return Measurement("sodd", variant, images.label, c, requests, result.ok, result.seconds,
                           result.latencies, result.errors, result.stage_means())
    return measure


def _http_point(plan: Plan, url: str) -> Callable[[ImageSet, int], Measurement]:
    def measure(images: ImageSet, c: int) -> Measurement:
        return http_load.measure(url, images.encoded, images.label, c, plan.requests, max(plan.warmup, c),
                                 plan.timeout)
    return measure
