"""The plain baseline: Paddle Inference predictors in a loop in this process, no daemon.

Decode, preprocess, run and postprocess with sodd's own pipeline pieces and the same hardware
plugin the daemon loads, so the only difference to the daemon is the serving around it. A set-up
"PxT" runs P predictors with T math threads each, one Python thread per predictor (Paddle and
OpenCV release the GIL), pulling images from one shared count; "PxTbB" runs batches of B images.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sodd.model import pipeline
from sodd.model.decode import decode_encoded
from sodd.model.modeldir import ModelDir, read_model_dir
from sodd.model.postprocess import resolve_threshold
from sodd.observability.quiet import native_stdout_filtered
from sodd.plugins.protocol import Predictor, discover_plugins
from sodd.tools.bench.images import ImageSet
from sodd.tools.bench.rounds import RESULT_MARK, RoundsChild
from sodd.tools.bench.stats import Measurement

MAX_PIXELS = 1 << 31


@dataclass(frozen=True)
class PlainSetup:
    predictors: int
    threads: int
    batch: int = 1

    @property
    def name(self) -> str:
        return f"{self.predictors}x{self.threads}" + (f"b{self.batch}" if self.batch > 1 else "")

    @classmethod
    def parse(cls, text: str) -> PlainSetup:
        match = re.fullmatch(r"(\d+)x(\d+)(?:b(\d+))?", text.strip())
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1 or int(match.group(3) or 1) < 1:
            raise ValueError(f"plain set-up {text!r} is not PREDICTORSxTHREADS[bBATCH], e.g. 2x1 or 1x2b4")
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3) or 1))


class _Counter:
    """Hands out request indices until `total` are taken, to any number of threads."""

    def __init__(self, total: int) -> None:
        self._next = 0
        self._total = total
        self._lock = threading.Lock()

    def take(self, n: int) -> list[int]:
        with self._lock:
            start, self._next = self._next, min(self._total, self._next + n)
            return list(range(start, self._next))


def _detect(model: ModelDir, predictor: Predictor, encoded: list[bytes]) -> int:
    images = [decode_encoded(data, MAX_PIXELS) for data in encoded]
    prepared = pipeline.prepare_images(model, images)
    outputs = predictor.run(pipeline.network_inputs(prepared, predictor.input_names))
    threshold = resolve_threshold(None, None, model.draw_threshold)
    return sum(len(b) for b in pipeline.boxes_per_image(outputs, prepared, model, threshold))


def load_predictors(model_path: Path, setup: PlainSetup, device: str = "cpu") -> tuple[ModelDir, list[Predictor]]:
    model = read_model_dir(model_path)
    plugins, _problems = discover_plugins()
    plugin = next((p for p in plugins.values() if device.split(":")[0] in p.device_types), None)
    if plugin is None:
        raise RuntimeError(f"no hardware plugin claims device {device!r}")
    options = {"threads": str(setup.threads)}
    with native_stdout_filtered():
        return model, [plugin.load(model, device, options) for _ in range(setup.predictors)]


def run_loop(model: ModelDir, predictors: list[Predictor], images: ImageSet, setup: PlainSetup, requests: int,
             warmup: int) -> Measurement:
    """`requests` images through loaded predictors, one Python thread per predictor."""
    encoded = list(images.encoded)
    for predictor in predictors:
        for i in range(warmup):
            _detect(model, predictor, [encoded[i % len(encoded)]] * setup.batch)
    counter = _Counter(requests)
    latencies: list[float] = []
    failures: list[tuple[BaseException, int]] = []
    lock = threading.Lock()

    def work(predictor: Predictor) -> None:
        while indices := counter.take(setup.batch):
            start = time.perf_counter()
            try:
                _detect(model, predictor, [encoded[i % len(encoded)] for i in indices])
            except Exception as exc:  # noqa: BLE001 - counted as lost, reported by the caller
                with lock:
                    failures.append((exc, len(indices)))
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.extend([elapsed] * len(indices))  # each image waited for its whole batch

    threads = [threading.Thread(target=work, args=(p,), daemon=True) for p in predictors]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    errors: dict[str, int] = {}
    for exc, n in failures:
        key = f"{type(exc).__name__}: {str(exc)[:200]}"
        errors[key] = errors.get(key, 0) + n
    return Measurement("plain", setup.name, images.label, setup.predictors, requests, len(latencies), seconds,
                       latencies, errors)


class PlainRounds(RoundsChild):
    """One plain set-up kept loaded in its own process (`python -m sodd.tools.bench.plain MODEL_DIR
    SETUP DEVICE`), measuring one round when told: a whole row, or one of the rounds that alternate
    with sodd's."""

    def __init__(self, model_path: Path, setup: PlainSetup, image_sets: Sequence[ImageSet], workdir: Path,
                 device: str = "cpu") -> None:
        super().__init__(f"plain loop {setup.name}",
                         [sys.executable, "-m", "sodd.tools.bench.plain", str(model_path), setup.name, device],
                         workdir / f"plain-{setup.name}.log")
        self.setup = setup
        self._image_sets = list(image_sets)

    def measure(self, set_index: int, requests: int, warmup: int) -> Measurement:
        images = self._image_sets[set_index]
        data = self.ask({"label": images.label, "paths": [str(p) for p in images.paths], "requests": requests,
                         "warmup": warmup})
        return Measurement("plain", self.setup.name, images.label, self.setup.predictors, requests, data["ok"],
                           data["seconds"], data["latencies"], data["errors"])


def serve_rounds(model_path: Path, setup: PlainSetup, device: str) -> None:
    """The child of PlainRounds: load once, then one measured round per order on stdin."""
    model, predictors = load_predictors(model_path, setup, device)
    try:
        print(RESULT_MARK + json.dumps({"setup": setup.name}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            order = json.loads(line)
            paths = tuple(Path(p) for p in order["paths"])
            images = ImageSet(order["label"], tuple(p.read_bytes() for p in paths), paths, ())
            m = run_loop(model, predictors, images, setup, order["requests"], order["warmup"])
            print(RESULT_MARK + json.dumps({"ok": m.ok, "seconds": m.seconds, "latencies": list(m.latencies),
                                            "errors": dict(m.errors)}), flush=True)
    finally:
        for predictor in predictors:
            predictor.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one plain set-up, measured in rounds ordered on stdin")
    for name in ("model_dir", "setup", "device"):
        parser.add_argument(name)
    args = parser.parse_args(argv)
    serve_rounds(Path(args.model_dir), PlainSetup.parse(args.setup), args.device)


if __name__ == "__main__":
    main()
