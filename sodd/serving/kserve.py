"""The KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside
`sodd.v1.Detector` on the same port, with the same limits, tokens and metrics.

A thin translator like sodd.serving.service: tensors and parameters in, the detection core's typed
`Detections` out, so boxes equal Detect's for the same request. The layout (docs/fleets.md):

- input: one tensor (named `images` in the metadata; any name is accepted), either BYTES of shape
  [N] holding encoded images (JPEG, PNG, ...: what Detect's `encoded` takes), or UINT8 of shape
  [N, H, W, C] or [H, W, C] (C 3 or 4: RGB(A) unless the `color_format` parameter says "bgr"; C 1:
  grey) holding pixels;
- request parameters: `threshold` (a number, or a string holding a number or per-class
  thresholds "0:0.5,3:0.3"), `class_thresholds` (the same string form), `max_detections`,
  `slicing` (true/false, or a JSON object of Detect's Slicing fields), `color_format`;
- outputs, for N images of which the largest holds M boxes: `boxes` FP32 [N, M, 4] (xmin, ymin,
  xmax, ymax in original pixels), `scores` FP32 [N, M], `class_ids` INT32 [N, M], `labels` BYTES
  [N, M], padded with zeros, -1 and "" past each image's own count, `num_detections` INT32 [N], and
  `image_sizes` INT32 [N, 2] (height, width). A request asks for some of them with `outputs`.

Tokens: the token check hands every call here with the caller's rights (sodd.serving.auth); model calls
check them, and loading or unloading needs the manage right (without a tokens file: a local
caller, as for LoadModel). Budgets: sodd.serving.budgets admits ModelInfer and ModelStreamInfer into the
inference and per-client budgets before their request is read. Metrics: each request is counted and
logged as a Detect is (sodd.observability.requests), with method ModelInfer or ModelStreamInfer; the
detection core reports its stages and images itself; ModelStatistics reads those same series.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import grpc
import numpy as np

from sodd.errors import InvalidArgument, NotFound, PermissionDenied, SoddError
from sodd.model.names import check_name
from sodd.model.postprocess import Threshold
from sodd.observability.logs import quote
from sodd.observability.metrics import UNKNOWN, UNKNOWN_MODEL, Metrics
from sodd.observability.requests import RequestRecorder
from sodd.oip import grpc_service_pb2 as pb
from sodd.oip import grpc_service_pb2_grpc as pb_grpc
from sodd.runtime.detection import SLICING_FIELDS, DetectOptions, Detector, DetectResult, ImageInput, SlicingRequest
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelRegistry, ModelState
from sodd.serving.auth import caller_rights, may_manage
from sodd.serving.deadlines import deadline_reached

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("model_repository", "statistics", "parameters")
PLATFORM = "sodd_paddle"
INPUT = "images"
OUTPUTS = {  # name: (datatype, shape in the metadata)
    "boxes": ("FP32", [-1, -1, 4]),
    "scores": ("FP32", [-1, -1]),
    "class_ids": ("INT32", [-1, -1]),
    "labels": ("BYTES", [-1, -1]),
    "num_detections": ("INT32", [-1]),
    "image_sizes": ("INT32", [-1, 2]),
}
# Parameters that clients of the protocol set for their own servers; sodd accepts and ignores them.
IGNORED_PARAMETERS = frozenset(("priority", "timeout", "sequence_id", "sequence_start", "sequence_end",
                                "binary_data_output", "headers", "triton_enable_empty_final_response"))
PARAMETERS = frozenset(("threshold", "class_thresholds", "max_detections", "slicing", "color_format"))
# Requests this large are taken apart on a worker thread, not on the event loop.
PARSE_OFF_LOOP_BYTES = 1024 * 1024
# Triton's model states, for RepositoryIndex.
STATES = {ModelState.LOADING: "LOADING", ModelState.READY: "READY", ModelState.FAILED: "UNAVAILABLE",
          ModelState.DRAINING: "UNLOADING", ModelState.UNLOADED: "UNAVAILABLE"}
RGB_TO_BGR = {3: [2, 1, 0], 4: [2, 1, 0, 3]}


def parse_version(text: str, field: str = "version") -> int:
    """"" (any serving version) or a positive integer."""
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"{field} must be empty or a positive integer, got {quote(text)}")
    return int(text)


def _float32(value: float) -> float:
    """Detect carries thresholds and ratios as 32-bit floats: the same rounding gives the same boxes."""
    return float(np.float32(value))


def _parameter(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def parse_threshold(value: Any, name: str) -> Threshold:
    """A number, or a string: a number or per-class thresholds "0:0.5,3:0.3"."""
    if isinstance(value, bool) or value is None:
        raise InvalidArgument(f"parameter {name} must be a number or a string such as \"0.4\" or \"0:0.5,3:0.3\"")
    if isinstance(value, int | float):
        return _float32(value)
    text = str(value).strip()
    if ":" not in text:
        try:
            return _float32(float(text))
        except ValueError:
            raise InvalidArgument(f"parameter {name}: {quote(text)} is not a number") from None
    thresholds: dict[int, float] = {}
    for part in text.split(","):
        cls_id, sep, score = part.partition(":")
        try:
            thresholds[int(cls_id)] = _float32(float(score))
        except ValueError:
            raise InvalidArgument(f"parameter {name}: expected CLASS:THRESHOLD pairs such as \"0:0.5,3:0.3\", "
                                  f"got {quote(part)}") from None
    return thresholds


def parse_slicing(value: Any) -> SlicingRequest:
    if isinstance(value, bool):
        return SlicingRequest(enabled=value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return SlicingRequest(enabled=value.strip().lower() == "true")
    try:
        fields = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise InvalidArgument("parameter slicing must be true, false or a JSON object of slicing fields, "
                              f"e.g. {{\"slice_height\": 640}} (fields: {', '.join(SLICING_FIELDS)})")
    enabled = fields.pop("enabled", None)
    unknown = sorted(set(fields) - set(SLICING_FIELDS))
    if unknown:
        raise InvalidArgument(f"parameter slicing has no field {unknown[0]!r}; fields: {', '.join(SLICING_FIELDS)}")
    given = {k: _float32(v) if isinstance(v, float) else v for k, v in fields.items()}
    return SlicingRequest(enabled=enabled if isinstance(enabled, bool) else None, given=given)


@dataclass(frozen=True)
class InferCall:
    """A ModelInferRequest as the detection core's values."""

    model: str
    version: int
    images: list[ImageInput]
    options: DetectOptions
    request_id: str
    outputs: list[str]


def repository_model(request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> str:
    """The model a load or unload names: Triton's clients set model_name (field 2), KServe's set
    field 1, which Triton calls repository_name (sodd has one repository, so it names no other)."""
    name = request.model_name or request.repository_name
    if not name:
        raise InvalidArgument("model_name is empty: say which model to load or unload")
    return check_name(name, "model_name")


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """BYTES elements of a raw tensor: each a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    view = memoryview(raw)
    for index in range(count):
        if at + 4 > len(raw):
            raise InvalidArgument(f"inputs[0]: the raw BYTES tensor ends before element {index} of {count}")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidArgument(f"inputs[0]: element {index} of the raw BYTES tensor is cut short")
        out.append(bytes(view[at:at + size]))
        at += size
    if at != len(raw):
        raise InvalidArgument(f"inputs[0]: the raw BYTES tensor holds {len(raw) - at} bytes past its {count} elements")
    return out


def _pixel_images(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, color: str) -> list[ImageInput]:
    shape = list(tensor.shape)
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or shape[3] not in (1, 3, 4) or min(shape) < 1:
        raise InvalidArgument(f"inputs[0]: a UINT8 tensor must have shape [N, H, W, C] or [H, W, C] with C 1, 3 or 4, "
                              f"got {list(tensor.shape)}")
    size = math.prod(shape)
    if raw is not None:
        if len(raw) != size:
            raise InvalidArgument(f"inputs[0]: shape {list(tensor.shape)} needs {size} bytes, got {len(raw)}")
        pixels = np.frombuffer(raw, np.uint8).reshape(shape)
    else:
        values = tensor.contents.uint_contents
        if len(values) != size:
            raise InvalidArgument(f"inputs[0]: shape {list(tensor.shape)} needs {size} uint_contents, "
                                  f"got {len(values)}")
        wide = np.asarray(values, np.uint32)
        if wide.size and int(wide.max()) > 255:
            raise InvalidArgument("inputs[0]: UINT8 values must be at most 255")
        pixels = wide.astype(np.uint8).reshape(shape)
    order = RGB_TO_BGR.get(shape[3]) if color == "rgb" else None
    images = []
    for i in range(shape[0]):
        image = pixels[i][:, :, order] if order else pixels[i]  # fancy indexing copies: contiguous BGR
        images.append(ImageInput(np.ascontiguousarray(image), f"inputs[0][{i}]"))
    return images


def read_infer_request(request: pb.ModelInferRequest) -> InferCall:
    """Check and convert a ModelInferRequest; any problem is an InvalidArgument naming it."""
    check_name(request.model_name, "model_name")
    version = parse_version(request.model_version, "model_version")
    request_id = request.id or uuid.uuid4().hex
    check_name(request_id, "id", 128)
    if len(request.inputs) != 1:
        raise InvalidArgument(f"expected one input tensor ({INPUT!r}: BYTES [N] of encoded images or UINT8 "
                              f"[N, H, W, C] of pixels), got {len(request.inputs)}")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents holds {len(request.raw_input_contents)} entries for "
                              f"{len(request.inputs)} inputs")
    params = {name: _parameter(p) for name, p in request.parameters.items()}
    unknown = sorted(set(params) - PARAMETERS - IGNORED_PARAMETERS)
    if unknown:
        raise InvalidArgument(f"unknown parameter {quote(unknown[0])}; sodd takes {', '.join(sorted(PARAMETERS))}")
    threshold: Threshold | None = None
    if "threshold" in params:
        threshold = parse_threshold(params["threshold"], "threshold")
    if "class_thresholds" in params:
        if threshold is not None:
            raise InvalidArgument("give either threshold or class_thresholds, not both")
        threshold = parse_threshold(params["class_thresholds"], "class_thresholds")
        if not isinstance(threshold, dict):
            raise InvalidArgument("parameter class_thresholds must be CLASS:THRESHOLD pairs such as \"0:0.5,3:0.3\"")
    max_detections = params.get("max_detections", 0)
    if isinstance(max_detections, str) and max_detections.strip().isdigit():
        max_detections = int(max_detections)
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 0:
        raise InvalidArgument(f"parameter max_detections must be an integer >= 0, got {max_detections!r}")
    slicing = parse_slicing(params["slicing"]) if "slicing" in params else None
    color = str(params.get("color_format", "rgb")).lower()
    if color not in ("rgb", "bgr"):
        raise InvalidArgument(f"parameter color_format must be \"rgb\" or \"bgr\", got {quote(color)}")
    outputs = [o.name for o in request.outputs]
    for name in outputs:
        if name not in OUTPUTS:
            raise InvalidArgument(f"no output {quote(name)}; outputs: {', '.join(OUTPUTS)}")
    tensor = request.inputs[0]
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if tensor.datatype == "BYTES":
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or tensor.shape[0] < 0:
            raise InvalidArgument(f"inputs[0]: a BYTES tensor of encoded images must have shape [N] (or [N, 1]), "
                                  f"got {list(tensor.shape)}")
        count = int(tensor.shape[0])
        if raw is not None:
            elements = _bytes_elements(raw, count)
        else:
            elements = list(tensor.contents.bytes_contents)
            if len(elements) != count:
                raise InvalidArgument(f"inputs[0]: shape {list(tensor.shape)} needs {count} bytes_contents, "
                                      f"got {len(elements)}")
        images = [ImageInput(data, f"inputs[0][{i}]") for i, data in enumerate(elements)]
    elif tensor.datatype == "UINT8":
        images = _pixel_images(tensor, raw, color)
    else:
        raise InvalidArgument(f"inputs[0]: datatype {quote(tensor.datatype)} is not accepted: send BYTES (encoded "
                              "images) or UINT8 (pixels)")
    options = DetectOptions(threshold=threshold, max_detections=max_detections, slicing=slicing)
    return InferCall(request.model_name, version, images, options, request_id, outputs)


def _raw_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def infer_response(result: DetectResult, request_id: str, wanted: list[str]) -> pb.ModelInferResponse:
    """The documented output tensors, padded to the largest image's count."""
    n = len(result.images)
    most = max((len(d) for d in result.images), default=0)
    boxes = np.zeros((n, most, 4), np.float32)
    scores = np.zeros((n, most), np.float32)
    class_ids = np.full((n, most), -1, np.int32)
    labels = [[b""] * most for _ in range(n)]
    for i, d in enumerate(result.images):
        k = len(d)
        boxes[i, :k] = d.boxes
        scores[i, :k] = d.scores
        class_ids[i, :k] = d.class_ids
        labels[i][:k] = [label.encode() for label in d.labels]
    tensors: dict[str, tuple[list[int], bytes]] = {
        "boxes": ([n, most, 4], boxes.astype("<f4").tobytes()),
        "scores": ([n, most], scores.astype("<f4").tobytes()),
        "class_ids": ([n, most], class_ids.astype("<i4").tobytes()),
        "labels": ([n, most], _raw_bytes([label for row in labels for label in row])),
        "num_detections": ([n], np.array([len(d) for d in result.images], "<i4").tobytes()),
        "image_sizes": ([n, 2], np.array([[d.image_height, d.image_width] for d in result.images],
                                         "<i4").reshape(n, 2).tobytes()),
    }
    response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request_id)
    response.parameters["device"].string_param = result.device
    for name in wanted or list(OUTPUTS):
        shape, data = tensors[name]
        response.outputs.add(name=name, datatype=OUTPUTS[name][0], shape=shape)
        response.raw_output_contents.append(data)
    return response


class _Stats:
    """ModelStatistics from the Prometheus series every request is counted in."""

    def __init__(self) -> None:
        self.success = [0, 0.0]
        self.fail = [0, 0.0]
        self.stages: dict[str, list[float]] = {}
        self.images = 0
        self.runs = 0


def _collect_stats(metrics: Metrics) -> dict[tuple[str, str], _Stats]:
    stats: dict[tuple[str, str], _Stats] = {}
    for family in metrics.registry.collect():
        if family.name not in ("sodd_request_duration_seconds", "sodd_stage_duration_seconds",
                               "sodd_detections_per_image", "sodd_batch_size"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or labels["model"] == UNKNOWN:
                continue
            entry = stats.setdefault((labels["model"], labels["version"]), _Stats())
            suffix = sample.name[len(family.name):]
            if family.name == "sodd_request_duration_seconds" and suffix in ("_count", "_sum"):
                slot = entry.success if labels["code"] == "OK" else entry.fail
                slot[0 if suffix == "_count" else 1] += sample.value
            elif family.name == "sodd_stage_duration_seconds" and suffix in ("_count", "_sum"):
                slot = entry.stages.setdefault(labels["stage"], [0, 0.0])
                slot[0 if suffix == "_count" else 1] += sample.value
            elif suffix == "_count":
                if family.name == "sodd_detections_per_image":
                    entry.images += int(sample.value)
                else:
                    entry.runs += int(sample.value)
    return stats


def _duration(count: float, seconds: float) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=int(count), ns=int(seconds * 1e9))


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` on the detection core. `ready` says whether the server takes
    requests without a model name (the overall health), `stopping` whether it drains;
    `local_manage_only` whether a caller may not load and unload models from where it is (no tokens
    file, a remote caller, remote management not allowed)."""

    def __init__(self, detector: Detector, manager: ModelManager, metrics: Metrics | None = None,
                 ready: Callable[[], bool] = lambda: True,
                 stopping: Callable[[], bool] = lambda: False,
                 local_manage_only: Callable[[grpc.aio.ServicerContext], bool] = lambda _: False,
                 max_streams: int = 16) -> None:
        self._detector = detector
        self._registry: ModelRegistry = detector.registry
        self._manager = manager
        self._metrics = metrics
        self._requests = RequestRecorder(metrics)
        self._ready = ready
        self._stopping = stopping
        self._local_manage_only = local_manage_only
        self._max_streams = max_streams
        self._open_streams = 0
        self._version = _package_version()

    # -- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def work() -> pb.ModelReadyResponse:
            version = parse_version(request.version)
            name = request.name or self._registry.default_name or ""
            if not caller_rights().may_use(name):
                return pb.ModelReadyResponse(ready=False)  # as for a model that does not exist
            versions = self._registry.versions(name)
            return pb.ModelReadyResponse(ready=bool(versions) and (not version or version in versions)
                                         and not self._stopping())

        return await self._guard(context, work())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="sodd", version=self._version, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.ModelMetadataResponse:
            check_name(request.name, "name")
            served = self._visible(request.name, parse_version(request.version))
            versions = sorted(self._registry.versions(served.name))
            response = pb.ModelMetadataResponse(name=served.name, versions=[str(v) for v in versions],
                                                platform=PLATFORM)
            response.inputs.add(name=INPUT, datatype="BYTES", shape=[-1])
            for name, (datatype, shape) in OUTPUTS.items():
                response.outputs.add(name=name, datatype=datatype, shape=shape)
            return response

        return await self._guard(context, work())

    def _visible(self, name: str, version: int) -> Any:
        """The served version, or NOT_FOUND (also for a model the caller's token cannot see)."""
        key = name or self._registry.default_name or ""
        if not caller_rights().may_use(key):
            raise NotFound(f"model {quote(key)} is not served")
        return self._registry.get(name, version)

    # -- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        # Admitted by the call budgets (sodd.serving.budgets) before its request was read.
        response, code, message = await self._infer("ModelInfer", request, context.time_remaining())
        if code is not grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(message)
            return pb.ModelInferResponse()
        return response

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is answered in order, by a response or an error message; the stream goes on.
        The stream holds a place in the call budgets (sodd.serving.budgets) while it is open."""
        if self._open_streams >= self._max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self._open_streams} streams are open, the limit is {self._max_streams} "
                                "(max_streams)")
        self._open_streams += 1
        try:
            async for request in request_iterator:
                response, code, message = await self._infer("ModelStreamInfer", request, None)
                if code is grpc.StatusCode.OK:
                    yield pb.ModelStreamInferResponse(infer_response=response)
                else:
                    yield pb.ModelStreamInferResponse(
                        error_message=f"{code.name}: {message}",
                        infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                             model_version=request.model_version, id=request.id))
        finally:
            self._open_streams -= 1

    async def _infer(self, method: str, request: pb.ModelInferRequest,
                     remaining: float | None) -> tuple[pb.ModelInferResponse | None, grpc.StatusCode, str]:
        """One request through the detection core: (response, OK, "") or (None, code, message)."""
        record = self._requests.begin(method, self._labels(request), request.id)
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            if request.ByteSize() >= PARSE_OFF_LOOP_BYTES:
                call = await asyncio.to_thread(read_infer_request, request)
            else:
                call = read_infer_request(request)
            record.request_id = call.request_id
            model = call.model or self._registry.default_name or ""
            if not caller_rights().may_use(model):
                raise PermissionDenied(f"this token has no right to model {quote(model)}")
            options = DetectOptions(call.options.threshold, call.options.max_detections, call.options.slicing,
                                    deadline)
            result = await self._detector.detect(call.model, call.version, call.images, options, call.request_id)
            response = infer_response(result, call.request_id, call.outputs)
            record.answered((result.model, str(result.version), result.device), len(result.images),
                            sum(len(d) for d in result.images))
            return response, record.code, ""
        except SoddError as exc:
            record.code, record.error = exc.code, exc.message
        except asyncio.CancelledError:
            # Cancelled by the client, by its deadline or by the daemon stopping, counted as sodd.v1's are.
            if deadline_reached(deadline):
                record.code, record.error, record.cause = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", "deadline"
            else:
                record.code, record.error = grpc.StatusCode.CANCELLED, "cancelled"
                record.cause = "shutdown" if self._stopping() else "client"
            raise
        except Exception as exc:  # noqa: BLE001 - a failing backend must not take the daemon down
            log.exception("%s request_id=%s failed", method, record.request_id)
            record.code, record.error = grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}: {exc}"
        finally:
            self._requests.finish(record)
        return None, record.code, record.error

    def _labels(self, request: pb.ModelInferRequest) -> tuple[str, str, str]:
        """Metric labels of the model the request will run on; never a client-chosen name."""
        try:
            served = self._registry.get(request.model_name, parse_version(request.model_version))
            return served.name, str(served.version), served.device
        except Exception:  # noqa: BLE001 - not served: the answer says NOT_FOUND
            return UNKNOWN_MODEL

    # -- statistics and repository ---------------------------------------------------------------

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.ModelStatisticsResponse:
            check_name(request.name, "name")
            version = parse_version(request.version)
            served = [m for m in self._registry.models() if caller_rights().may_use(m.name)
                      and (not request.name or m.name == request.name) and (not version or m.version == version)]
            if request.name and not served:
                raise NotFound(f"model {quote(request.name)} version {request.version or 'any'} is not served")
            stats = await asyncio.to_thread(_collect_stats, self._metrics) if self._metrics is not None else {}
            response = pb.ModelStatisticsResponse()
            for m in sorted(served, key=lambda m: (m.name, m.version)):
                entry = stats.get((m.name, str(m.version)), _Stats())
                stage = entry.stages.get
                decode, preprocess = stage("decode", [0, 0.0]), stage("preprocess", [0, 0.0])
                # Triton's compute_input is decode and preprocess together, once per request.
                compute_input = (decode[0], decode[1] + preprocess[1])
                response.model_stats.add(
                    name=m.name, version=str(m.version), inference_count=entry.images, execution_count=entry.runs,
                    inference_stats=pb.InferStatistics(
                        success=_duration(*entry.success), fail=_duration(*entry.fail),
                        queue=_duration(*stage("queue_wait", [0, 0.0])), compute_input=_duration(*compute_input),
                        compute_infer=_duration(*stage("inference", [0, 0.0])),
                        compute_output=_duration(*stage("postprocess", [0, 0.0]))))
            return response

        return await self._guard(context, work())

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.RepositoryIndexResponse:
            rights = caller_rights()
            rows: dict[tuple[str, int], tuple[str, str]] = {}
            for name in await asyncio.to_thread(lambda: list(self._manager.sources())):
                rows[(name, 0)] = ("UNAVAILABLE", "not loaded")
            for name, versions in self._registry.statuses().items():
                for version, status in versions.items():
                    rows.pop((name, 0), None)
                    rows[(name, version)] = (STATES[status.state], status.reason)
            for served in self._registry.models():
                rows.pop((served.name, 0), None)
                rows[(served.name, served.version)] = ("READY", "")
            response = pb.RepositoryIndexResponse()
            for (name, version), (state, reason) in sorted(rows.items()):
                if rights.may_use(name) and (not request.ready or state == "READY"):
                    response.models.add(name=name, version=str(version) if version else "", state=state,
                                        reason=reason)
            return response

        return await self._guard(context, work())

    async def _check_manage(self, context: grpc.aio.ServicerContext, what: str) -> None:
        if not may_manage() or self._local_manage_only(context):
            raise PermissionDenied(f"{what} needs a token with the manage scope, or (without a tokens file) a local "
                                   "caller or allow_remote_management = true")

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,  # noqa: N802
                                  context: grpc.aio.ServicerContext) -> Any:
        return await self._repository_change(
            request, context, "RepositoryModelLoad", self._manager.load_model,
            lambda name: pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True))

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,  # noqa: N802
                                    context: grpc.aio.ServicerContext) -> Any:
        return await self._repository_change(
            request, context, "RepositoryModelUnload", self._manager.unload_model,
            lambda name: pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True))

    async def _repository_change(self, request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
                                 context: grpc.aio.ServicerContext, rpc: str,
                                 change: Callable[[str, int], Awaitable[None]], answer: Callable[[str], Any]) -> Any:
        """A repository load or unload: the manage rights checked, then `change` applied to the named
        model (one version of it with sodd's `version` parameter) and answered by `answer(name)`."""
        async def work() -> Any:
            await self._check_manage(context, rpc)
            name = repository_model(request)
            await change(name, self._version_parameter(request.parameters))
            return answer(name)

        return await self._guard(context, work())

    @staticmethod
    def _version_parameter(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> int:
        """sodd's own `version` parameter: one version rather than the whole model."""
        if "version" not in parameters:
            return 0
        param = parameters["version"]
        value = getattr(param, param.WhichOneof("parameter_choice") or "string_param")
        return parse_version(str(value), "parameters[version]")

    async def _guard(self, context: grpc.aio.ServicerContext, work: Any) -> Any:
        try:
            return await work
        except SoddError as exc:
            code, message = exc.code, exc.message
        await context.abort(code, message)


def _package_version() -> str:
    try:
        return metadata.version("sodd")
    except metadata.PackageNotFoundError:
        return ""
