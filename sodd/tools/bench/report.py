"""The benchmark report: targets from the serving-engine issue, markdown tables, the docs section.

A run writes one section of docs/benchmarks.md between markers carrying its name, so reruns
replace their own section and leave every other section of the file as it was.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sodd.tools.bench.stats import Measurement

if TYPE_CHECKING:  # the runner imports this module
    from sodd.tools.bench.runner import ThroughputRounds

# The serving-engine targets (record what is reached, do not tune the benchmark to them).
LATENCY_RATIO_MAX = 1.10  # sodd p50 at 1 client / plain loop's per-image time
SERVING_RATIO_MIN = 1.2  # sodd images/s at 8 clients / PaddleX serving's at 8 clients
PLAIN_RATIO_MIN = 0.95  # sodd images/s at 8 clients / the best plain set-up's
TARGET_CLIENTS = 8
PREDICT_RATIO_MAX = 1.05  # sodd p50 at 1 client / PaddleX predict's p50, interleaved rounds: the promise to one client


@dataclass(frozen=True)
class Target:
    size: str
    variant: str  # the daemon configuration ("" when the run had one)
    name: str
    measured: float | None  # None when a needed number was not measured
    limit: str
    reached: bool | None
    basis: str


def _find(ms: Sequence[Measurement], system: str, size: str, concurrency: int | None = None,
          setup: str | None = None) -> list[Measurement]:
    return [m for m in ms if m.system == system and m.size == size
            and (concurrency is None or m.concurrency == concurrency) and (setup is None or m.setup == setup)]


def variants(ms: Sequence[Measurement]) -> list[str]:
    return list(dict.fromkeys(m.setup for m in ms if m.system == "sodd"))


def best_plain_latency(ms: Sequence[Measurement], size: str) -> Measurement | None:
    """The one-image-at-a-time loop with the lowest median: what one client could get without a daemon."""
    single = [m for m in _find(ms, "plain", size) if m.setup.startswith("1x") and "b" not in m.setup and m.ok]
    return min(single, key=lambda m: m.percentile(50), default=None)


def best_plain_throughput(ms: Sequence[Measurement], size: str) -> Measurement | None:
    return max((m for m in _find(ms, "plain", size) if m.ok), key=lambda m: m.throughput, default=None)


def targets(ms: Sequence[Measurement], throughput_rounds: Sequence[ThroughputRounds] = ()) -> list[Target]:
    """`throughput_rounds`: `sodd.tools.bench.runner.ThroughputRounds` rows; where one matches, the
    comparison with the plain loops is the median of its rounds, not of two separate measurements."""
    out: list[Target] = []
    for size in dict.fromkeys(m.size for m in ms if m.system == "sodd"):
        for v in variants(ms):
            rounds = next((r for r in throughput_rounds if r.size == size and r.variant == v and r.ratios), None)
            out.extend(_targets(ms, size, v, rounds))
    return out


def _targets(ms: Sequence[Measurement], size: str, v: str, rounds: ThroughputRounds | None = None) -> list[Target]:
    one = next(iter(_find(ms, "sodd", size, 1, v)), None)
    plain_lat = best_plain_latency(ms, size)
    ratio = one.percentile(50) / plain_lat.percentile(50) if one and one.ok and plain_lat else None
    out = [Target(size, v, "1 client: sodd p50 / plain per-image time", ratio, f"<= {LATENCY_RATIO_MAX:g}",
                  None if ratio is None else ratio <= LATENCY_RATIO_MAX,
                  f"plain {plain_lat.setup} p50" if plain_lat else "plain loop not measured")]
    eight = next(iter(_find(ms, "sodd", size, TARGET_CLIENTS, v)), None)
    served = next(iter(_find(ms, "paddlex-serving", size, TARGET_CLIENTS)), None)
    ratio = eight.throughput / served.throughput if eight and served and served.throughput else None
    out.append(Target(size, v, f"{TARGET_CLIENTS} clients: sodd / PaddleX serving images/s", ratio,
                      f">= {SERVING_RATIO_MIN:g}", None if ratio is None else ratio >= SERVING_RATIO_MIN,
                      "same concurrency" if served else "PaddleX serving not measured"))
    plain_thr = best_plain_throughput(ms, size)
    ratio = eight.throughput / plain_thr.throughput if eight and plain_thr and plain_thr.throughput else None
    basis = f"plain {plain_thr.setup}" if plain_thr else "plain loop not measured"
    if rounds is not None:
        ratio, ratios = rounds.ratio, rounds.ratios
        basis = (f"median of {len(ratios)} interleaved rounds, {min(ratios):.2f} to {max(ratios):.2f}, "
                 "against each round's best plain set-up")
    out.append(Target(size, v, f"{TARGET_CLIENTS} clients: sodd / best plain images/s", ratio,
                      f">= {PLAIN_RATIO_MIN:g}", None if ratio is None else ratio >= PLAIN_RATIO_MIN, basis))
    lost = sum(m.lost for m in _find(ms, "sodd", size, setup=v))
    total = sum(m.requests for m in _find(ms, "sodd", size, setup=v))
    out.append(Target(size, v, "sodd lost requests (all concurrencies)", float(lost), "= 0", lost == 0,
                      f"of {total} sent"))
    return out


def interleaved_targets(rounds: Sequence) -> list[Target]:
    """From `sodd.tools.bench.runner.Interleaved` rows: the median of the rounds' ratios, with their spread."""
    out = []
    for row in rounds:
        ratios = row.ratios
        if not ratios:
            continue
        out.append(Target(row.size, row.variant, "1 client: sodd p50 / PaddleX predict p50, interleaved",
                          row.ratio, f"<= {PREDICT_RATIO_MAX:g}", row.ratio <= PREDICT_RATIO_MAX,
                          f"median of {len(ratios)} rounds, {min(ratios):.2f} to {max(ratios):.2f}"))
    return out


def to_dict(settings: dict, machine: dict, model: dict, images: dict, ms: Sequence[Measurement],
            skipped: dict[str, str], versions: dict[str, str], interleaved: Sequence = (),
            throughput_rounds: Sequence = ()) -> dict:
    return {
        "settings": settings, "machine": machine, "model": model, "images": images, "versions": versions,
        "skipped": skipped, "measurements": [m.summary() for m in ms],
        "targets": [t.__dict__ for t in [*interleaved_targets(interleaved), *targets(ms, throughput_rounds)]],
        "interleaved": [{"size": r.size, "variant": r.variant, "sodd_p50": r.sodd_p50,
                         "paddlex_predict_p50": r.paddlex_p50, "ratios": r.ratios} for r in interleaved],
        "throughput_rounds": [{"size": r.size, "variant": r.variant, "clients": r.clients, "sodd": r.sodd,
                               "plain": r.plain, "ratios": r.ratios} for r in throughput_rounds],
    }


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _yes(flag: bool | None) -> str:
    return "not measured" if flag is None else "yes" if flag else "**no**"


def _errors(m: Measurement) -> str:
    return f"{m.lost}" + (f" ({', '.join(f'{k}: {v}' for k, v in m.errors.items())})" if m.errors else "")


def markdown(name: str, report: dict, ms: Sequence[Measurement], plot: str | None, interleaved: Sequence = (),
             throughput_rounds: Sequence = ()) -> str:
    machine, model, settings = report["machine"], report["model"], report["settings"]
    lines = [f"### {name}", "",
             f"Command: `{settings['command']}`", "",
             f"- Date: {machine['date']}; load average at start {machine['load_average_start']}, "
             f"at end {machine.get('load_average_end')}",
             f"- CPU: {machine['cpu']}, {machine['cores']} usable cores, flags "
             f"{', '.join(machine['flags']) or 'none'}, {machine['memory_gib']} GiB; {machine['os']}, "
             f"Python {machine['python']}",
             f"- sodd: paddle {machine['paddle']}" + (f"; PaddleX {report['versions'].get('paddlex')} with paddle "
                                                       f"{report['versions'].get('paddle')}"
                                                       if report["versions"] else ""),
             f"- Model: {model['model_name']} at {model['input']} ({model['program']} program), "
             f"{model['dir']}",
             "- Images: " + "; ".join(f"{label}: {info}" for label, info in report["images"].items()),
             f"- {settings['requests']} measured requests per row after {settings['warmup']} (at least one per "
             f"client) unmeasured; latency is client send to client receive (per loop iteration for loops)"]
    # Before the run the machine should idle; at its end the run's own work counts too (about the cores).
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    busy = [x for x in (start[0] if start else None, end[0] if end else None) if x is not None]
    if (start and start[0] > 0.5 * machine["cores"]) or (end and end[0] > 1.5 * machine["cores"]):
        lines.append(f"- **The machine had other work running** (1-minute load average up to {max(busy):g} on "
                     f"{machine['cores']} cores, this run's own load included): compare rows of this run with "
                     "each other, not with other machines or runs")
    for variant, args in settings.get("variants", {}).items():
        lines.append(f"- Daemon {variant}: `sodd serve {' '.join(args) or '(defaults)'}`")
    for system, why in report["skipped"].items():
        lines.append(f"- {system}: not measured ({why})")
    lines += ["", "| image | daemon | target | measured | limit | reached | basis |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in [*interleaved_targets(interleaved), *targets(ms, throughput_rounds)]:
        measured = _ratio(t.measured) if "lost" not in t.name else str(int(t.measured or 0))
        lines.append(f"| {t.size} | {t.variant or 'sodd'} | {t.name} | {measured} | "
                     f"{t.limit} | {_yes(t.reached)} | {t.basis} |")
    if interleaved:
        lines += ["", "One client, sodd over gRPC and PaddleX's predict loop in alternating rounds (p50 ms of each "
                      "round; ratio sodd / PaddleX):", "",
                  "| image | daemon | sodd p50 per round | PaddleX predict p50 per round | ratios | median |",
                  "| --- | --- | --- | --- | --- | ---: |"]
        for r in interleaved:
            lines.append(f"| {r.size} | {r.variant or 'sodd'} | {', '.join(_ms(x) for x in r.sodd_p50)} | "
                         f"{', '.join(_ms(x) for x in r.paddlex_p50)} | {', '.join(f'{x:.2f}' for x in r.ratios)} | "
                         f"{_ratio(r.ratio if r.ratios else None)} |")
    if throughput_rounds:
        lines += ["", "Many clients, sodd over gRPC and the plain loops in alternating rounds (images/s of each "
                      "round; ratio sodd / the round's best plain set-up):", "",
                  "| image | daemon | clients | sodd images/s per round | plain images/s per round | ratios | median |",
                  "| --- | --- | ---: | --- | --- | --- | ---: |"]
        for r in throughput_rounds:
            plain_cells = "; ".join(f"{setup}: {', '.join(f'{x:.1f}' for x in rates)}"
                                    for setup, rates in r.plain.items())
            sodd_cells = ", ".join(f"{x:.1f}" for x in r.sodd)
            lines.append(f"| {r.size} | {r.variant or 'sodd'} | {r.clients} | {sodd_cells} | "
                         f"{plain_cells} | {', '.join(f'{x:.2f}' for x in r.ratios)} | "
                         f"{_ratio(r.ratio if r.ratios else None)} |")
    lines += ["", "| image | daemon | clients | sodd images/s | sodd p50 / p90 / p99 ms | PaddleX serving images/s | "
              "PaddleX serving p50 / p90 / p99 ms | sodd / PaddleX serving | sodd / best plain | sodd lost |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in dict.fromkeys(m.size for m in ms):
        plain_thr = best_plain_throughput(ms, size)
        for s in sorted(_find(ms, "sodd", size), key=lambda m: (variants(ms).index(m.setup), m.concurrency)):
            p = next(iter(_find(ms, "paddlex-serving", size, s.concurrency)), None)
            vs_p = s.throughput / p.throughput if p and p.throughput else None
            vs_plain = s.throughput / plain_thr.throughput if plain_thr and plain_thr.throughput else None
            lines.append(
                f"| {size} | {s.setup or 'sodd'} | {s.concurrency} | {s.throughput:.2f} | {_ms(s.percentile(50))} / "
                f"{_ms(s.percentile(90))} / {_ms(s.percentile(99))} | {f'{p.throughput:.2f}' if p else '-'} | "
                + (f"{_ms(p.percentile(50))} / {_ms(p.percentile(90))} / {_ms(p.percentile(99))}" if p else "-")
                + f" | {_ratio(vs_p)} | {_ratio(vs_plain)} | {_errors(s)} |")
    staged = [m for m in ms if m.system == "sodd" and m.stages]
    if staged:
        lines += ["", "Where a sodd request's time went, as the daemon reports it (mean ms per request; the rest "
                      "of the client's latency is transport and the gRPC layers):", "",
                  "| image | daemon | clients | decode | preprocess | queue | inference | postprocess |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in staged:
            cells = " | ".join(_ms(m.stages.get(k, float("nan")))
                               for k in ("decode", "preprocess", "queue", "inference", "postprocess"))
            lines.append(f"| {m.size} | {m.setup or 'sodd'} | {m.concurrency} | {cells} |")
    baselines = [m for m in ms if m.system in ("plain", "paddlex-predict")]
    if baselines:
        lines += ["", "In-process loops (set-up: predictors x math threads, bB = batches of B):", "",
                  "| image | loop | set-up | images/s | p50 / p90 / p99 ms per image | lost |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for m in baselines:
            lines.append(f"| {m.size} | {m.system} | {m.setup} | {m.throughput:.2f} | {_ms(m.percentile(50))} / "
                         f"{_ms(m.percentile(90))} / {_ms(m.percentile(99))} | {_errors(m)} |")
    lost_p = [m for m in ms if m.system == "paddlex-serving" and m.lost]
    if lost_p:
        lines += ["", "PaddleX serving failures: " + "; ".join(f"{m.size} c={m.concurrency}: {_errors(m)}"
                                                               for m in lost_p)]
    if plot:
        lines += ["", f"![{name}: throughput and latency against concurrency]({plot})"]
    return "\n".join(lines) + "\n"


DOC_HEADER = "# Benchmarks\n\nSections between `sodd-bench` markers are written by `sodd bench`.\n"


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace this run's section of `doc` (or append it), keeping everything else byte for byte."""
    begin = f"<!-- sodd-bench:{name} begin (written by sodd bench; a rerun replaces it) -->"
    end = f"<!-- sodd-bench:{name} end -->"
    block = f"{begin}\n{body}{end}\n"
    text = doc.read_text() if doc.exists() else DOC_HEADER
    pattern = re.compile(re.escape(f"<!-- sodd-bench:{name} begin") + r".*?" + re.escape(end) + r"\n?", re.S)
    found = pattern.search(text)
    text = pattern.sub(lambda _: block, text, count=1) if found else text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
