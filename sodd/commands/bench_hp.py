"""`sodd bench-hp`: normal mode (Paddle Inference fp32 on the CPU) against high-performance mode.

    sodd bench-hp --model NAME=DIR [--model NAME=DIR ...] [--runs 20] [--threads 2]
                  [--candidates cpu,openvino] [--turn 4] [--settle 0.25] [--json FILE]

For each model, every candidate backend is loaded, timed and chosen the way high-performance mode
does at load (sodd.runtime.high_performance: synthetic scenes at the model's input size, one image
per run, model inference time only: the plugin's run including NMS, without decoding and
preprocessing), with `--runs` runs each; the boxes are checked against Paddle fp32. Prints one
markdown table per model and the speed-up of the chosen backend over normal mode.

The backends take turns of `--turn` back-to-back runs, each turn after `--settle` seconds idle and
one untimed run: that is how a backend runs when it serves, alone. Run by run (`--turn 1 --settle
0`, the order used at load) every backend after Paddle shares the cores with Paddle's OpenMP
threads, which spin for 200 ms after each run, and reads slower than it serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-hp", help="normal vs high-performance mode: backend timings and agreement",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a model directory (repeatable)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per backend (median reported; default 20)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per backend (default: all cores)")
    p.add_argument("--candidates", default="", help="device strings separated by ',', e.g. cpu,openvino "
                                                    "(default: high-performance mode's, INT8 included where "
                                                    "its measured cost allows)")
    p.add_argument("--turn", type=int, default=4, help="back-to-back timed runs per backend turn (default 4)")
    p.add_argument("--settle", type=float, default=0.25, help="idle seconds before each turn (default 0.25)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where converted graphs are kept")
    p.add_argument("--json", type=Path, default=None, help="write every number to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodd.model.modeldir import read_model_dir
    from sodd.observability.quiet import native_stdout_filtered
    from sodd.plugins.protocol import discover_plugins
    from sodd.runtime.high_performance import REFERENCE, Timing, Tolerance, select_backend

    if args.runs < 1 or args.turn < 1 or args.settle < 0:
        print("sodd bench-hp: --runs and --turn must be positive, --settle not negative", file=sys.stderr)
        return 2
    timing = Timing(rounds=args.runs, turn=args.turn, settle_s=args.settle)
    plugins, _ = discover_plugins()
    threads = str(args.threads or os.cpu_count() or 1)
    requested = tuple(c for c in args.candidates.split(",") if c)
    if requested and REFERENCE not in requested:
        requested = (REFERENCE, *requested)
    report = {"threads": int(threads), "runs": args.runs, "turn": args.turn, "settle_s": args.settle,
              "load_average_start": os.getloadavg(),
              "tolerance": Tolerance().describe(), "models": []}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            print(f"sodd bench-hp: --model takes NAME=DIR, got {item!r}", file=sys.stderr)
            return 2
        model = read_model_dir(path)

        def load(spec, model=model):
            plugin = next(p for p in plugins.values() if spec.type in p.device_types)
            options = {"threads": threads, **spec.options}
            if args.cache_dir and spec.type != "cpu":
                options["cache_dir"] = str(args.cache_dir)
            with native_stdout_filtered():
                return plugin.load(model, spec.name, options)

        started = time.perf_counter()
        # Without --candidates, the mode's own: this machine's backends and INT8 where its cost allows.
        selection = select_backend(model, load, name=name, candidates=requested or None, timing=timing)
        selection.predictor.close()
        rows = []
        for m in selection.table:
            a = m.agreement
            rows.append({"backend": m.device, "median_ms": m.median_ms, "error": m.error, "qualified": m.qualified,
                         "checked": a.checked if a else None, "matched": a.matched if a else None,
                         "min_iou": a.min_iou if a else None, "max_score_diff": a.max_score_diff if a else None})
        normal = next(r for r in rows if r["backend"] == REFERENCE)
        chosen = next(r for r in rows if r["backend"] == selection.device_label)
        entry = {"name": name, "dir": str(path), "model_name": model.model_name, "input_size": model.input_size,
                 "chosen": selection.device_label, "normal_ms": normal["median_ms"], "hp_ms": chosen["median_ms"],
                 "speedup": normal["median_ms"] / chosen["median_ms"], "rows": rows,
                 "seconds": time.perf_counter() - started, "load_average_end": os.getloadavg()}
        report["models"].append(entry)
        print(_markdown(entry), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _markdown(entry: dict) -> str:
    h, w = entry["input_size"] or ("?", "?")
    lines = [f"### {entry['name']} ({entry['model_name']}, {w}x{h})", "",
             "| backend | median ms | speed-up | boxes agreeing | min IoU | max score diff | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in entry["rows"]:
        if r["error"]:
            lines.append(f"| {r['backend']} | - | - | - | - | - | failed: {r['error'][:80]} |")
            continue
        verdict = "**chosen**" if r["backend"] == entry["chosen"] else ("agrees" if r["qualified"] else "rejected")
        lines.append(f"| {r['backend']} | {r['median_ms']:.1f} | {entry['normal_ms'] / r['median_ms']:.2f}x | "
                     f"{r['matched']}/{r['checked']} | {r['min_iou']:.3f} | {r['max_score_diff']:.4f} | {verdict} |")
    lines += ["", f"High-performance mode: {entry['chosen']}, {entry['speedup']:.2f}x normal mode "
                  f"({entry['normal_ms']:.1f} -> {entry['hp_ms']:.1f} ms).", ""]
    return "\n".join(lines)
