"""`sodd soak`: a long run at twice the measured capacity, with hot swaps and cancelling clients.

It starts a daemon on a model repository holding a copy of the given model, measures what the
daemon sustains with a few closed-loop clients, then offers twice that rate open-loop for the given
time. Every minute it swaps in a new version and sends a burst of requests it cancels mid-flight.
Every window it records requests served, refused (RESOURCE_EXHAUSTED) and failed, p99 latency and
the daemon's RSS. A request is lost when it gets no answer at all; the report counts those too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from sodd_client import AsyncClient

from sodd.tools.daemon_process import ServeProcess, rss_bytes, start_serve

ANSWER_TIMEOUT = 60.0  # a request still unanswered after this long counts as lost


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("soak", help="long load test with hot swaps and cancelling clients")
    p.add_argument("--model", type=Path, required=True, help="a PaddleX model directory")
    p.add_argument("--image", type=Path, required=True, help="an image file to send")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--load-factor", type=float, default=2.0, help="offered rate / measured capacity (default 2)")
    p.add_argument("--window-seconds", type=float, default=30.0, help="reporting window (default 30)")
    p.add_argument("--swap-seconds", type=float, default=60.0, help="time between hot swaps (default 60)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the daemon's predictor")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--daemon-log", type=Path, help="keep the daemon's log here (default: printed only if it dies)")
    p.set_defaults(func=run)


@dataclass
class Window:
    start_s: float
    served: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0
    cancelled: int = 0
    latencies: list[float] = field(default_factory=list)
    # Sampled every few seconds: a single reading can land on a swap, when two versions are loaded.
    rss_samples_kib: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # status code -> count

    def summary(self) -> dict:
        p99 = float(np.percentile(self.latencies, 99)) if self.latencies else None
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies", "rss_samples_kib")}
        out["p99_ms"] = round(p99 * 1000, 1) if p99 is not None else None
        out["rss_kib"] = int(np.median(self.rss_samples_kib)) if self.rss_samples_kib else 0
        out["rss_max_kib"] = max(self.rss_samples_kib, default=0)
        return out


def start_daemon(repository: Path, threads: int | None, log_path: Path) -> ServeProcess:
    args = ["--model-repository", str(repository), "--listen", "127.0.0.1:0", "--metrics-listen", "",
            "--settle-seconds", "1", "--max-pending", "32", *(["--threads", str(threads)] if threads else [])]
    # faulthandler: a crash in native code leaves the Python stacks in the log.
    return start_serve(args, log_path, timeout=300.0, python_options=["-X", "faulthandler"])


async def measure_capacity(client: AsyncClient, image: bytes, seconds: float = 10.0, clients: int = 4) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < end:
            await client.detect(image, "soak")
            done += 1

    await asyncio.gather(*(loop() for _ in range(clients)))
    return done / seconds


async def soak(args: argparse.Namespace, address: str, pid: int, model_root: Path, image: bytes) -> dict:
    client = AsyncClient(address, timeout=ANSWER_TIMEOUT)
    capacity = await measure_capacity(client, image)
    rate = capacity * args.load_factor
    windows: list[Window] = []
    started = time.monotonic()
    duration = args.minutes * 60
    swaps, version = [], 1
    tasks: set[asyncio.Task] = set()

    def window() -> Window:
        index = int((time.monotonic() - started) // args.window_seconds)
        while len(windows) <= index:
            windows.append(Window(start_s=len(windows) * args.window_seconds))
        return windows[index]

    async def one() -> None:
        sent = time.monotonic()
        try:
            await client.detect(image, "soak")
            w = window()
            w.served += 1
            w.latencies.append(time.monotonic() - sent)
        except grpc.aio.AioRpcError as exc:
            w = window()
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                w.refused += 1
            elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                w.lost += 1
            else:
                w.failed += 1
                w.failures[exc.code().name] = w.failures.get(exc.code().name, 0) + 1

    async def cancelling_burst() -> None:
        burst = [asyncio.ensure_future(client.detect(image, "soak")) for _ in range(8)]
        await asyncio.sleep(0.01)
        for task in burst:
            task.cancel()
        results = await asyncio.gather(*burst, return_exceptions=True)
        window().cancelled += sum(isinstance(r, asyncio.CancelledError) for r in results)

    async def swap() -> None:
        nonlocal version
        version += 1
        staging = model_root.parent / f".staging-{version}"
        shutil.copytree(model_root / "1", staging)
        os.rename(staging, model_root / str(version))
        swaps.append({"at_s": round(time.monotonic() - started, 1), "version": version})

    async def sample_rss() -> None:
        while time.monotonic() - started < duration:
            try:
                window().rss_samples_kib.append(rss_bytes(pid) // 1024)
            except ProcessLookupError:
                return  # the daemon died; run() reports it with the end of its log
            await asyncio.sleep(min(2.0, args.window_seconds / 4))

    sampler = asyncio.create_task(sample_rss())
    next_swap = started + args.swap_seconds
    interval = 1.0 / rate
    next_send = time.monotonic()
    while time.monotonic() - started < duration:
        now = time.monotonic()
        if now >= next_swap:
            next_swap += args.swap_seconds
            await swap()
            tasks.add(asyncio.create_task(cancelling_burst()))
        while next_send <= now:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_send += interval
        await asyncio.sleep(max(0.0, min(next_send, next_swap) - time.monotonic()))
    await asyncio.gather(*tasks, return_exceptions=True)
    await sampler
    await client.close()
    rows = [w.summary() for w in windows]
    totals: dict = {k: sum(r[k] for r in rows) for k in ("served", "refused", "failed", "lost", "cancelled")}
    totals["failures"] = {}
    for r in rows:
        for code, n in r["failures"].items():
            totals["failures"][code] = totals["failures"].get(code, 0) + n
    # Growth of the typical (median) RSS from the first window after five minutes to the last full
    # one; the peaks (swaps) are reported beside it.
    after_5min = [r for r in rows if r["start_s"] >= 300 and r["start_s"] + args.window_seconds <= duration
                  and r["rss_kib"]]
    growth = peak_growth = None
    if len(after_5min) >= 2:
        growth = after_5min[-1]["rss_kib"] / after_5min[0]["rss_kib"] - 1
        peak_growth = after_5min[-1]["rss_max_kib"] / after_5min[0]["rss_max_kib"] - 1
    return {"capacity_rps": round(capacity, 2), "offered_rps": round(rate, 2), "minutes": args.minutes,
            "totals": totals, "swaps": len(swaps), "rss_growth_after_5min": growth,
            "rss_peak_growth_after_5min": peak_growth,
            "rss_growth_5min_spans": span_growth(windows, duration), "windows": rows}


def span_growth(windows: list[Window], duration: float, span: float = 300.0) -> float | None:
    """Growth of the median RSS from minutes 5-10 to the last five minutes.

    One window's median still moves with where the swaps fall in it; five minutes of samples
    (about 150, five swaps) do not, so this is the steadier reading of growth after the first five
    minutes. None when the run is shorter than 15 minutes.
    """
    if duration < 3 * span:
        return None

    def samples(start: float, end: float) -> list[int]:
        return [kib for w in windows if start <= w.start_s < end for kib in w.rss_samples_kib]

    first, last = samples(span, 2 * span), samples(duration - span, duration)
    return float(np.median(last) / np.median(first) - 1) if first and last else None


def run(args: argparse.Namespace) -> int:
    # Stopping the soak must stop its daemon too: turn SIGTERM into an exit that runs `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    image = args.image.read_bytes()
    with tempfile.TemporaryDirectory(prefix="sodd-soak-") as tmp:
        repository = Path(tmp) / "repo"
        model_root = repository / "soak"
        model_root.mkdir(parents=True)
        shutil.copytree(args.model, model_root / "1")
        log_path = args.daemon_log or Path(tmp) / "daemon.log"
        daemon = start_daemon(repository, args.threads, log_path)
        try:
            report = asyncio.run(soak(args, daemon.address, daemon.process.pid, model_root, image))
            died = daemon.process.poll()
        finally:
            daemon.stop(60)
        if died is not None:
            # The run failed; what the daemon said last is the first thing to read.
            print(f"the daemon exited with {died} during the soak; the end of its log:\n"
                  + "\n".join(log_path.read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
    print(f"capacity {report['capacity_rps']} req/s, offered {report['offered_rps']} req/s for "
          f"{report['minutes']} min, {report['swaps']} swaps")
    print(f"{'t (s)':>7} {'served':>7} {'refused':>8} {'failed':>7} {'lost':>5} {'p99 ms':>8} {'RSS MiB':>8} "
          f"{'max MiB':>8}")
    for w in report["windows"]:
        p99 = f"{w['p99_ms']:.0f}" if w["p99_ms"] is not None else "-"
        print(f"{w['start_s']:7.0f} {w['served']:7d} {w['refused']:8d} {w['failed']:7d} {w['lost']:5d} "
              f"{p99:>8} {w['rss_kib'] / 1024:8.0f} {w['rss_max_kib'] / 1024:8.0f}")
    print("totals:", report["totals"])
    print("RSS growth after 5 min: window medians", report["rss_growth_after_5min"], "window peaks",
          report["rss_peak_growth_after_5min"], "5-minute medians", report["rss_growth_5min_spans"])
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2))
    return 0 if report["totals"]["lost"] == 0 and report["totals"]["failed"] == 0 else 1
