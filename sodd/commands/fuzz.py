"""`sodd fuzz`: coverage-guided fuzzing (atheris / libFuzzer) of the daemon's request path.

Each input is one of: a DetectRequest or DetectBatchRequest parsed from the bytes (malformed
protobuf fields), an encoded image wrapped in a valid request (corrupt and truncated JPEG, PNG,
WebP, bombs), or raw pixels with fuzzed dimensions. The input must end in a response or an allowed
status; anything else stops the run with the input saved by libFuzzer (crash-*).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from sodd.tools.daemon_process import rss_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fuzz", help="fuzz the request path (coverage-guided, atheris)")
    p.add_argument("--runs", type=int, default=100_000, help="inputs to try (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer seed, for repeatable runs")
    p.add_argument("--corpus", type=Path, help="corpus directory (grows as coverage grows); seeds are added to it")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a hang")
    p.set_defaults(func=run)


def write_seeds(corpus: Path) -> None:
    """Valid requests and images of every format, so mutations start from deep inside the path."""
    import cv2
    import numpy as np

    from sodd.v1 import detector_pb2 as pb

    corpus.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.dstack([xx * 4, yy * 5, (xx + yy) * 2]).astype(np.uint8)
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff"):
        data = cv2.imencode(ext, image)[1].tobytes()
        (corpus / f"seed-image{ext}").write_bytes(b"\x02" + data)
        request = pb.DetectRequest(image=pb.Image(encoded=data), model="m", threshold=0.3, request_id="s")
        (corpus / f"seed-request{ext}").write_bytes(b"\x00" + request.SerializeToString())
    batch = pb.DetectBatchRequest(images=[pb.Image(encoded=cv2.imencode(".png", image)[1].tobytes())] * 2)
    batch.class_thresholds.thresholds[1] = 0.2
    (corpus / "seed-batch").write_bytes(b"\x01" + batch.SerializeToString())
    (corpus / "seed-raw").write_bytes(b"\x03" + bytes([0, 4, 0, 4, 3]) + bytes(48))


def run(args: argparse.Namespace) -> int:
    try:
        import atheris
    except ImportError:
        print("sodd fuzz: atheris is not installed (pip install 'atheris==2.3.0'; CPython <= 3.11)", file=sys.stderr)
        return 2
    import grpc
    from google.protobuf.message import DecodeError

    # Coverage feedback from sodd's own code; instrumenting numpy, OpenCV and gRPC too would only
    # slow each input down.
    with atheris.instrument_imports(include=["sodd"]):
        from sodd.tools.fuzzing import ALLOWED_CODES, RequestPath
        from sodd.v1 import detector_pb2 as pb

    import logging

    logging.disable(logging.WARNING)  # each refused input would log a line; the summary counts them
    path = RequestPath()
    codes: collections.Counter[str] = collections.Counter()
    rss_start = rss_bytes() // 1024
    started = time.monotonic()

    def one(data: bytes) -> None:
        if not data:
            return
        try:
            outcome = attempt(data)
        except DecodeError:
            outcome = None
        codes[outcome.code.name if outcome else "unparseable protobuf (refused by gRPC before sodd)"] += 1
        if sum(codes.values()) % report_every == 0:
            summary()
        if outcome is None:
            return
        if outcome.code not in ALLOWED_CODES:
            raise AssertionError(f"input got {outcome.code.name}: {outcome.details}")
        if outcome.code is grpc.StatusCode.INVALID_ARGUMENT and not outcome.details:
            raise AssertionError("INVALID_ARGUMENT without a message naming the field")

    def attempt(data: bytes):  # noqa: ANN202 - an Outcome
        mode, body = data[0] % 4, data[1:]
        if mode == 0:
            return path.detect(pb.DetectRequest.FromString(body))
        if mode == 1:
            return path.detect_batch(pb.DetectBatchRequest.FromString(body))
        if mode == 2:
            return path.detect(pb.DetectRequest(image=pb.Image(encoded=body), model="m"))
        fdp = atheris.FuzzedDataProvider(body)
        h, w, c = fdp.ConsumeIntInRange(0, 4000), fdp.ConsumeIntInRange(0, 4000), fdp.ConsumeIntInRange(0, 5)
        raw = pb.RawImage(height=h, width=w, channels=c, data=fdp.ConsumeBytes(fdp.remaining_bytes()))
        return path.detect(pb.DetectRequest(image=pb.Image(raw=raw)))

    # libFuzzer ends the process without running atexit handlers, so report as the run goes.
    report_every = max(args.runs // 10, 1)

    def summary() -> None:
        total = sum(codes.values())
        print(f"sodd fuzz: {total} inputs in {time.monotonic() - started:.0f} s; statuses: {dict(codes)}; "
              f"RSS {rss_start} -> {rss_bytes() // 1024} KiB", flush=True)

    libfuzzer_args = [sys.argv[0], f"-runs={args.runs}", f"-seed={args.seed}", f"-timeout={args.timeout}",
                      "-rss_limit_mb=6144", "-print_final_stats=1"]
    if args.corpus is not None:
        write_seeds(args.corpus)
        libfuzzer_args.append(str(args.corpus))
    atheris.Setup(libfuzzer_args, one)
    atheris.Fuzz()  # exits the process when the runs are done
    return 0

