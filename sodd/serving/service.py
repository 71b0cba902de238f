"""The Detector gRPC service: validate, pick the model, resolve thresholds, run, answer.

Errors below this layer are `SoddError`s carrying their status code; this is the one place that
turns them into gRPC statuses, and the one place that catches the unexpected so a bad request or a
failing backend never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from sodd.config.schema import ServeConfig
from sodd.errors import InvalidArgument, NotFound, PermissionDenied, SoddError
from sodd.model.names import check_name
from sodd.model.postprocess import Threshold, resolve_threshold
from sodd.observability.logs import quote
from sodd.observability.reports import DetectionObserver
from sodd.runtime.detection import (
    SLICING_FIELDS,
    Detections,
    DetectOptions,
    Detector,
    DetectResult,
    ImageInput,
    Limits,
    RawImage,
    SlicingRequest,
)
from sodd.runtime.heap import HeapTrimmer
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelEvent, ModelRegistry, ModelState, ServedModel, VersionStatus
from sodd.serving.auth import caller_rights
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
WATCH_QUEUE_LIMIT = 1000
REQUEST_ID_LIMIT = 128
STATE_MESSAGES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.DRAINING: pb.MODEL_STATE_DRAINING,
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
}


def request_threshold(request: pb.DetectRequest | pb.DetectBatchRequest) -> Threshold | None:
    """The request's threshold as sent; the detection core checks it against the model's labels."""
    kind = request.WhichOneof("threshold_spec")
    if kind == "threshold":
        return float(request.threshold)
    if kind == "class_thresholds":
        return {int(k): float(v) for k, v in request.class_thresholds.thresholds.items()}
    return None


def image_input(image: pb.Image, field: str) -> ImageInput:
    kind = image.WhichOneof("source")
    if kind == "encoded":
        return ImageInput(image.encoded, field)
    if kind == "raw":
        raw = image.raw
        return ImageInput(RawImage(raw.height, raw.width, raw.channels, raw.data), field)
    return ImageInput(None, field)  # the core says it is missing, after the model is found


def batch_inputs(request: pb.DetectBatchRequest) -> list[ImageInput]:
    return [image_input(img, f"images[{i}]") for i, img in enumerate(request.images)]


def detect_options(request: pb.DetectRequest | pb.DetectBatchRequest, deadline: float | None) -> DetectOptions:
    slicing = None
    if request.HasField("slicing"):
        message = request.slicing
        slicing = SlicingRequest(
            enabled=message.enabled if message.HasField("enabled") else None,
            given={f: getattr(message, f) for f in SLICING_FIELDS if message.HasField(f)})
    return DetectOptions(threshold=request_threshold(request), max_detections=request.max_detections,
                         slicing=slicing, deadline=deadline)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the monotonic clock the engine uses, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def detect_response(result: DetectResult, image: Detections) -> pb.DetectResponse:
    t = image.timings
    boxes = [pb.Box(cls_id=int(c), label=label, score=float(score), xmin=float(x1), ymin=float(y1),
                    xmax=float(x2), ymax=float(y2))
             for c, label, score, (x1, y1, x2, y2) in zip(image.class_ids.tolist(), image.labels,
                                                          image.scores.tolist(), image.boxes.tolist(), strict=True)]
    return pb.DetectResponse(
        request_id=result.request_id, boxes=boxes, image_width=image.image_width, image_height=image.image_height,
        model=result.model, version=result.version, device=result.device, slices=image.slices,
        timings=pb.StageTimings(decode_seconds=t.decode, preprocess_seconds=t.preprocess, queue_seconds=t.queue,
                                inference_seconds=t.inference, postprocess_seconds=t.postprocess,
                                batch_size=t.batch_size, slicing_seconds=t.slicing, merging_seconds=t.merging))


def responses(result: DetectResult) -> list[pb.DetectResponse]:
    return [detect_response(result, image) for image in result.images]


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
    """Translates protobuf to the detection core's typed values and back; nothing else."""

    # A DetectStream frame for a model the caller's token may not use gets its own
    # PERMISSION_DENIED answer; the stream and the frames around it go on (sodd.serving.auth).
    CHECKS_STREAM_FRAME_RIGHTS = True

    def __init__(self, config: ServeConfig, registry: ModelRegistry, manager: ModelManager,
                 observer: DetectionObserver | None = None) -> None:
        self._config = config
        self._registry = registry
        self._manager = manager
        self._open_streams = 0
        self._workers = ThreadPoolExecutor(config.preprocess_workers, thread_name_prefix="prep")
        self._trimmer = HeapTrimmer()
        # `observer` (the daemon's metrics) is told what each answered request ran, by the core itself.
        self.detector = Detector(registry, Limits(config.max_pixels, config.max_request_pixels,
                                                  config.max_request_images), self._workers, self._trimmer,
                                 observer)

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    async def _guard(self, context: grpc.aio.ServicerContext, work: Awaitable[T], what: str, request_id: str,
                     empty: Callable[[], T] | None = None) -> T:
        """`work`'s answer, or its error as a status. With `empty`, an error is answered by setting
        the status and returning an empty message rather than raising grpc's AbortError: an abort's
        traceback runs through gRPC's own frames into a reference cycle that keeps the request (a
        20 MB refused image kept 20 MB) until a full garbage collection."""
        try:
            return await work
        except SoddError as exc:
            log.debug("%s request_id=%s code=%s: %s", what, request_id, exc.code.name, exc.message)
            code, message = exc.code, exc.message
            traceback.clear_frames(exc.__traceback__)  # the failed steps' frames hold the request's images
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing backend must not take the daemon down
            log.exception("%s request_id=%s failed", what, request_id)
            code, message = grpc.StatusCode.INTERNAL, f"{what} failed: {type(exc).__name__}: {exc}"
            traceback.clear_frames(exc.__traceback__)
        if empty is None:
            await context.abort(code, message)
            raise AssertionError("unreachable")
        context.set_code(code)
        context.set_details(message)
        return empty()

    async def _detect(self, request: pb.DetectRequest | pb.DetectBatchRequest, images: list[ImageInput],
                      request_id: str, deadline: float | None) -> list[pb.DetectResponse]:
        check_name(request.model, "model")
        check_name(request_id, "request_id", REQUEST_ID_LIMIT)
        # The answer is built where the request finishes, off the loop (sodd.runtime.detection).
        return await self.detector.detect(request.model, request.version, images,
                                          detect_options(request, deadline), request_id, answer=responses)

    async def _detect_one(self, request: pb.DetectRequest, request_id: str,
                          deadline: float | None) -> pb.DetectResponse:
        (response,) = await self._detect(request, [image_input(request.image, "image")], request_id, deadline)
        return response

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        request_id = request.request_id or uuid.uuid4().hex
        return await self._guard(context, self._detect_one(request, request_id, deadline_of(context)),
                                 "Detect", request_id, pb.DetectResponse)

    async def _stream_frame(self, request: pb.DetectRequest, deadline: float | None) -> pb.DetectStreamResponse:
        request_id = request.request_id or uuid.uuid4().hex
        try:
            model = check_name(request.model, "model") or self._registry.default_name or ""
            if not caller_rights().may_use(model):
                raise PermissionDenied(f"this token has no right to model {quote(model)}")
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
            async with contextlib.aclosing(self._stream(request_iterator, context)) as answers:
                async for answer in answers:
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
            if len(request.images) > self._config.max_request_images:  # before converting any image
                raise InvalidArgument(f"images holds {len(request.images)} images; the limit is "
                                      f"{self._config.max_request_images} per DetectBatch (max_request_images)")
            # Reading 64 images out of the message copies their bytes: not on the loop.
            images = await self._in_worker(batch_inputs, request)
            results = await self._detect(request, images, request_id, deadline_of(context))
            return pb.DetectBatchResponse(request_id=request_id, results=results)

        return await self._guard(context, work(), "DetectBatch", request_id, pb.DetectBatchResponse)

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
        """Every version of every model (or of `name`) the caller may see."""
        rights = caller_rights()
        return [info for info in self._every_info(name) if rights.may_use(info.name)]

    def _every_info(self, name: str | None = None) -> list[pb.ModelInfo]:
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
        return await self._model_change(
            request, context, "LoadModel", "load", self._manager.load_model,
            lambda: pb.LoadModelResponse(versions=[self._info(m) for m in
                                                   sorted(self._registry.versions(request.name).values(),
                                                          key=lambda m: m.version)]))

    async def UnloadModel(self, request: pb.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        return await self._model_change(request, context, "UnloadModel", "unload", self._manager.unload_model,
                                        pb.UnloadModelResponse)

    async def _model_change(self, request: pb.LoadModelRequest | pb.UnloadModelRequest,
                            context: grpc.aio.ServicerContext, rpc: str, verb: str,
                            change: Callable[[str, int], Awaitable[None]], answer: Callable[[], T]) -> T:
        """LoadModel or UnloadModel: `change` applied to the named model (and version), answered by
        `answer()` once it is done."""
        async def work() -> T:
            if not request.name:
                raise InvalidArgument(f"name is empty: say which model to {verb}")
            await change(request.name, request.version)
            return answer()

        return await self._guard(context, work(), rpc, "")

    async def WatchModels(self, request: pb.WatchModelsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ModelEvent] = asyncio.Queue(maxsize=WATCH_QUEUE_LIMIT)

        rights = caller_rights()

        def listener(event: ModelEvent) -> None:
            if (not request.name or event.name == request.name) and rights.may_use(event.name):
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
        self._trimmer.close()
