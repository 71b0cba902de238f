from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
    MODEL_STATE_DRAINING: _ClassVar[ModelState]
    MODEL_STATE_UNLOADED: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_FAILED: ModelState
MODEL_STATE_DRAINING: ModelState
MODEL_STATE_UNLOADED: ModelState

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class ClassThresholds(_message.Message):
    __slots__ = ("thresholds",)
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    thresholds: _containers.ScalarMap[int, float]
    def __init__(self, thresholds: _Optional[_Mapping[int, float]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "model", "version", "threshold", "class_thresholds", "max_detections", "request_id", "slicing")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLASS_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SLICING_FIELD_NUMBER: _ClassVar[int]
    image: Image
    model: str
    version: int
    threshold: float
    class_thresholds: ClassThresholds
    max_detections: int
    request_id: str
    slicing: Slicing
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., threshold: _Optional[float] = ..., class_thresholds: _Optional[_Union[ClassThresholds, _Mapping]] = ..., max_detections: _Optional[int] = ..., request_id: _Optional[str] = ..., slicing: _Optional[_Union[Slicing, _Mapping]] = ...) -> None: ...

class Slicing(_message.Message):
    __slots__ = ("enabled", "slice_height", "slice_width", "overlap_height_ratio", "overlap_width_ratio", "full_image", "merge", "match_metric", "match_threshold", "class_agnostic", "auto")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SLICE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SLICE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_HEIGHT_RATIO_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_WIDTH_RATIO_FIELD_NUMBER: _ClassVar[int]
    FULL_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    MATCH_METRIC_FIELD_NUMBER: _ClassVar[int]
    MATCH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLASS_AGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    slice_height: int
    slice_width: int
    overlap_height_ratio: float
    overlap_width_ratio: float
    full_image: bool
    merge: str
    match_metric: str
    match_threshold: float
    class_agnostic: bool
    auto: bool
    def __init__(self, enabled: _Optional[bool] = ..., slice_height: _Optional[int] = ..., slice_width: _Optional[int] = ..., overlap_height_ratio: _Optional[float] = ..., overlap_width_ratio: _Optional[float] = ..., full_image: _Optional[bool] = ..., merge: _Optional[str] = ..., match_metric: _Optional[str] = ..., match_threshold: _Optional[float] = ..., class_agnostic: _Optional[bool] = ..., auto: _Optional[bool] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("cls_id", "label", "score", "xmin", "ymin", "xmax", "ymax")
    CLS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    XMIN_FIELD_NUMBER: _ClassVar[int]
    YMIN_FIELD_NUMBER: _ClassVar[int]
    XMAX_FIELD_NUMBER: _ClassVar[int]
    YMAX_FIELD_NUMBER: _ClassVar[int]
    cls_id: int
    label: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    def __init__(self, cls_id: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., xmin: _Optional[float] = ..., ymin: _Optional[float] = ..., xmax: _Optional[float] = ..., ymax: _Optional[float] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_seconds", "preprocess_seconds", "inference_seconds", "postprocess_seconds", "queue_seconds", "batch_size", "slicing_seconds", "merging_seconds")
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SLICING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MERGING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    decode_seconds: float
    preprocess_seconds: float
    inference_seconds: float
    postprocess_seconds: float
    queue_seconds: float
    batch_size: int
    slicing_seconds: float
    merging_seconds: float
    def __init__(self, decode_seconds: _Optional[float] = ..., preprocess_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., postprocess_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ..., slicing_seconds: _Optional[float] = ..., merging_seconds: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("request_id", "boxes", "image_width", "image_height", "model", "version", "device", "timings", "slices")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    image_width: int
    image_height: int
    model: str
    version: int
    device: str
    timings: StageTimings
    slices: int
    def __init__(self, request_id: _Optional[str] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., device: _Optional[str] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., slices: _Optional[int] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DetectStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: DetectResponse
    error: FrameError
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[DetectResponse, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class DetectBatchRequest(_message.Message):
    __slots__ = ("images", "model", "version", "threshold", "class_thresholds", "max_detections", "request_id", "slicing")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLASS_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SLICING_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    model: str
    version: int
    threshold: float
    class_thresholds: ClassThresholds
    max_detections: int
    request_id: str
    slicing: Slicing
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., threshold: _Optional[float] = ..., class_thresholds: _Optional[_Union[ClassThresholds, _Mapping]] = ..., max_detections: _Optional[int] = ..., request_id: _Optional[str] = ..., slicing: _Optional[_Union[Slicing, _Mapping]] = ...) -> None: ...

class DetectBatchResponse(_message.Message):
    __slots__ = ("request_id", "results")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    results: _containers.RepeatedCompositeFieldContainer[DetectResponse]
    def __init__(self, request_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[DetectResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "directory", "model_name", "labels", "input_height", "input_width", "device", "state", "state_reason", "is_default", "max_batch_size", "default_threshold", "program_format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    directory: str
    model_name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    input_height: int
    input_width: int
    device: str
    state: ModelState
    state_reason: str
    is_default: bool
    max_batch_size: int
    default_threshold: float
    program_format: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., directory: _Optional[str] = ..., model_name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., device: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., state_reason: _Optional[str] = ..., is_default: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., default_threshold: _Optional[float] = ..., program_format: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("device", "available", "reason", "facts")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    device: str
    available: bool
    reason: str
    facts: _containers.ScalarMap[str, str]
    def __init__(self, device: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PluginInfo(_message.Message):
    __slots__ = ("name", "device_types", "devices", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    device_types: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    error: str
    def __init__(self, name: _Optional[str] = ..., device_types: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    def __init__(self, plugins: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelEvent(_message.Message):
    __slots__ = ("name", "version", "state", "reason", "device", "time_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: ModelState
    reason: str
    device: str
    time_unix: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ..., time_unix: _Optional[float] = ...) -> None: ...
