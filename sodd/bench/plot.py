"""Throughput and latency against concurrency, sodd beside PaddleX's serving and the plain loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sodd.bench.report import best_plain_throughput, variants
from sodd.bench.stats import Measurement

COLORS = {"sodd": "tab:blue", "paddlex-serving": "tab:orange", "plain": "tab:green"}
VARIANT_COLORS = ("tab:blue", "tab:purple", "tab:cyan", "tab:red", "tab:brown")  # named daemon configurations
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v")


def plot(ms: Sequence[Measurement], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax_thr, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = list(dict.fromkeys(m.size for m in ms if m.system in ("sodd", "paddlex-serving")))
    clients = sorted({m.concurrency for m in ms if m.system in ("sodd", "paddlex-serving")})
    for i, size in enumerate(sizes):
        suffix = f" {size}" if len(sizes) > 1 else ""
        style, marker = STYLES[i % len(STYLES)], MARKERS[i % len(MARKERS)]
        series = [("sodd", v) for v in variants(ms)] + [("paddlex-serving", "")]
        for system, setup in series:
            points = sorted((m for m in ms if m.system == system and m.size == size and m.setup == setup),
                            key=lambda m: m.concurrency)
            if not points:
                continue
            xs = [m.concurrency for m in points]
            p50 = [m.percentile(50) * 1000 for m in points]
            color = COLORS[system] if not setup else VARIANT_COLORS[variants(ms).index(setup) % len(VARIANT_COLORS)]
            label = (f"sodd {setup}" if setup else system) + suffix
            ax_thr.plot(xs, [m.throughput for m in points], linestyle=style, marker=marker, color=color, label=label)
            ax_lat.plot(xs, p50, linestyle=style, marker=marker, color=color, label=f"{label} p50")
            ax_lat.fill_between(xs, p50, [m.percentile(99) * 1000 for m in points], color=color, alpha=0.1)
        best = best_plain_throughput(ms, size)
        if best is not None:
            ax_thr.axhline(best.throughput, color=COLORS["plain"], linestyle=style,
                           label=f"best plain loop ({best.setup}){suffix}")
    for ax, ylabel in ((ax_thr, "images/s"), (ax_lat, "latency ms (p50 line, band up to p99)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients or [1])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax_thr.set_ylim(bottom=0)
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(ScalarFormatter())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
