"""Client library for the sodd Detector API, blocking (`Client`) and asyncio (`AsyncClient`).

It imports only the generated stubs, grpcio and protobuf, so an edge device can use it without the
daemon's dependencies (paddle, numpy, OpenCV); Pillow is needed only to draw results.

Every call takes `timeout=` (seconds; the client's default otherwise, None for no deadline). The
channel carries a service config that retries UNAVAILABLE (what a draining or restarting daemon
answers) with exponential backoff, and a per-call retry buffer large enough for an image: gRPC
buffers a request to resend it and gives up retrying, silently, once the request is larger than
the buffer, whose default (256 KiB) is smaller than most photographs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Union

import grpc
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

from sodd_client.channel import open_aio_channel, open_channel
from sodd_client.inputs import Input, batches
from sodd_client.results import DetResult

Threshold = Union[float, Mapping[int, float], None]
# Encoded file bytes, an Image message, or a BGR/BGRA/grey uint8 numpy array.
ImageInput = Union[bytes, pb.Image, Any]
# True/False turns slicing on/off; a mapping or keyword fields set Slicing's fields.
SlicingSpec = Union[bool, Mapping[str, Any], pb.Slicing, None]

MIB = 1024 * 1024
# Large enough for 4K PNGs; the daemon enforces its own limit.
MAX_MESSAGE_BYTES = 256 * MIB
# The daemon's default --max-message-mb: every request it accepts by default can be retried.
RETRY_BUFFER_BYTES = 64 * MIB
SERVICE = "sodd.v1.Detector"
DEFAULT_TIMEOUT = 60.0


class _Default:
    def __repr__(self) -> str:
        return "<client default>"


DEFAULT: Any = _Default()


def service_config(max_attempts: int = 5, initial_backoff: float = 0.2, max_backoff: float = 5.0,
                   backoff_multiplier: float = 2.0) -> dict[str, Any]:
    """A gRPC service config retrying UNAVAILABLE on every Detector method (gRPC caps attempts at 5),
    and spreading calls over every address a name resolves to (`dns:///sodd-headless:50051`): a
    Kubernetes headless Service lists one address per pod. Health checking stays the caller's
    choice (docs/fleets.md): it would stop calls to a daemon whose default model is unloaded."""
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {
            "maxAttempts": max_attempts,
            "initialBackoff": f"{initial_backoff}s",
            "maxBackoff": f"{max_backoff}s",
            "backoffMultiplier": backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]}


def channel_options(retry: bool | Mapping[str, Any] = True,
                    retry_buffer_bytes: int = RETRY_BUFFER_BYTES) -> list[tuple]:
    """Message limits, and the retry policy (`retry=False` turns it off, a dict replaces the service config)."""
    options: list[tuple] = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if retry is False:
        return [*options, ("grpc.enable_retries", 0)]
    config = service_config() if retry is True else dict(retry)
    return [*options, ("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config)),
            ("grpc.per_rpc_retry_buffer_size", int(retry_buffer_bytes))]


CHANNEL_OPTIONS = channel_options()


def raw_image(pixels: Any, color: str = "bgr") -> pb.Image:
    """An Image message from a uint8 array: HxWx3 (BGR, or RGB with color="rgb"), HxWx4 (BGRA/RGBA) or
    HxW / HxWx1 (grey). Channels-first arrays, other dtypes and empty arrays are refused here, with the
    fix, rather than by the daemon after the upload."""
    shape = tuple(getattr(pixels, "shape", ()))
    dtype = str(getattr(pixels, "dtype", type(pixels).__name__))
    if dtype != "uint8":
        hint = " (scale floats in 0..1 by 255 and convert with .astype('uint8'))" if "float" in dtype else ""
        raise ValueError(f"raw_image needs uint8 pixels, got {dtype}{hint}")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        hint = (" (it looks channels-first: use pixels.transpose(1, 2, 0))"
                if len(shape) == 3 and shape[0] in (1, 3, 4) else "")
        raise ValueError(f"raw_image needs HxW or HxWxC pixels with C 1, 3 or 4, got shape {list(shape)}{hint}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"raw_image got an empty image of shape {list(shape)}")
    if color not in ("bgr", "rgb"):
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    channels = 1 if len(shape) == 2 else shape[2]
    if color == "rgb" and channels in (3, 4):
        order = [2, 1, 0, 3][:channels]
        pixels = pixels[:, :, order]
    # tobytes() writes C order whatever the array's strides, so views and slices are fine.
    return pb.Image(raw=pb.RawImage(height=shape[0], width=shape[1], channels=channels, data=pixels.tobytes()))


def image_message(image: ImageInput) -> pb.Image:
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(image))
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        return raw_image(image)
    raise TypeError(f"an image is encoded bytes, a sodd.v1.Image or a uint8 array, not {type(image).__name__}")


def slicing_message(slicing: SlicingSpec) -> pb.Slicing | None:
    """None: the model's default slicing; True/False: on (window size picked by the daemon unless
    given) or off; a mapping: Slicing's fields, e.g. {"slice_height": 640, "overlap_height_ratio": 0.25}."""
    if slicing is None:
        return None
    if isinstance(slicing, pb.Slicing):
        return slicing
    if isinstance(slicing, bool):
        return pb.Slicing(enabled=slicing)
    if isinstance(slicing, Mapping):
        fields = {f.name for f in pb.Slicing.DESCRIPTOR.fields}
        unknown = sorted(set(slicing) - fields)
        if unknown:
            raise ValueError(f"slicing has no field {unknown[0]!r}; fields: {', '.join(sorted(fields))}")
        return pb.Slicing(**{k: v for k, v in slicing.items() if v is not None})
    raise TypeError(f"slicing is None, a bool, a mapping or a sodd.v1.Slicing, not {type(slicing).__name__}")


def _set_options(message: Any, threshold: Threshold, slicing: SlicingSpec) -> None:
    if threshold is not None:
        if isinstance(threshold, Mapping):
            message.class_thresholds.SetInParent()
            for cls_id, value in threshold.items():
                message.class_thresholds.thresholds[int(cls_id)] = float(value)
        else:
            message.threshold = float(threshold)
    spec = slicing_message(slicing)
    if spec is not None:
        message.slicing.CopyFrom(spec)


def detect_request(image: ImageInput, model: str = "", version: int = 0, threshold: Threshold = None,
                   max_detections: int = 0, request_id: str = "", slicing: SlicingSpec = None) -> pb.DetectRequest:
    request = pb.DetectRequest(image=image_message(image), model=model, version=version,
                               max_detections=max_detections, request_id=request_id)
    _set_options(request, threshold, slicing)
    return request


def batch_request(images: Iterable[ImageInput], model: str = "", version: int = 0, threshold: Threshold = None,
                  max_detections: int = 0, request_id: str = "", slicing: SlicingSpec = None) -> pb.DetectBatchRequest:
    request = pb.DetectBatchRequest(images=[image_message(i) for i in images], model=model, version=version,
                                    max_detections=max_detections, request_id=request_id)
    _set_options(request, threshold, slicing)
    return request


class StreamFrameError(Exception):
    """A DetectStream frame the daemon could not answer; the stream goes on."""

    def __init__(self, request_id: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"frame {request_id}: {code.name}: {message}")
        self.request_id, self.code, self.message = request_id, code, message


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def frame_error(item: pb.DetectStreamResponse) -> StreamFrameError:
    return StreamFrameError(item.request_id, _CODES.get(item.error.code, grpc.StatusCode.UNKNOWN), item.error.message)


class _Requests:
    """Turns frames into DetectRequests with the stream's options, numbering frames without an id."""

    def __init__(self, model: str, version: int, threshold: Threshold, max_detections: int,
                 slicing: SlicingSpec) -> None:
        self.args = (model, version, threshold, max_detections)
        self.slicing = slicing
        self.counter = itertools.count()

    def __call__(self, frame: ImageInput | pb.DetectRequest) -> pb.DetectRequest:
        index = next(self.counter)
        if isinstance(frame, pb.DetectRequest):
            return frame if frame.request_id else _with_id(frame, str(index))
        model, version, threshold, max_detections = self.args
        return detect_request(frame, model, version, threshold, max_detections, str(index), self.slicing)


def _with_id(frame: pb.DetectRequest, request_id: str) -> pb.DetectRequest:
    copy = pb.DetectRequest()
    copy.CopyFrom(frame)
    copy.request_id = request_id
    return copy


def _predict_results(inputs: list[Input], responses: list[pb.DetectResponse],
                     font_path: str | None) -> list[DetResult]:
    out = []
    for item, response in zip(inputs, responses):
        result = DetResult.from_response(response, item.path, item.rgb_image, font_path=font_path)
        result["page_index"] = item.page_index
        out.append(result)
    return out


class _Base:
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout

    def _t(self, timeout: Any) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout


class Client(_Base):
    """Blocking client. `address` is HOST:PORT or unix:/path; `timeout` the default per-call deadline in
    seconds (None: none); `token` is sent as a bearer token; `tls_ca` (and `tls_cert` + `tls_key` for
    mutual TLS) turn TLS on; `retry` (default on) retries UNAVAILABLE, `retry=False` turns that off and
    a dict replaces the gRPC service config; `retry_buffer_bytes` is the largest request resent."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = DEFAULT_TIMEOUT,
                 channel: grpc.Channel | None = None, *, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 retry: bool | Mapping[str, Any] = True, retry_buffer_bytes: int = RETRY_BUFFER_BYTES) -> None:
        super().__init__(timeout)
        self.address = address
        self.channel = channel or open_channel(address, channel_options(retry, retry_buffer_bytes), token=token,
                                               tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self.stub = pb_grpc.DetectorStub(self.channel)

    # -- detection -----------------------------------------------------------------------------

    def detect(self, image: ImageInput, model: str = "", *, version: int = 0, threshold: Threshold = None,
               max_detections: int = 0, request_id: str = "", slicing: SlicingSpec = None,
               timeout: Any = DEFAULT) -> pb.DetectResponse:
        request = detect_request(image, model, version, threshold, max_detections, request_id, slicing)
        return self.stub.Detect(request, timeout=self._t(timeout))

    def detect_batch(self, images: Iterable[ImageInput], model: str = "", *, version: int = 0,
                     threshold: Threshold = None, max_detections: int = 0, request_id: str = "",
                     slicing: SlicingSpec = None, timeout: Any = DEFAULT) -> pb.DetectBatchResponse:
        request = batch_request(images, model, version, threshold, max_detections, request_id, slicing)
        return self.stub.DetectBatch(request, timeout=self._t(timeout))

    def detect_stream(self, frames: Iterable[ImageInput | pb.DetectRequest], model: str = "", *,
                      version: int = 0, threshold: Threshold = None, max_detections: int = 0,
                      slicing: SlicingSpec = None, raise_errors: bool = False,
                      timeout: float | None = None) -> Iterator[pb.DetectStreamResponse]:
        """Send frames on one DetectStream and yield the answers in frame order. Frames are images or
        whole DetectRequests; frames without a request_id are numbered "0", "1", ... A frame the daemon
        refuses comes back with `.error` set (or raises StreamFrameError with `raise_errors=True`)
        and the stream goes on. Frames are read from the iterator as gRPC flow control allows, so a
        camera generator is paced by the daemon. `timeout` bounds the whole stream (default: none)."""
        requests = map(_Requests(model, version, threshold, max_detections, slicing), frames)
        call = self.stub.DetectStream(requests, timeout=timeout)
        try:
            for item in call:
                if raise_errors and item.WhichOneof("result") == "error":
                    raise frame_error(item)
                yield item
        finally:
            call.cancel()  # a caller that stops early must not leave the stream open

    def predict(self, input: Any, batch_size: int = 1, threshold: Threshold = None, *,  # noqa: A002 - PaddleX's name
                model: str = "", version: int = 0, max_detections: int = 0, slicing: SlicingSpec = None,
                font_path: str | None = None, timeout: Any = DEFAULT) -> Iterator[DetResult]:
        """PaddleX's `model.predict(input, batch_size, threshold)` over gRPC: a path, a directory, a URL,
        a BGR array, encoded bytes, or a list of them in; PaddleX result objects out, one per image, in
        order. `batch_size` images go in one DetectBatch call."""
        for chunk in batches(input, batch_size):
            if len(chunk) == 1:
                responses = [self.detect(chunk[0].data, model, version=version, threshold=threshold,
                                         max_detections=max_detections, slicing=slicing, timeout=timeout)]
            else:
                responses = list(self.detect_batch([i.data for i in chunk], model, version=version,
                                                   threshold=threshold, max_detections=max_detections,
                                                   slicing=slicing, timeout=timeout).results)
            yield from _predict_results(chunk, responses, font_path)

    # -- models and devices --------------------------------------------------------------------

    def list_models(self, *, timeout: Any = DEFAULT) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self._t(timeout)).models)

    def get_model(self, name: str = "", version: int = 0, *, timeout: Any = DEFAULT) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(name=name, version=version), timeout=self._t(timeout))

    def list_devices(self, *, timeout: Any = DEFAULT) -> list[pb.PluginInfo]:
        return list(self.stub.ListDevices(pb.ListDevicesRequest(), timeout=self._t(timeout)).plugins)

    def load_model(self, name: str, version: int = 0, *, timeout: Any = DEFAULT) -> list[pb.ModelInfo]:
        """Load (or re-read) a model, or one pinned version; returns the versions now loaded."""
        request = pb.LoadModelRequest(name=name, version=version)
        return list(self.stub.LoadModel(request, timeout=self._t(timeout)).versions)

    def unload_model(self, name: str, version: int = 0, *, timeout: Any = DEFAULT) -> None:
        self.stub.UnloadModel(pb.UnloadModelRequest(name=name, version=version), timeout=self._t(timeout))

    def watch_models(self, name: str = "", *, timeout: float | None = None) -> Any:
        """Model lifecycle events as they happen: an iterator of ModelEvent; `.cancel()` ends it."""
        return self.stub.WatchModels(pb.WatchModelsRequest(name=name), timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _aiter(frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if hasattr(frames, "__aiter__"):
        async for frame in frames:  # type: ignore[union-attr]
            yield frame
    else:
        for frame in frames:  # type: ignore[union-attr]
            yield frame


class AsyncClient(_Base):
    """asyncio twin of `Client`: the same calls, awaited; streams are async iterators."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = DEFAULT_TIMEOUT,
                 channel: grpc.aio.Channel | None = None, *, token: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 retry: bool | Mapping[str, Any] = True, retry_buffer_bytes: int = RETRY_BUFFER_BYTES) -> None:
        super().__init__(timeout)
        self.address = address
        self.channel = channel or open_aio_channel(address, channel_options(retry, retry_buffer_bytes),
                                                   token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self.stub = pb_grpc.DetectorStub(self.channel)

    async def detect(self, image: ImageInput, model: str = "", *, version: int = 0, threshold: Threshold = None,
                     max_detections: int = 0, request_id: str = "", slicing: SlicingSpec = None,
                     timeout: Any = DEFAULT) -> pb.DetectResponse:
        request = detect_request(image, model, version, threshold, max_detections, request_id, slicing)
        return await self.stub.Detect(request, timeout=self._t(timeout))

    async def detect_batch(self, images: Iterable[ImageInput], model: str = "", *, version: int = 0,
                           threshold: Threshold = None, max_detections: int = 0, request_id: str = "",
                           slicing: SlicingSpec = None, timeout: Any = DEFAULT) -> pb.DetectBatchResponse:
        request = batch_request(images, model, version, threshold, max_detections, request_id, slicing)
        return await self.stub.DetectBatch(request, timeout=self._t(timeout))

    async def detect_stream(self, frames: Iterable[Any] | AsyncIterable[Any], model: str = "", *,
                            version: int = 0, threshold: Threshold = None, max_detections: int = 0,
                            slicing: SlicingSpec = None, raise_errors: bool = False,
                            timeout: float | None = None) -> AsyncIterator[pb.DetectStreamResponse]:
        """As `Client.detect_stream`; `frames` may be a plain or an async iterable."""
        make = _Requests(model, version, threshold, max_detections, slicing)

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            async for frame in _aiter(frames):
                yield make(frame)

        call = self.stub.DetectStream(requests(), timeout=timeout)
        try:
            async for item in call:
                if raise_errors and item.WhichOneof("result") == "error":
                    raise frame_error(item)
                yield item
        finally:
            call.cancel()

    async def predict(self, input: Any, batch_size: int = 1, threshold: Threshold = None, *,  # noqa: A002
                      model: str = "", version: int = 0, max_detections: int = 0, slicing: SlicingSpec = None,
                      font_path: str | None = None, timeout: Any = DEFAULT) -> AsyncIterator[DetResult]:
        """As `Client.predict`, as an async iterator."""
        for chunk in batches(input, batch_size):
            if len(chunk) == 1:
                responses = [await self.detect(chunk[0].data, model, version=version, threshold=threshold,
                                               max_detections=max_detections, slicing=slicing, timeout=timeout)]
            else:
                reply = await self.detect_batch([i.data for i in chunk], model, version=version,
                                                threshold=threshold, max_detections=max_detections,
                                                slicing=slicing, timeout=timeout)
                responses = list(reply.results)
            for result in _predict_results(chunk, responses, font_path):
                yield result

    async def list_models(self, *, timeout: Any = DEFAULT) -> list[pb.ModelInfo]:
        return list((await self.stub.ListModels(pb.ListModelsRequest(), timeout=self._t(timeout))).models)

    async def get_model(self, name: str = "", version: int = 0, *, timeout: Any = DEFAULT) -> pb.ModelInfo:
        return await self.stub.GetModel(pb.GetModelRequest(name=name, version=version), timeout=self._t(timeout))

    async def list_devices(self, *, timeout: Any = DEFAULT) -> list[pb.PluginInfo]:
        return list((await self.stub.ListDevices(pb.ListDevicesRequest(), timeout=self._t(timeout))).plugins)

    async def load_model(self, name: str, version: int = 0, *, timeout: Any = DEFAULT) -> list[pb.ModelInfo]:
        request = pb.LoadModelRequest(name=name, version=version)
        return list((await self.stub.LoadModel(request, timeout=self._t(timeout))).versions)

    async def unload_model(self, name: str, version: int = 0, *, timeout: Any = DEFAULT) -> None:
        await self.stub.UnloadModel(pb.UnloadModelRequest(name=name, version=version), timeout=self._t(timeout))

    def watch_models(self, name: str = "", *, timeout: float | None = None) -> Any:
        """An async iterator of ModelEvent (`async for event in client.watch_models()`); `.cancel()` ends it."""
        return self.stub.WatchModels(pb.WatchModelsRequest(name=name), timeout=timeout)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
