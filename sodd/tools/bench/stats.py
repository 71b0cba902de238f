"""Latency and throughput summaries of one measured run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """One system at one image size and concurrency.

    `latencies` are per request in seconds (client send to client receive, or one loop iteration
    for in-process loops); `seconds` is the wall time from the first send to the last answer, so
    `throughput` counts what the clients actually got.
    """

    system: str  # "sodd", "plain", "paddlex-predict", "paddlex-serving"
    setup: str  # e.g. "1x2" (predictors x threads) for plain loops, "" otherwise
    size: str  # "WxH" of the image sent
    concurrency: int
    requests: int
    ok: int
    seconds: float
    latencies: Sequence[float] = field(repr=False)
    errors: Mapping[str, int] = field(default_factory=dict)
    # sodd only: the daemon's mean seconds per stage (decode, preprocess, queue, inference, postprocess).
    stages: Mapping[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.requests - self.ok

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), q)) if len(self.latencies) else float("nan")

    def summary(self) -> dict:
        """A JSON-ready dict: every field except the raw latencies, plus the derived numbers."""
        out = {k: v for k, v in asdict(self).items() if k != "latencies"}
        out["errors"] = dict(self.errors)
        out["stages"] = dict(self.stages)
        out.update(lost=self.lost, throughput=self.throughput, mean=float(np.mean(self.latencies)) if
                   len(self.latencies) else float("nan"),
                   p50=self.percentile(50), p90=self.percentile(90), p99=self.percentile(99))
        return out
