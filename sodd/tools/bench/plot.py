"""Throughput and latency against concurrency, sodd beside PaddleX's serving and the plain loop.

One row of two panels per image size, so that a size sweep stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sodd.tools.bench.report import best_plain_throughput, variants
from sodd.tools.bench.stats import Measurement

SERVING_COLOR = "tab:orange"
PLAIN_COLOR = "tab:green"
VARIANT_COLORS = ("tab:blue", "tab:purple", "tab:cyan", "tab:red", "tab:brown")  # sodd, per daemon configuration


def plot(ms: Sequence[Measurement], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sizes = list(dict.fromkeys(m.size for m in ms if m.system in ("sodd", "paddlex-serving"))) or [""]
    clients = sorted({m.concurrency for m in ms if m.system in ("sodd", "paddlex-serving")}) or [1]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.4 * len(sizes) + 0.6), squeeze=False)
    series = [("sodd", v, VARIANT_COLORS[i % len(VARIANT_COLORS)]) for i, v in enumerate(variants(ms))]
    series.append(("paddlex-serving", "", SERVING_COLOR))
    for row, size in enumerate(sizes):
        ax_thr, ax_lat = axes[row]
        for system, setup, color in series:
            points = sorted((m for m in ms if m.system == system and m.size == size and m.setup == setup),
                            key=lambda m: m.concurrency)
            if not points:
                continue
            label = f"sodd {setup}" if setup else system
            xs = [m.concurrency for m in points]
            p50 = [m.percentile(50) * 1000 for m in points]
            ax_thr.plot(xs, [m.throughput for m in points], marker="o", color=color, label=label)
            ax_lat.plot(xs, p50, marker="o", color=color, label=f"{label} p50")
            ax_lat.fill_between(xs, p50, [m.percentile(99) * 1000 for m in points], color=color, alpha=0.12)
        best = best_plain_throughput(ms, size)
        if best is not None:
            ax_thr.axhline(best.throughput, color=PLAIN_COLOR, linestyle="--", label=f"best plain loop ({best.setup})")
        for ax, ylabel in ((ax_thr, "images/s"), (ax_lat, "ms: p50 line, band to p99")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(clients)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{'throughput' if ax is ax_thr else 'latency'}" + (f", {size}" if size else ""), fontsize=9)
            ax.grid(True, alpha=0.3)
        ax_thr.set_ylim(bottom=0)
        ax_lat.set_yscale("log")
        ax_lat.yaxis.set_major_formatter(ScalarFormatter())
        ax_lat.yaxis.set_minor_formatter(NullFormatter())
        if row == 0:
            ax_thr.legend(fontsize=7)
            ax_lat.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
