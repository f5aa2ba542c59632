from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "n", "width", "height", "steps", "guidance_scale", "seed", "scheduler", "output_format", "output_compression", "image", "mask", "strength", "partial_images")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_IMAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    output_format: str
    output_compression: int
    image: bytes
    mask: bytes
    strength: float
    partial_images: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., n: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., scheduler: _Optional[str] = ..., output_format: _Optional[str] = ..., output_compression: _Optional[int] = ..., image: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., strength: _Optional[float] = ..., partial_images: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "media_type", "seed", "nsfw_content_detected")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NSFW_CONTENT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    seed: int
    nsfw_content_detected: bool
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ..., seed: _Optional[int] = ..., nsfw_content_detected: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "model", "width", "height", "task")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    model: str
    width: int
    height: int
    task: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., task: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class PartialImage(_message.Message):
    __slots__ = ("partial_image_index", "step", "total_steps", "previews")
    PARTIAL_IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    partial_image_index: int
    step: int
    total_steps: int
    previews: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, partial_image_index: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., previews: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "partial_image", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    partial_image: PartialImage
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., partial_image: _Optional[_Union[PartialImage, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...
