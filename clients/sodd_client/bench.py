"""Closed-loop load on a sodd daemon: C concurrent clients send a fixed number of Detect calls.

Each client has its own channel (its own HTTP/2 connection, as separate cameras or services
would), sends its next request as soon as the previous answer arrives, and records the time from
send to receive. Requests are built once, so the client measures the daemon, not protobuf.

    python -m sodd_client.bench --server 127.0.0.1:50051 IMAGE... [--concurrency 8] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sodd.v1 import detector_pb2_grpc as pb_grpc

from sodd_client.client import CHANNEL_OPTIONS, detect_request

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")
# Without a local subchannel pool, channels to one address share a single connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class LoadResult:
    """What the clients saw: latencies of answered requests and every failure by status code."""

    requests: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # The daemon's own per-stage seconds (StageTimings), summed over answered requests.
    stage_totals: dict[str, float] = field(default_factory=dict)

    def stage_means(self) -> dict[str, float]:
        return {k: v / self.ok for k, v in self.stage_totals.items()} if self.ok else {}

    @property
    def ok(self) -> int:
        return len(self.latencies)


async def run_load(address: str, images: Sequence[bytes], concurrency: int, requests: int, *,
                   model: str = "", warmup: int = 0, timeout: float = 120.0) -> LoadResult:
    """Send `warmup` unmeasured requests, then `requests` measured ones, over `concurrency` clients."""
    if concurrency < 1 or requests < 0 or not images:
        raise ValueError("need at least one client, a non-negative request count and one image")
    messages = [detect_request(image, model) for image in images]
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS + OWN_CONNECTION)
                for _ in range(concurrency)]
    try:
        stubs = [pb_grpc.DetectorStub(c) for c in channels]
        await _phase(stubs, messages, warmup, timeout, LoadResult(warmup))
        result = LoadResult(requests)
        start = time.perf_counter()
        await _phase(stubs, messages, requests, timeout, result)
        result.seconds = time.perf_counter() - start
        return result
    finally:
        for channel in channels:
            await channel.close()


async def _phase(stubs: list[pb_grpc.DetectorStub], messages: list, total: int, timeout: float,
                 result: LoadResult) -> None:
    counter = itertools.count()

    async def client(stub: pb_grpc.DetectorStub) -> None:
        # The shared count keeps the total fixed however fast each client is.
        while (i := next(counter)) < total:
            message = messages[i % len(messages)]
            start = time.perf_counter()
            try:
                response = await stub.Detect(message, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                result.errors[code] = result.errors.get(code, 0) + 1
                continue
            elapsed = time.perf_counter() - start
            if response.image_width == 0:
                result.errors["EMPTY_RESPONSE"] = result.errors.get("EMPTY_RESPONSE", 0) + 1
                continue
            result.latencies.append(elapsed)
            for stage in STAGES:
                value = getattr(response.timings, f"{stage}_seconds")
                result.stage_totals[stage] = result.stage_totals.get(stage, 0.0) + value

    await asyncio.gather(*(client(s) for s in stubs))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default (numpy is not a client dependency)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(result: LoadResult) -> dict:
    return {
        "requests": result.requests, "ok": result.ok, "lost": result.requests - result.ok, "errors": result.errors,
        "seconds": result.seconds, "throughput": result.ok / result.seconds if result.seconds else 0.0,
        "p50": percentile(result.latencies, 50), "p90": percentile(result.latencies, 90),
        "p99": percentile(result.latencies, 99), "server_stage_means": result.stage_means(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sodd_client.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files, sent in turn")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--model", default="", help="model name (default: the daemon's default model)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request deadline in seconds")
    args = parser.parse_args(argv)
    images = [p.read_bytes() for p in args.images]
    result = asyncio.run(run_load(args.server, images, args.concurrency, args.requests, model=args.model,
                                  warmup=args.warmup, timeout=args.timeout))
    print(json.dumps(summary(result), indent=2))
    return 0 if result.ok == result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
