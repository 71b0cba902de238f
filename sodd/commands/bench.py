"""`sodd bench`: a daemon under C concurrent clients, beside plain and PaddleX baselines, in one run.

    sodd bench --model-dir DIR --image FILE [--start | --address HOST:PORT --model NAME]
               [--concurrency 1,8] [--sizes 640x360,3840x2160] [--requests 32]
               [--name NAME --doc docs/benchmarks.md --plot-dir docs/img] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4,8,16")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure the daemon against plain and PaddleX baselines",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="the PaddleX model directory every system runs")
    p.add_argument("--image", action="append", required=True, type=Path, metavar="FILE",
                   help="an image to send (repeatable; requests take them in turn)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--start", action="store_true",
                        help="start a daemon on --model-dir for the run (the default without --address)")
    target.add_argument("--address", help="HOST:PORT of a running daemon serving --model-dir")
    p.add_argument("--model", default="", help="the model's name on --address (default: its default model)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra `sodd serve` argument for --start, e.g. --serve-arg=--max-batch-size=4 (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="instead of one started daemon, start one per variant in turn with these `sodd serve` "
                        "arguments (after --serve-arg), e.g. --variant 'i2t1=--instances 2 --threads 1' "
                        "(repeatable; NAME= alone runs the defaults)")
    p.add_argument("--concurrency", type=_ints, default=[1, 8], help="client counts, e.g. 1,2,4,8,16 (default 1,8)")
    p.add_argument("--sizes", default="", help="resize the images to each WxH, e.g. 640x360,1920x1080,3840x2160 "
                                               "(default: send them as they are)")
    p.add_argument("--requests", type=int, default=32, help="measured requests per row (default 32)")
    p.add_argument("--warmup", type=int, default=4, help="unmeasured requests before each row (default 4)")
    p.add_argument("--plain-setups", default="auto",
                   help="plain loops as PREDICTORSxTHREADS[bBATCH], e.g. 1x2,2x1,1x2b4; auto: 1xCORES and "
                        "CORESx1; empty: none")
    p.add_argument("--rounds", type=int, default=5,
                   help="at 1 client, alternate sodd and PaddleX's predict in this many rounds (the requests "
                        "split among them), and at 8 clients sodd and the plain loops (at least 6 requests per "
                        "client a round), and report each ratio's median and spread; 0 or 1: the baselines run "
                        "on their own before the servers (default 5)")
    p.add_argument("--no-paddlex-predict", action="store_true", help="skip PaddleX's predict loop")
    p.add_argument("--no-paddlex-serving", action="store_true", help="skip PaddleX's own serving")
    p.add_argument("--paddlex-python", type=Path,
                   help="interpreter of the PaddleX 3.7.2 environment (default: $SODD_PADDLEX_PYTHON, "
                        "else .venv-paddlex/bin/python)")
    p.add_argument("--threads", type=int, default=None,
                   help="math threads for PaddleX's baselines (default: the usable cores)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request deadline in seconds")
    p.add_argument("--name", default="", help="section name in --doc and plot file name (default: the model name)")
    p.add_argument("--doc", type=Path, default=None,
                   help="markdown file whose section --name this run (re)writes, e.g. docs/benchmarks.md")
    p.add_argument("--plot-dir", type=Path, default=None, help="write bench-NAME.png here (with --doc, the "
                                                                "default is img/ beside the doc)")
    p.add_argument("--json", type=Path, default=None, help="write every number of the run to this JSON file")
    p.set_defaults(func=run)


def _setups(text: str, cores: int) -> list:
    from sodd.tools.bench.plain import PlainSetup

    if text.strip() == "auto":
        return [PlainSetup(1, cores)] + ([PlainSetup(cores, 1)] if cores > 1 else [])
    return [PlainSetup.parse(part) for part in text.split(",") if part.strip()]


def _variants(texts: list[str], common: list[str]) -> list[tuple[str, list[str]]]:
    if not texts:
        return [("", list(common))]
    out: list[tuple[str, list[str]]] = []
    for text in texts:
        name, sep, rest = text.partition("=")
        if not sep or not name.strip() or any(c in name for c in " |`"):
            raise ValueError(f"--variant {text!r} is not NAME=ARGS with a short NAME")
        if name in (n for n, _ in out):
            raise ValueError(f"--variant name {name!r} is given twice")
        out.append((name.strip(), [*common, *shlex.split(rest)]))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-") or "bench"


def run(args: argparse.Namespace) -> int:
    from sodd.model.modeldir import ModelDirError, read_model_dir
    from sodd.plugins.devices import usable_cores
    from sodd.tools.bench import images as image_sets
    from sodd.tools.bench import machine, plot, report, runner

    try:
        model = read_model_dir(args.model_dir)
        cores = usable_cores()
        setups = _setups(args.plain_setups, cores)
        sizes = [image_sets.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except (ModelDirError, ValueError) as exc:
        print(f"sodd bench: {exc}", file=sys.stderr)
        return 2
    try:
        variants = _variants(args.variant, args.serve_arg)
    except ValueError as exc:
        print(f"sodd bench: {exc}", file=sys.stderr)
        return 2
    if args.address and args.variant:
        print("sodd bench: --variant starts daemons; it cannot be combined with --address", file=sys.stderr)
        return 2
    if args.requests < 1 or args.warmup < 0 or args.rounds < 0:
        print("sodd bench: --requests must be positive, --warmup and --rounds not negative", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        print(f"sodd bench: no such image: {', '.join(missing)}", file=sys.stderr)
        return 2
    name = args.name or model.model_name
    facts = machine.facts()
    with tempfile.TemporaryDirectory(prefix="sodd-bench-") as tmp:
        workdir = Path(tmp)
        try:
            sets = ([image_sets.resized(args.image, s, workdir / "images") for s in sizes] if sizes
                    else [image_sets.as_given(args.image)])
        except ValueError as exc:
            print(f"sodd bench: {exc}", file=sys.stderr)
            return 2
        plan = runner.Plan(
            model_dir=args.model_dir.resolve(), image_sets=sets, concurrency=args.concurrency,
            requests=args.requests, warmup=args.warmup, workdir=workdir, address=args.address, model=args.model,
            variants=variants, plain_setups=setups, paddlex_python=args.paddlex_python,
            paddlex_predict=not args.no_paddlex_predict, paddlex_serving=not args.no_paddlex_serving,
            threads=args.threads or cores, timeout=args.timeout, rounds=args.rounds)
        try:
            outcome = runner.run(plan, progress=_progress)
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"sodd bench: {exc}", file=sys.stderr)
            return 1
    facts["load_average_end"] = machine.load_average()
    input_hw = model.input_size
    settings = {"command": "sodd bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
                "requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
                "variants": {n or "sodd": list(a) for n, a in variants}, "plain_setups": [s.name for s in setups],
                "address": args.address or "started by sodd bench"}
    model_facts = {"model_name": model.model_name, "dir": str(args.model_dir),
                   "input": f"{input_hw[1]}x{input_hw[0]}" if input_hw else "its own size",
                   "program": model.program_format}
    images_facts = {s.label: f"{len(s.encoded)} file(s), {sum(map(len, s.encoded)) / 1024:.0f} KiB encoded"
                    for s in sets}
    data = report.to_dict(settings, facts, model_facts, images_facts, outcome.measurements, outcome.skipped,
                          outcome.versions, outcome.interleaved, outcome.throughput_rounds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    plot_path = None
    plot_dir = args.plot_dir or (args.doc.parent / "img" if args.doc else None)
    if plot_dir is not None:
        plot_path = plot_dir / f"bench-{_slug(name)}.png"
        try:
            plot.plot(outcome.measurements, f"{name}: {model.model_name}, {facts['cpu']}, {facts['cores']} cores",
                      plot_path)
        except Exception as exc:  # noqa: BLE001 - a broken plotting stack must not cost the measured numbers
            print(f"sodd bench: no plot written ({type(exc).__name__}: {exc})", file=sys.stderr)
            plot_path = None
    text = report.markdown(name, data, outcome.measurements, _relative(plot_path, args.doc) if plot_path else None,
                           outcome.interleaved, outcome.throughput_rounds)
    if args.doc:
        report.write_section(args.doc, name, text)
    print(text)
    lost = sum(m.lost for m in outcome.measurements if m.system == "sodd")
    return 0 if lost == 0 else 3


def _relative(path: Path, doc: Path | None) -> str:
    if doc is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(doc.resolve().parent))
    except ValueError:
        return str(path.resolve())


def _progress(m) -> None:  # noqa: ANN001 - a sodd.tools.bench.stats.Measurement, imported lazily
    print(f"{m.system:16} {m.setup:10} {m.size:>10} c={m.concurrency:<3} {m.throughput:7.2f} images/s  "
          f"p50 {m.percentile(50) * 1000:8.1f} ms  p99 {m.percentile(99) * 1000:8.1f} ms  lost {m.lost}",
          file=sys.stderr, flush=True)
