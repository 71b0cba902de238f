"""`sodd-client`: call a sodd daemon from the command line.

    sodd-client --server HOST:PORT detect INPUT... [--model NAME] [--threshold 0.4 | 0:0.5,3:0.3]
                [--batch-size N] [--print] [--save-json DIR|FILE] [--save-img DIR]
                [--slice | --no-slice] [--slice-size H[xW]] [--overlap R[,R]] [--slice-merge nms|nmm|greedynmm]
                [--slice-metric iou|ios] [--slice-match-threshold T] [--no-full-image] [--class-agnostic]
    sodd-client --server HOST:PORT models [--json]
    sodd-client --server HOST:PORT devices [--json]

--server also takes unix:/path/to/socket. --token (or the SODD_TOKEN environment variable, which
keeps the token out of the process list) sends a bearer token; --tls-ca turns TLS on and
--tls-cert/--tls-key add a client certificate for mutual TLS.

INPUT is an image file, a directory of images, or an http(s) URL that this client fetches (the
daemon never fetches URLs). Errors print the gRPC status and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc

from sodd_client.client import Client, Threshold
from sodd_client.results import result_text


def parse_threshold(text: str | None) -> Threshold:
    """`0.4` for every class, or `0:0.5,3:0.3` per class id."""
    if text is None:
        return None
    if ":" not in text:
        return float(text)
    out = {}
    for part in text.split(","):
        cls_id, sep, value = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"--threshold part {part!r} is not CLASS_ID:VALUE")
        out[int(cls_id)] = float(value)
    return out


def _pair(text: str, sep: str, kind: Any, flag: str) -> tuple:
    parts = text.lower().split(sep)
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{flag} takes one value or two separated by {sep!r}, got {text!r}")
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not a number or a pair of numbers") from None
    return (values[0], values[-1])


def slicing_options(args: argparse.Namespace) -> Any:
    """The Slicing fields the flags set: None leaves the model's default slicing."""
    if args.no_slice:
        return False
    fields: dict[str, Any] = {}
    if args.slice_size:
        fields["slice_height"], fields["slice_width"] = _pair(args.slice_size, "x", int, "--slice-size")
    if args.overlap:
        fields["overlap_height_ratio"], fields["overlap_width_ratio"] = _pair(args.overlap, ",", float, "--overlap")
    for flag, key in (("slice_merge", "merge"), ("slice_metric", "match_metric"),
                      ("slice_match_threshold", "match_threshold")):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    if args.no_full_image:
        fields["full_image"] = False
    if args.class_agnostic:
        fields["class_agnostic"] = True
    if fields:
        return {"enabled": True, **fields}
    return True if args.slice else None


def cmd_detect(client: Client, args: argparse.Namespace) -> int:
    threshold = parse_threshold(args.threshold)
    slicing = slicing_options(args)
    for result in client.predict(list(args.inputs), args.batch_size, threshold, model=args.model, slicing=slicing):
        if args.print:
            print(result_text(dict(result)))
        if args.save_json:
            result.save_to_json(args.save_json)
        if args.save_img:
            result.save_to_img(args.save_img)
        if not (args.print or args.save_json or args.save_img):
            response = result.response
            print(f"{result['input_path']}: {len(result['boxes'])} boxes ({response.model} v{response.version} "
                  f"on {response.device}, {response.slices} network run(s))")
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models()
    rows = [
        {"name": m.name, "version": m.version, "directory": m.directory, "model_name": m.model_name,
         "labels": list(m.labels), "device": m.device, "default": m.is_default}
        for m in models
    ]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['name']}{mark}  v{r['version']}  {r['model_name']}  on {r['device']}  {r['directory']}")
        print(f"    labels: {', '.join(r['labels'])}")
    return 0


def cmd_devices(client: Client, args: argparse.Namespace) -> int:
    plugins = client.list_devices()
    if args.json:
        rows = [{"plugin": p.name, "device_types": list(p.device_types), "error": p.error,
                 "devices": [{"device": d.device, "available": d.available, "reason": d.reason,
                              "facts": dict(d.facts)} for d in p.devices]} for p in plugins]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for p in plugins:
        print(f"{p.name} ({', '.join(p.device_types) or '-'})" + (f": {p.error}" if p.error else ""))
        for d in p.devices:
            state = "available" if d.available else f"unavailable: {d.reason}"
            facts = ", ".join(f"{k}={v}" for k, v in sorted(d.facts.items()))
            print(f"    {d.device}: {state}" + (f"  [{facts}]" if facts else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sodd-client", description="Call a sodd daemon.")
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT or unix:/path of the daemon")
    parser.add_argument("--token", default=os.environ.get("SODD_TOKEN"),
                        help="bearer token (default: the SODD_TOKEN environment variable)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) the daemon's certificate must chain to")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect", help="detect objects in images")
    d.add_argument("inputs", nargs="+", metavar="INPUT")
    d.add_argument("--model", default="", help="model name (default: the daemon's default model)")
    d.add_argument("--threshold", help="0.4, or per class id: 0:0.5,3:0.3")
    d.add_argument("--batch-size", type=int, default=1, help="images per call (PaddleX's batch_size)")
    d.add_argument("--print", action="store_true", help="print results as PaddleX does")
    d.add_argument("--save-json", metavar="DIR|FILE", help="write <stem>_res.json files (PaddleX layout)")
    d.add_argument("--save-img", metavar="DIR", help="write <stem>_res.<ext> drawings")
    sl = d.add_argument_group("slicing", "cut large images into overlapping windows (default: the model's setting)")
    on_off = sl.add_mutually_exclusive_group()
    on_off.add_argument("--slice", action="store_true", help="slice, with the window size the daemon picks")
    on_off.add_argument("--no-slice", action="store_true", help="never slice, even where the model does by default")
    sl.add_argument("--slice-size", metavar="H[xW]", help="window size in pixels, e.g. 640 or 512x768")
    sl.add_argument("--overlap", metavar="R[,R]", help="overlap ratio of neighbouring windows (height,width)")
    sl.add_argument("--slice-merge", choices=["nms", "nmm", "greedynmm"], help="how window boxes are merged")
    sl.add_argument("--slice-metric", choices=["iou", "ios"], help="box overlap measure for merging")
    sl.add_argument("--slice-match-threshold", type=float, metavar="T", help="overlap above which boxes merge")
    sl.add_argument("--no-full-image", action="store_true", help="run the windows only, not the whole image too")
    sl.add_argument("--class-agnostic", action="store_true", help="merge boxes of different classes too")
    d.set_defaults(func=cmd_detect)
    m = sub.add_parser("models", help="list the served models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    dv = sub.add_parser("devices", help="list hardware plugins and their devices")
    dv.add_argument("--json", action="store_true")
    dv.set_defaults(func=cmd_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("sodd-client: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        with Client(args.server, timeout=args.timeout, token=args.token, tls_ca=args.tls_ca,
                    tls_cert=args.tls_cert, tls_key=args.tls_key) as client:
            return args.func(client, args)
    except grpc.RpcError as exc:
        print(f"sodd-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, ImportError, argparse.ArgumentTypeError) as exc:
        print(f"sodd-client: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
