"""The detection core: images and options in, typed detections out. Every caller uses it.

The gRPC servicer, the in-process API (`sodd.runtime.local`), evaluation and the benchmarks all run a
request through `Detector.detect` (or `detect_sync`), so limits, slicing and PaddleX parity hold
the same way everywhere. One request goes:

1. lease the model version (once; a swap never changes it under the request);
2. measure: each image's size from its header (no pixel decoded), the network runs it needs
   (its slicing windows, counted arithmetically), the request's total pixels; refuse what can
   never fit the configured limits with INVALID_ARGUMENT naming the limit;
3. admit: take places for every network run in the model's budget, or RESOURCE_EXHAUSTED (a
   retry can succeed, since the request fits on its own);
4. prepare, on a worker thread: decode one image at a time, cut its windows as views, preprocess,
   and drop the decoded pixels;
5. infer on the model's engine (`sodd.runtime.engine`), which the event loop only awaits;
6. finish, on the inference thread that ran the last image (a sliced request, whose merging can be
   long, on a worker thread): merge windows, threshold, clip, label, into `Detections`, and tell the
   observer what ran (`sodd.observability.reports`), there, before the caller has its answer.

Nothing here knows gRPC or protobuf: the servicer converts at the edge, once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np

from sodd.errors import InvalidArgument
from sodd.model.decode import check_pixels, check_raw, decode_encoded, to_bgr
from sodd.model.imageinfo import ImageHeader, read_header
from sodd.model.postprocess import Box, Threshold, finish, resolve_threshold
from sodd.model.preprocess import Prepared, prepare
from sodd.model.slicing import MAX_SLICES, SliceOptions, crop_count, crops_for, merge_crop_rows
from sodd.observability.reports import DetectionObserver, DetectionReport, ImageReport
from sodd.runtime.engine import Admission, ImageResult
from sodd.runtime.heap import HeapTrimmer
from sodd.runtime.registry import ModelRegistry, ServedModel

T = TypeVar("T")
log = logging.getLogger(__name__)
# After a request that carried this many bytes or pixels, give the freed heap back to the OS:
# glibc keeps freed buffers in its heap, so a burst of big (even refused) requests would otherwise
# leave the daemon at its peak resident size.
TRIM_AFTER_BYTES = 4 * 1024 * 1024
TRIM_AFTER_PIXELS = 8_000_000
SLICING_FIELDS = ("slice_height", "slice_width", "overlap_height_ratio", "overlap_width_ratio", "full_image",
                  "merge", "match_metric", "match_threshold", "class_agnostic", "auto")


@dataclass(frozen=True)
class RawImage:
    """Uncompressed pixels: height x width x channels bytes, BGR(A) or grey."""

    height: int
    width: int
    channels: int
    data: bytes


# Encoded file bytes, raw pixels, or an already decoded BGR array (in-process callers).
ImageData = bytes | RawImage | np.ndarray


@dataclass(frozen=True)
class ImageInput:
    data: ImageData | None  # None: the caller sent no image, which the core refuses
    field: str = "image"  # how errors name this image: "image", "images[3]"


@dataclass(frozen=True)
class SlicingRequest:
    """The slicing fields a request set, laid over the model's default slicing."""

    enabled: bool | None = None  # False: whole images even where the model slices by default
    given: Mapping[str, object] = field(default_factory=dict)

    def resolve(self, default: SliceOptions | None) -> SliceOptions | None:
        if self.enabled is False:
            return None
        unknown = set(self.given) - set(SLICING_FIELDS)
        if unknown:
            raise InvalidArgument(f"slicing has no field {sorted(unknown)[0]!r}")
        # Without a default, the daemon picks the window size unless the request gives one.
        options: dict[str, object] = asdict(default) if default else {"auto": True}
        if {"slice_height", "slice_width"} & self.given.keys() and "auto" not in self.given:
            options["auto"] = False
        if self.given.get("auto"):
            options.update(slice_height=0, slice_width=0)
        options.update(self.given)
        return SliceOptions(**options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DetectOptions:
    threshold: Threshold | None = None  # None: the daemon's, then the model's draw_threshold
    max_detections: int = 0  # 0 keeps every box
    slicing: SlicingRequest | None = None  # None: the model's default slicing
    deadline: float | None = None  # time.monotonic() deadline


@dataclass(frozen=True)
class Limits:
    """What one request may cost; checked from headers before anything is decoded."""

    max_image_pixels: int = 50_000_000
    max_request_pixels: int = 200_000_000
    max_request_images: int = 64


@dataclass(frozen=True)
class StageTimes:
    decode: float = 0.0  # per request: all images together
    preprocess: float = 0.0  # per request
    queue: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    slicing: float = 0.0
    merging: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class Detections:
    """One image's boxes as PaddleX returns them, in score order (per class for class thresholds)."""

    boxes: np.ndarray  # [n, 4] float32 xmin, ymin, xmax, ymax in original pixels
    scores: np.ndarray  # [n] float32
    class_ids: np.ndarray  # [n] int32
    labels: tuple[str, ...]  # n label names
    image_width: int
    image_height: int
    slices: int  # network runs: 1, or the windows (plus the whole image) when sliced
    timings: StageTimes = StageTimes()

    @classmethod
    def of(cls, boxes: Sequence[Box], width: int, height: int, slices: int, timings: StageTimes) -> Detections:
        coords = np.array([b.coordinate for b in boxes], dtype=np.float32).reshape(-1, 4)
        return cls(coords, np.array([b.score for b in boxes], dtype=np.float32),
                   np.array([b.cls_id for b in boxes], dtype=np.int32), tuple(b.label for b in boxes),
                   width, height, slices, timings)

    def __len__(self) -> int:
        return len(self.labels)

    def to_boxes(self) -> list[Box]:
        return [Box(int(c), label, float(s), *(float(v) for v in xyxy))
                for c, label, s, xyxy in zip(self.class_ids, self.labels, self.scores, self.boxes, strict=True)]


@dataclass(frozen=True)
class DetectResult:
    request_id: str
    model: str
    version: int
    device: str
    images: list[Detections]


def report_of(result: DetectResult) -> DetectionReport:
    """What an observer is told of an answered request."""
    first = result.images[0].timings if result.images else StageTimes()
    return DetectionReport(
        result.model, result.version, result.device, decode=first.decode, preprocess=first.preprocess,
        images=tuple(ImageReport(detections=len(d), pixels=d.image_width * d.image_height, slices=d.slices,
                                 queue=d.timings.queue, inference=d.timings.inference,
                                 postprocess=d.timings.postprocess, slicing=d.timings.slicing,
                                 merging=d.timings.merging) for d in result.images))


@dataclass
class _Plan:
    """A request between admission and its answer."""

    served: ServedModel
    threshold: Threshold
    slicing: SliceOptions | None
    runs: list[int]  # network runs per image
    pixels: int
    admission: Admission
    prepared: list[Prepared] = field(default_factory=list)
    windows: list[list[tuple[int, int, int, int]]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # decoded (width, height)
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    slicing_s: list[float] = field(default_factory=list)
    headers: list[ImageHeader | None] = field(default_factory=list)  # of encoded images, read at admission


def check_threshold(threshold: Threshold | None, labels: tuple[str, ...]) -> None:
    if threshold is None:
        return
    if isinstance(threshold, Mapping):
        for cls_id, value in threshold.items():
            if not 0 <= cls_id < len(labels):
                raise InvalidArgument(f"class_thresholds: class id {cls_id} is outside the model's "
                                      f"{len(labels)} labels (0..{len(labels) - 1})")
            if math.isnan(value) or not 0 <= value <= 1:
                raise InvalidArgument(f"class_thresholds[{cls_id}] must be in [0, 1], got {value}")
        return
    if math.isnan(threshold) or not 0 <= threshold <= 1:
        raise InvalidArgument(f"threshold must be a number in [0, 1], got {threshold}")


def _measure(image: ImageInput, limits: Limits) -> tuple[int, int, ImageHeader | None]:
    """(width, height) without decoding, and the header an encoded image will be decoded with."""
    data, field_name = image.data, image.field
    if isinstance(data, bytes | bytearray | memoryview):
        header = read_header(bytes(data) if not isinstance(data, bytes) else data, f"{field_name}.encoded")
        check_pixels(header.width, header.height, limits.max_image_pixels, f"{field_name}.encoded")
        return header.width, header.height, header
    if isinstance(data, RawImage):
        check_raw(data.height, data.width, data.channels, len(data.data), limits.max_image_pixels,
                  f"{field_name}.raw")
        return data.width, data.height, None
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (1, 3, 4)):
            raise InvalidArgument(f"{field_name}: expected a uint8 array of HxW or HxWxC (C 1, 3 or 4) BGR pixels, "
                                  f"got {data.dtype} of shape {list(data.shape)}")
        if 0 in data.shape[:2]:
            raise InvalidArgument(f"{field_name}: the array is empty ({data.shape[1]}x{data.shape[0]})")
        check_pixels(data.shape[1], data.shape[0], limits.max_image_pixels, field_name)
        return data.shape[1], data.shape[0], None
    raise InvalidArgument(f"{field_name} is missing: set {field_name}.encoded or {field_name}.raw")


def _decode(image: ImageInput, header: ImageHeader | None, limits: Limits) -> np.ndarray:
    data = image.data
    if isinstance(data, RawImage):  # `_measure` checked it
        return to_bgr(np.frombuffer(data.data, np.uint8).reshape(data.height, data.width, data.channels))
    if isinstance(data, np.ndarray):
        return to_bgr(data)
    return decode_encoded(bytes(data), limits.max_image_pixels, f"{image.field}.encoded", header)


class Detector:
    """Runs requests on the models of a registry, within `limits`, preparing on `workers` (needed
    by the asynchronous `detect` only). Each answered request is reported to `observer`."""

    def __init__(self, registry: ModelRegistry, limits: Limits, workers: Executor | None,
                 trimmer: HeapTrimmer | None = None, observer: DetectionObserver | None = None) -> None:
        self.registry = registry
        self.limits = limits
        self._workers = workers
        self._trimmer = trimmer
        self._observer = observer

    # -- the two entry points ------------------------------------------------------------------

    async def detect(self, model: str, version: int, images: Sequence[ImageInput], options: DetectOptions,
                     request_id: str, answer: Callable[[DetectResult], T] | None = None) -> DetectResult | T:
        """For the event loop: every step that touches pixels runs on a worker thread.

        The loop hands the request off once and is woken once: a worker admits and prepares it and
        gives it to the engine; the inference thread that runs its last image finishes it (sliced
        requests, whose merging can be long, go back to a worker) and applies `answer` (the servicer
        builds its protobuf there). Each hand-off between threads cost a wake-up and a GIL
        hand-over; on a light model the old four round trips through the loop were measurable.
        """
        if self._workers is None:
            raise RuntimeError("this Detector has no worker threads: call detect_sync")
        try:
            with self.registry.lease(model, version) as served:
                flight = _Flight(served, images, options, request_id, answer)
                self._workers.submit(self._start, flight)
                try:
                    return await asyncio.wrap_future(flight.done)
                except asyncio.CancelledError:
                    flight.withdraw()  # queued images are dropped; the places come back when all are done
                    raise
        finally:
            self._note_size(images)

    def detect_sync(self, model: str, version: int, images: Sequence[ImageInput], options: DetectOptions,
                    request_id: str = "") -> DetectResult:
        """For threads (tools, the in-process API): the same steps, on the calling thread."""
        with self.registry.lease(model, version) as served:
            plan = self._admit_and_prepare(served, images, options)
            try:
                results = served.runner.run_images_sync(plan.prepared, options.deadline)
                plan.prepared = []
                detections = self._finish(plan, options, results)
            finally:
                plan.admission.release()
        result = DetectResult(request_id, served.name, served.version, served.device, detections)
        self._report(result)
        return result

    # -- the asynchronous path's steps, off the loop ------------------------------------------

    def _start(self, flight: _Flight) -> None:
        """On a worker: admit, prepare and hand the network inputs to the engine."""
        try:
            plan = self._admit_and_prepare(flight.served, flight.images, flight.options)
        except BaseException as exc:  # noqa: BLE001 - the request's error, answered to its caller
            flight.fail(exc)
            return
        flight.images = ()  # the request's bytes are no longer needed here
        if flight.done.cancelled():  # the caller went away while this worker prepared
            plan.admission.release()
            return
        try:
            futures = plan.served.runner.submit(plan.prepared, flight.options.deadline)
        except BaseException as exc:  # noqa: BLE001 - a full queue or an unloading model
            plan.admission.release()
            flight.fail(exc)
            return
        plan.prepared = []  # the engine's jobs hold the network inputs now
        flight.plan = plan
        flight.attach(futures, self._engine_done)

    def _engine_done(self, flight: _Flight) -> None:
        """Every image of the request has left the engine (on the thread of the last one)."""
        plan = flight.plan
        assert plan is not None
        failure = next((f for f in flight.futures if f.cancelled() or f.exception() is not None), None)
        if failure is not None:
            plan.admission.release()
            flight.fail(failure.exception() if not failure.cancelled() else CancelledError())
            return
        if plan.slicing is not None and self._workers is not None:
            try:  # merging many windows must not hold up an inference thread
                self._workers.submit(self._complete, flight)
                return
            except RuntimeError:  # the pool is shutting down: finish here
                pass
        self._complete(flight)

    def _complete(self, flight: _Flight) -> None:
        plan = flight.plan
        assert plan is not None
        try:
            detections = self._finish(plan, flight.options, [f.result() for f in flight.futures])
            served = plan.served
            result = DetectResult(flight.request_id, served.name, served.version, served.device, detections)
            answer = flight.answer(result) if flight.answer is not None else result
        except BaseException as exc:  # noqa: BLE001 - answered to the caller
            plan.admission.release()
            flight.fail(exc)
            return
        # The places go back before the answer does: a client that sends its next request as soon
        # as it has this answer must find them free (at max_pending it was refused otherwise).
        plan.admission.release()
        if not flight.done.cancelled():  # nobody will have the answer: the caller counts a cancellation
            self._report(result)
        flight.succeed(answer)

    def _report(self, result: DetectResult) -> None:
        if self._observer is None:
            return
        try:
            self._observer.detected(report_of(result))
        except Exception:  # an observer's bug must not turn an answer into an error
            log.exception("reporting request %s to the observer failed", result.request_id)

    # -- steps ---------------------------------------------------------------------------------

    def _admit_and_prepare(self, served: ServedModel, images: Sequence[ImageInput], options: DetectOptions) -> _Plan:
        plan = self._admit(served, images, options)
        try:
            self._prepare(plan, images)
        except BaseException:
            plan.admission.release()
            raise
        return plan

    def _admit(self, served: ServedModel, images: Sequence[ImageInput], options: DetectOptions) -> _Plan:
        """Steps 2 and 3: the request's cost from headers, checked against every limit."""
        limits, model_dir = self.limits, served.model_dir
        if not images:
            raise InvalidArgument("images is empty: send at least one image")
        if len(images) > limits.max_request_images:
            raise InvalidArgument(f"images holds {len(images)} images; the limit is {limits.max_request_images} "
                                  "per request (max_request_images)")
        check_threshold(options.threshold, model_dir.label_list)
        if options.max_detections < 0:
            raise InvalidArgument(f"max_detections must be >= 0, got {options.max_detections}")
        slicing = options.slicing.resolve(served.config.slicing) \
            if options.slicing is not None else served.config.slicing
        sizes = [_measure(image, limits) for image in images]
        runs = [crop_count(w, h, slicing, model_dir.input_size) if slicing else 1 for w, h, _ in sizes]
        for image, count in zip(images, runs, strict=True):
            if slicing and count - int(slicing.full_image) > MAX_SLICES:
                # plan_slices says the same with the window size; count it here, before decoding.
                raise InvalidArgument(f"slicing {image.field} takes {count} network runs; at most {MAX_SLICES} "
                                      "windows per image are allowed, use larger slices")
        pixels = sum(w * h for w, h, _ in sizes)
        if pixels > limits.max_request_pixels:
            raise InvalidArgument(f"the request's images hold {pixels / 1e6:.1f} megapixels; at most "
                                  f"{limits.max_request_pixels / 1e6:g} are allowed per request "
                                  "(max_request_megapixels)")
        total = sum(runs)
        if total > served.runner.max_pending:
            raise InvalidArgument(f"the request needs {total} network runs; a model holds at most "
                                  f"{served.runner.max_pending} (max_pending): send fewer images or larger slices")
        threshold = resolve_threshold(options.threshold, served.config.threshold, model_dir.draw_threshold)
        plan = _Plan(served, threshold, slicing, runs, pixels, served.runner.admit(total))
        plan.windows = [[] for _ in images]
        plan.headers = [h for _, _, h in sizes]
        return plan

    def _prepare(self, plan: _Plan, images: Sequence[ImageInput]) -> None:
        """Step 4: decode, cut and preprocess one image at a time, keeping only network inputs."""
        model_dir, slicing = plan.served.model_dir, plan.slicing
        for index, (image, header) in enumerate(zip(images, plan.headers, strict=True)):
            started = time.perf_counter()
            pixels = _decode(image, header, self.limits)
            plan.decode_s += time.perf_counter() - started
            height, width = pixels.shape[:2]
            plan.sizes.append((width, height))
            started = time.perf_counter()
            if slicing is not None:
                windows, crops = crops_for(pixels, slicing, model_dir.input_size)
                plan.windows[index] = windows
            else:
                crops = [pixels]
            sliced_at = time.perf_counter()
            plan.slicing_s.append(sliced_at - started if slicing else 0.0)
            plan.prepared.extend(prepare(crop, model_dir.preprocess) for crop in crops)
            plan.preprocess_s += time.perf_counter() - sliced_at
            del pixels, crops

    def _finish(self, plan: _Plan, options: DetectOptions, results: list[ImageResult]) -> list[Detections]:
        """Step 6: each image's rows merged (when sliced), thresholded, clipped and labelled."""
        labels = plan.served.model_dir.label_list
        out, at = [], 0
        for index, (width, height) in enumerate(plan.sizes):
            mine, at = results[at:at + plan.runs[index]], at + plan.runs[index]
            merging_s = 0.0
            if plan.slicing is not None:
                started = time.perf_counter()
                rows = merge_crop_rows([r.rows for r in mine], plan.windows[index], plan.slicing, plan.threshold)
                merging_s = time.perf_counter() - started
            else:
                rows = mine[0].rows
            started = time.perf_counter()
            boxes = finish(rows, plan.threshold, labels, width, height, options.max_detections)
            timings = StageTimes(
                decode=plan.decode_s, preprocess=plan.preprocess_s, queue=max(r.queue_seconds for r in mine),
                inference=sum(r.inference_seconds for r in mine) if plan.slicing else mine[0].inference_seconds,
                postprocess=time.perf_counter() - started, slicing=plan.slicing_s[index], merging=merging_s,
                batch_size=mine[0].batch_size)
            out.append(Detections.of(boxes, width, height, len(mine), timings))
        if self._trimmer is not None and (plan.pixels >= TRIM_AFTER_PIXELS or plan.slicing is not None):
            self._trimmer.note_large_request()
        return out

    def _note_size(self, images: Sequence[ImageInput]) -> None:
        """Large messages are freed in small pieces after the call: have the heap trimmed then."""
        if self._trimmer is None:
            return
        size = sum(len(i.data.data) if isinstance(i.data, RawImage) else
                   len(i.data) if isinstance(i.data, bytes) else 0 for i in images)
        if size >= TRIM_AFTER_BYTES:
            self._trimmer.note_large_request()


class _Flight:
    """One asynchronous request from its hand-off to a worker to its answer; `done` completes once."""

    def __init__(self, served: ServedModel, images: Sequence[ImageInput], options: DetectOptions,
                 request_id: str, answer: Callable[[DetectResult], object] | None) -> None:
        self.served = served
        self.images = images
        self.options = options
        self.request_id = request_id
        self.answer = answer
        self.done: Future = Future()
        self.plan: _Plan | None = None
        self.futures: list[Future] = []
        self._lock = threading.Lock()
        self._withdrawn = False
        self._waiting = 0

    def attach(self, futures: list[Future], on_done: Callable[[_Flight], None]) -> None:
        """Call `on_done` once every engine future is done; withdraw them if the caller has gone."""
        with self._lock:
            self.futures, self._waiting = futures, len(futures)
            withdrawn = self._withdrawn
        for future in futures:
            future.add_done_callback(lambda _f: self._one_done(on_done))
        if withdrawn:
            self._cancel_engine()

    def _one_done(self, on_done: Callable[[_Flight], None]) -> None:
        with self._lock:
            self._waiting -= 1
            last = self._waiting == 0
        if last:
            on_done(self)
        elif not self.done.done():
            # A failed image answers the request at once; the rest are withdrawn (a running one ends).
            failed = [f for f in self.futures if f.done() and (f.cancelled() or f.exception() is not None)]
            if failed:
                self._cancel_engine()

    def withdraw(self) -> None:
        """The caller was cancelled: images not yet run are dropped; a worker still preparing gives
        its places back when it sees the request has gone (`fail` on a cancelled `done`)."""
        with self._lock:
            self._withdrawn = True
        self.done.cancel()
        self._cancel_engine()

    def _cancel_engine(self) -> None:
        for future in self.futures:
            future.cancel()

    def succeed(self, value: object) -> None:
        self._settle(lambda: self.done.set_result(value))

    def fail(self, exc: BaseException) -> None:
        self._settle(lambda: self.done.set_exception(exc))

    def _settle(self, settle: Callable[[], None]) -> None:
        # What the request held is no longer needed; dropping it here keeps a failed request's
        # images from living on in its exception's traceback.
        self.images, self.plan, self.futures = (), None, []
        if self.done.set_running_or_notify_cancel():  # False: cancelled by the caller, nobody waits
            settle()
