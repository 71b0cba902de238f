"""The Detector gRPC service: validate, pick the model, resolve thresholds, run, answer.

Errors below this layer are `SoddError`s carrying their status code; this is the one place that
turns them into gRPC statuses, and the one place that catches the unexpected so a bad request or a
failing backend never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import numpy as np

from sodd import pipeline
from sodd.config import ServeConfig
from sodd.errors import InvalidArgument, NotFound, SoddError
from sodd.manager import ModelManager
from sodd.model.decode import decode_encoded, decode_raw
from sodd.model.postprocess import Box, Threshold, finish, resolve_threshold
from sodd.model.slicing import SliceOptions, crops_for, merge_crop_rows
from sodd.registry import ModelEvent, ModelRegistry, ModelState, ServedModel, VersionStatus
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
WATCH_QUEUE_LIMIT = 1000
SLICING_FIELDS = ("slice_height", "slice_width", "overlap_height_ratio", "overlap_width_ratio", "full_image",
                  "merge", "match_metric", "match_threshold", "class_agnostic", "auto")
STATE_MESSAGES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.DRAINING: pb.MODEL_STATE_DRAINING,
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
}


def request_threshold(request: pb.DetectRequest | pb.DetectBatchRequest,
                      labels: tuple[str, ...]) -> Threshold | None:
    kind = request.WhichOneof("threshold_spec")
    if kind == "threshold":
        value = request.threshold
        if math.isnan(value) or not 0 <= value <= 1:
            raise InvalidArgument(f"threshold must be a number in [0, 1], got {value}")
        return float(value)
    if kind == "class_thresholds":
        out: dict[int, float] = {}
        for cls_id, value in request.class_thresholds.thresholds.items():
            if not 0 <= cls_id < len(labels):
                raise InvalidArgument(f"class_thresholds: class id {cls_id} is outside the model's "
                                      f"{len(labels)} labels (0..{len(labels) - 1})")
            if math.isnan(value) or not 0 <= value <= 1:
                raise InvalidArgument(f"class_thresholds[{cls_id}] must be in [0, 1], got {value}")
            out[cls_id] = float(value)
        return out
    return None


def decode_image(image: pb.Image, max_pixels: int, field: str) -> np.ndarray:
    kind = image.WhichOneof("source")
    if kind == "encoded":
        return decode_encoded(image.encoded, max_pixels, f"{field}.encoded")
    if kind == "raw":
        raw = image.raw
        return decode_raw(raw.height, raw.width, raw.channels, raw.data, max_pixels, f"{field}.raw")
    raise InvalidArgument(f"{field} is missing: set {field}.encoded or {field}.raw")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the monotonic clock the engine uses, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def box_message(box: Box) -> pb.Box:
    return pb.Box(cls_id=box.cls_id, label=box.label, score=box.score,
                  xmin=box.xmin, ymin=box.ymin, xmax=box.xmax, ymax=box.ymax)


def model_info(served: ServedModel, is_default: bool, threshold: float) -> pb.ModelInfo:
    size = served.model_dir.input_size or (0, 0)
    return pb.ModelInfo(
        name=served.name, version=served.version, directory=str(served.model_dir.path),
        model_name=served.model_dir.model_name, labels=list(served.model_dir.label_list),
        input_height=size[0], input_width=size[1], device=served.device,
        state=pb.MODEL_STATE_READY, state_reason=served.notes, is_default=is_default,
        max_batch_size=served.config.max_batch_size, default_threshold=threshold,
        program_format=served.model_dir.program_format,
    )


def device_listing(registry: ModelRegistry) -> pb.ListDevicesResponse:
    """Every plugin's probe; a plugin whose probe raises is listed with the error, not hidden."""
    plugins = []
    for name, plugin in sorted(registry.plugins.items()):
        info = pb.PluginInfo(name=name, device_types=list(plugin.device_types))
        try:
            for device in plugin.probe():
                info.devices.append(pb.DeviceInfo(device=device.device, available=device.available,
                                                  reason=device.reason, facts=dict(device.facts)))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the listing
            info.error = f"probe failed: {type(exc).__name__}: {exc}"
        plugins.append(info)
    plugins.extend(pb.PluginInfo(name=p.name, error=p.reason) for p in registry.plugin_problems)
    return pb.ListDevicesResponse(plugins=plugins)


def _offer(queue: asyncio.Queue, event: ModelEvent) -> None:
    # A watcher that does not read loses the oldest events rather than growing the daemon's memory.
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


class DetectorService(pb_grpc.DetectorServicer):
    def __init__(self, config: ServeConfig, registry: ModelRegistry, manager: ModelManager) -> None:
        self._config = config
        self._registry = registry
        self._manager = manager
        self._open_streams = 0
        self._workers = ThreadPoolExecutor(config.preprocess_workers, thread_name_prefix="prep")

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)
        return result, time.perf_counter() - started

    async def _detect_images(self, served: ServedModel, images: Sequence[pb.Image], fields: Sequence[str],
                             threshold: Threshold, max_detections: int, request_id: str,
                             deadline: float | None = None, slicing: SliceOptions | None = None,
                             ) -> list[pb.DetectResponse]:
        model_dir = served.model_dir
        decoded, decode_s = await self._in_worker(
            lambda: [decode_image(img, self._config.max_pixels, f) for img, f in zip(images, fields, strict=True)])
        # Each image becomes one network input, or its windows (+ the whole image) when slicing.
        started = time.perf_counter()
        plans = [crops_for(image, slicing, model_dir.input_size) if slicing else ([], [image]) for image in decoded]
        slicing_s = time.perf_counter() - started if slicing else 0.0
        inputs = [crop for _, crops in plans for crop in crops]
        with served.runner.admission(len(inputs)):
            prepared, preprocess_s = await self._in_worker(pipeline.prepare_images, model_dir, inputs)
            results = await served.runner.run_images(prepared, deadline)
        responses, at = [], 0
        for image, (windows, crops) in zip(decoded, plans, strict=True):
            mine, at = results[at:at + len(crops)], at + len(crops)
            merge_start = time.perf_counter()
            rows = merge_crop_rows([r.rows for r in mine], windows, slicing, threshold) if slicing else mine[0].rows
            merging_s = time.perf_counter() - merge_start if slicing else 0.0
            post_start = time.perf_counter()
            height, width = image.shape[:2]
            boxes = finish(rows, threshold, model_dir.label_list, width, height, max_detections)
            responses.append(pb.DetectResponse(
                request_id=request_id, boxes=[box_message(b) for b in boxes], image_width=width,
                image_height=height, model=served.name, version=served.version, device=served.device,
                slices=len(crops),
                timings=pb.StageTimings(
                    decode_seconds=decode_s, preprocess_seconds=preprocess_s,
                    queue_seconds=max(r.queue_seconds for r in mine),
                    inference_seconds=sum(r.inference_seconds for r in mine) if slicing else mine[0].inference_seconds,
                    postprocess_seconds=time.perf_counter() - post_start, batch_size=mine[0].batch_size,
                    slicing_seconds=slicing_s, merging_seconds=merging_s,
                ),
            ))
        return responses

    def _slicing(self, served: ServedModel, request: pb.DetectRequest | pb.DetectBatchRequest) -> SliceOptions | None:
        """The request's slicing over the model's default; None runs the image whole."""
        default = served.config.slicing
        if not request.HasField("slicing"):
            return default
        message = request.slicing
        if message.HasField("enabled") and not message.enabled:
            return None
        given = {f: getattr(message, f) for f in SLICING_FIELDS if message.HasField(f)}
        # Without a default, the daemon picks the window size unless the request gives one.
        options = dataclasses.asdict(default) if default else {"auto": True}
        if {"slice_height", "slice_width"} & given.keys() and "auto" not in given:
            options["auto"] = False
        if given.get("auto"):
            options.update(slice_height=0, slice_width=0)
        options.update(given)
        return SliceOptions(**options)

    def _resolve(self, served: ServedModel, request: pb.DetectRequest | pb.DetectBatchRequest) -> Threshold:
        return resolve_threshold(request_threshold(request, served.model_dir.label_list),
                                 served.config.threshold, served.model_dir.draw_threshold)

    async def _guard(self, context: grpc.aio.ServicerContext, work: Awaitable[T], what: str, request_id: str) -> T:
        try:
            return await work
        except SoddError as exc:
            log.debug("%s request_id=%s code=%s: %s", what, request_id, exc.code.name, exc.message)
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing backend must not take the daemon down
            log.exception("%s request_id=%s failed", what, request_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    async def _detect_one(self, request: pb.DetectRequest, request_id: str,
                          deadline: float | None) -> pb.DetectResponse:
        with self._registry.lease(request.model, request.version) as served:
            threshold = self._resolve(served, request)
            (response,) = await self._detect_images(served, [request.image], ["image"], threshold,
                                                    request.max_detections, request_id, deadline,
                                                    self._slicing(served, request))
        return response

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        request_id = request.request_id or uuid.uuid4().hex
        return await self._guard(context, self._detect_one(request, request_id, deadline_of(context)),
                                 "Detect", request_id)

    async def _stream_frame(self, request: pb.DetectRequest, deadline: float | None) -> pb.DetectStreamResponse:
        request_id = request.request_id or uuid.uuid4().hex
        try:
            response = await self._detect_one(request, request_id, deadline)
        except SoddError as exc:
            log.debug("DetectStream request_id=%s code=%s: %s", request_id, exc.code.name, exc.message)
            return pb.DetectStreamResponse(request_id=request_id,
                                           error=pb.FrameError(code=exc.code.value[0], message=exc.message))
        except Exception as exc:  # noqa: BLE001 - one bad frame must not end the stream
            log.exception("DetectStream request_id=%s failed", request_id)
            return pb.DetectStreamResponse(request_id=request_id, error=pb.FrameError(
                code=grpc.StatusCode.INTERNAL.value[0], message=f"{type(exc).__name__}: {exc}"))
        return pb.DetectStreamResponse(request_id=request_id, response=response)

    async def DetectStream(self, request_iterator: AsyncIterator[pb.DetectRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectStreamResponse]:
        """Frames run concurrently, answers go out in order; at most max_stream_frames are held."""
        if self._open_streams >= self._config.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self._open_streams} streams are open, the limit is {self._config.max_streams}")
        self._open_streams += 1
        try:
            async for answer in self._stream(request_iterator, context):
                yield answer
        finally:
            self._open_streams -= 1

    async def _stream(self, request_iterator: AsyncIterator[pb.DetectRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectStreamResponse]:
        room = asyncio.Semaphore(self._config.max_stream_frames)
        in_order: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
        deadline = deadline_of(context)

        async def read() -> None:
            frames = aiter(request_iterator)
            try:
                while True:
                    await room.acquire()  # read the next frame only when there is room for it
                    try:
                        request = await anext(frames)
                    except StopAsyncIteration:
                        return
                    in_order.put_nowait(asyncio.create_task(self._stream_frame(request, deadline)))
            finally:
                in_order.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await in_order.get()) is not None:
                yield await task
                room.release()
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not in_order.empty():
                task = in_order.get_nowait()
                if task is not None:
                    task.cancel()

    async def DetectBatch(self, request: pb.DetectBatchRequest,
                          context: grpc.aio.ServicerContext) -> pb.DetectBatchResponse:
        request_id = request.request_id or uuid.uuid4().hex

        async def work() -> pb.DetectBatchResponse:
            with self._registry.lease(request.model, request.version) as served:
                threshold = self._resolve(served, request)
                if not request.images:
                    raise InvalidArgument("images is empty: send at least one image")
                if len(request.images) > self._config.max_request_images:
                    raise InvalidArgument(f"images holds {len(request.images)} images; the limit is "
                                          f"{self._config.max_request_images} per DetectBatch")
                fields = [f"images[{i}]" for i in range(len(request.images))]
                results = await self._detect_images(served, request.images, fields, threshold,
                                                    request.max_detections, request_id, deadline_of(context),
                                                    self._slicing(served, request))
            return pb.DetectBatchResponse(request_id=request_id, results=results)

        return await self._guard(context, work(), "DetectBatch", request_id)

    def _info(self, served: ServedModel) -> pb.ModelInfo:
        threshold = resolve_threshold(None, served.config.threshold, served.model_dir.draw_threshold)
        info = model_info(served, served.name == self._registry.default_name, float(threshold))
        status = self._registry.statuses().get(served.name, {}).get(served.version)
        if status is not None and status.state is ModelState.FAILED:
            # Changed files of a serving version failed to load: the old files still answer.
            info.state_reason = "; ".join(filter(None, [
                served.notes, f"serving the files loaded before; the changed files failed: {status.reason}"]))
        return info

    def _status_info(self, name: str, version: int, status: VersionStatus) -> pb.ModelInfo:
        """A version that does not serve (loading, failed, draining): what is known of it."""
        return pb.ModelInfo(name=name, version=version, directory=str(status.path or ""),
                            state=STATE_MESSAGES[status.state], state_reason=status.reason,
                            is_default=name == self._registry.default_name)

    def _all_infos(self, name: str | None = None) -> list[pb.ModelInfo]:
        serving = {(m.name, m.version): m for m in self._registry.models() if name in (None, m.name)}
        infos = [self._info(m) for _, m in sorted(serving.items())]
        for model, versions in sorted(self._registry.statuses().items()):
            for version, status in sorted(versions.items()):
                if name in (None, model) and (model, version) not in serving \
                        and status.state is not ModelState.UNLOADED:
                    infos.append(self._status_info(model, version, status))
        return infos

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self._all_infos())

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async def work() -> pb.ModelInfo:
            try:
                return self._info(self._registry.get(request.name, request.version))
            except NotFound:
                # Not serving, but a failed or loading version still has something to say.
                name = request.name or self._registry.default_name or ""
                status = self._registry.statuses().get(name, {})
                version = request.version or max(status, default=0)
                if version in status:
                    return self._status_info(name, version, status[version])
                raise

        return await self._guard(context, work(), "GetModel", "")

    async def LoadModel(self, request: pb.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> pb.LoadModelResponse:
        async def work() -> pb.LoadModelResponse:
            if not request.name:
                raise InvalidArgument("name is empty: say which model to load")
            await self._manager.load_model(request.name, request.version)
            return pb.LoadModelResponse(versions=[self._info(m) for m in
                                                  sorted(self._registry.versions(request.name).values(),
                                                         key=lambda m: m.version)])

        return await self._guard(context, work(), "LoadModel", "")

    async def UnloadModel(self, request: pb.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        async def work() -> pb.UnloadModelResponse:
            if not request.name:
                raise InvalidArgument("name is empty: say which model to unload")
            await self._manager.unload_model(request.name, request.version)
            return pb.UnloadModelResponse()

        return await self._guard(context, work(), "UnloadModel", "")

    async def WatchModels(self, request: pb.WatchModelsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ModelEvent] = asyncio.Queue(maxsize=WATCH_QUEUE_LIMIT)

        def listener(event: ModelEvent) -> None:
            if not request.name or event.name == request.name:
                loop.call_soon_threadsafe(_offer, queue, event)

        self._registry.add_listener(listener)
        try:
            # The current state first, so a watcher never misses what happened before it came.
            for info in self._all_infos(request.name or None):
                yield pb.ModelEvent(name=info.name, version=info.version, state=info.state,
                                    reason=info.state_reason, device=info.device, time_unix=time.time())
            while True:
                event = await queue.get()
                yield pb.ModelEvent(name=event.name, version=event.version, state=STATE_MESSAGES[event.state],
                                    reason=event.reason, device=event.device, time_unix=event.time)
        finally:
            self._registry.remove_listener(listener)

    async def ListDevices(self, request: pb.ListDevicesRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListDevicesResponse:
        async def work() -> pb.ListDevicesResponse:
            return await asyncio.to_thread(device_listing, self._registry)

        return await self._guard(context, work(), "ListDevices", "")

    def close(self) -> None:
        self._workers.shutdown(wait=True)
