"""Client library for the sodd Detect API, sync and asyncio.

It imports only the generated stubs, so an edge device can use it without the daemon's
dependencies (paddle, OpenCV).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from sodd_client.channel import open_aio_channel, open_channel

Threshold = float | Mapping[int, float] | None
ImageInput = bytes | pb.Image

# Large enough for 4K PNGs; the daemon enforces its own limit.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def image_message(image: ImageInput) -> pb.Image:
    return image if isinstance(image, pb.Image) else pb.Image(encoded=bytes(image))


def raw_image(pixels, ) -> pb.Image:  # noqa: ANN001 - a numpy array; numpy is not a client dependency
    """An Image message from a BGR (HxWx3), BGRA (HxWx4) or grey (HxW) uint8 array."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return pb.Image(raw=pb.RawImage(height=height, width=width, channels=channels, data=pixels.tobytes()))


def _set_threshold(message: pb.DetectRequest | pb.DetectBatchRequest, threshold: Threshold) -> None:
    if threshold is None:
        return
    if isinstance(threshold, Mapping):
        message.class_thresholds.SetInParent()
        for cls_id, value in threshold.items():
            message.class_thresholds.thresholds[int(cls_id)] = float(value)
    else:
        message.threshold = float(threshold)


def detect_request(image: ImageInput, model: str = "", version: int = 0, threshold: Threshold = None,
                   max_detections: int = 0, request_id: str = "") -> pb.DetectRequest:
    request = pb.DetectRequest(image=image_message(image), model=model, version=version,
                               max_detections=max_detections, request_id=request_id)
    _set_threshold(request, threshold)
    return request


def batch_request(images: Sequence[ImageInput], model: str = "", version: int = 0, threshold: Threshold = None,
                  max_detections: int = 0, request_id: str = "") -> pb.DetectBatchRequest:
    request = pb.DetectBatchRequest(images=[image_message(i) for i in images], model=model, version=version,
                                    max_detections=max_detections, request_id=request_id)
    _set_threshold(request, threshold)
    return request


class Client:
    """Blocking client. `timeout` is the per-call deadline in seconds. `address` is HOST:PORT or
    unix:/path; `token` is sent as a bearer token, `tls_ca` (and `tls_cert` + `tls_key` for mutual
    TLS) turn TLS on."""

    def __init__(self, address: str, timeout: float | None = 60.0,
                 channel: grpc.Channel | None = None, *, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self._channel = channel or open_channel(address, CHANNEL_OPTIONS, token=token, tls_ca=tls_ca,
                                                tls_cert=tls_cert, tls_key=tls_key)
        self._stub = pb_grpc.DetectorStub(self._channel)
        self.timeout = timeout

    def detect(self, image: ImageInput, model: str = "", *, version: int = 0, threshold: Threshold = None,
               max_detections: int = 0, request_id: str = "") -> pb.DetectResponse:
        return self._stub.Detect(detect_request(image, model, version, threshold, max_detections, request_id),
                                 timeout=self.timeout)

    def detect_batch(self, images: Sequence[ImageInput], model: str = "", *, version: int = 0,
                     threshold: Threshold = None, max_detections: int = 0,
                     request_id: str = "") -> pb.DetectBatchResponse:
        return self._stub.DetectBatch(
            batch_request(images, model, version, threshold, max_detections, request_id), timeout=self.timeout)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, name: str = "", version: int = 0) -> pb.ModelInfo:
        return self._stub.GetModel(pb.GetModelRequest(name=name, version=version), timeout=self.timeout)

    def list_devices(self) -> list[pb.PluginInfo]:
        return list(self._stub.ListDevices(pb.ListDevicesRequest(), timeout=self.timeout).plugins)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same calls as `Client`."""

    def __init__(self, address: str, timeout: float | None = 60.0,
                 channel: grpc.aio.Channel | None = None, *, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self._channel = channel or open_aio_channel(address, CHANNEL_OPTIONS, token=token, tls_ca=tls_ca,
                                                    tls_cert=tls_cert, tls_key=tls_key)
        self._stub = pb_grpc.DetectorStub(self._channel)
        self.timeout = timeout

    async def detect(self, image: ImageInput, model: str = "", *, version: int = 0, threshold: Threshold = None,
                     max_detections: int = 0, request_id: str = "") -> pb.DetectResponse:
        return await self._stub.Detect(
            detect_request(image, model, version, threshold, max_detections, request_id), timeout=self.timeout)

    async def detect_batch(self, images: Sequence[ImageInput], model: str = "", *, version: int = 0,
                           threshold: Threshold = None, max_detections: int = 0,
                           request_id: str = "") -> pb.DetectBatchResponse:
        return await self._stub.DetectBatch(
            batch_request(images, model, version, threshold, max_detections, request_id), timeout=self.timeout)

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)).models)

    async def get_model(self, name: str = "", version: int = 0) -> pb.ModelInfo:
        return await self._stub.GetModel(pb.GetModelRequest(name=name, version=version), timeout=self.timeout)

    async def list_devices(self) -> list[pb.PluginInfo]:
        return list((await self._stub.ListDevices(pb.ListDevicesRequest(), timeout=self.timeout)).plugins)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
