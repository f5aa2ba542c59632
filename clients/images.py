"""Image generation client: POST /v1/images/generations and /v1/images/edits; imagegen.v1 gRPC.

`generate_stream` / `edit_stream` yield `Progress` after every denoising step, `PartialImage`
previews when asked for, and the `ImageResult` last, whichever protocol carries them. Passing
`on_progress=` to `generate` / `edit` uses the stream underneath and returns the result.
"""

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc

from .errors import error_from_event
from .grpc_channel import GrpcCaller
from .media import Source, read_source
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport, aiter_sse, iter_sse

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ImageOptions:
    """OpenAI's fields plus the Stable Diffusion extensions the service accepts."""

    n: int | None = None
    size: str | None = None  # "WIDTHxHEIGHT"; default: the model's native size (or the source image's)
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None  # image i uses seed + i
    scheduler: str | None = None  # ddim, pndm, euler, euler_ancestral, lms, dpm++_2m, ...
    negative_prompt: str | None = None
    output_format: str | None = None  # png, jpeg, webp
    output_compression: int | None = None
    partial_images: int | None = None  # streams only: previews along the way
    strength: float | None = None  # edits only: how much of the source to redraw

    def set_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to_proto(self, prompt: str, image: bytes = b"", mask: bytes = b"") -> pb.GenerateRequest:
        values = self.set_fields()
        if size := values.pop("size", None):
            width, _, height = size.lower().partition("x")
            values.update(width=int(width), height=int(height))
        return pb.GenerateRequest(prompt=prompt, image=image, mask=mask, **values)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes  # the encoded image (png, jpeg or webp)
    media_type: str
    seed: int
    nsfw_content_detected: bool | None = None

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(self.data)
        return Path(path)


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    size: str
    model: str | None = None
    task: str | None = None  # gRPC says which: text-to-image, image-to-image or inpaint

    @property
    def image(self) -> GeneratedImage:
        return self.images[0]


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int


@dataclass(frozen=True)
class PartialImage:
    data: bytes
    image_index: int
    partial_image_index: int
    step: int
    total_steps: int


Event = Progress | PartialImage | ImageResult
ProgressCallback = Callable[[Progress | PartialImage], None]


def _result_from_json(body: dict) -> ImageResult:
    media_type = MEDIA_TYPES.get(body.get("output_format", "png"), "application/octet-stream")
    images = [
        GeneratedImage(base64.b64decode(d["b64_json"]), media_type, d["seed"], d.get("nsfw_content_detected"))
        for d in body["data"]
    ]
    return ImageResult(images, body["size"], body.get("model"))


def _result_from_proto(message: pb.GenerateResponse) -> ImageResult:
    images = [
        GeneratedImage(
            i.data,
            i.media_type,
            i.seed,
            i.nsfw_content_detected if i.HasField("nsfw_content_detected") else None,
        )
        for i in message.images
    ]
    return ImageResult(images, f"{message.width}x{message.height}", message.model, message.task)


class _SSEAssembler:
    """OpenAI-style image events (`*.progress`, `*.partial_image`, one `*.completed` per image, `error`)."""

    def __init__(self) -> None:
        self.completed: list[dict] = []

    def event(self, name: str, data: str) -> Event | None:
        body = json.loads(data)
        if name == "error":
            raise error_from_event(body)
        kind = name.rsplit(".", 1)[-1]
        if kind == "progress":
            return Progress(body["step"], body["total_steps"])
        if kind == "partial_image":
            return PartialImage(
                base64.b64decode(body["b64_json"]),
                body.get("image_index", 0),
                body["partial_image_index"],
                body.get("step", 0),
                body.get("total_steps", 0),
            )
        if kind == "completed":
            self.completed.append(body)
        return None

    def result(self) -> ImageResult:
        if not self.completed:
            raise error_from_event(
                {"error": {"code": "internal", "message": "the stream ended without an image"}}
            )
        ordered = sorted(self.completed, key=lambda body: body.get("image_index", 0))
        return _result_from_json(
            {
                "data": ordered,
                "size": ordered[0]["size"],
                "output_format": ordered[0].get("output_format", "png"),
            }
        )


def _edit_request(
    image: Source, prompt: str, mask: Source | None, options: ImageOptions, stream: bool
) -> dict:
    content, filename = read_source(image, "image.png")
    files = {"image": (filename, content)}
    if mask is not None:
        mask_content, mask_name = read_source(mask, "mask.png")
        files["mask"] = (mask_name, mask_content)
    form = {"prompt": prompt, **{k: str(v) for k, v in options.set_fields().items()}}
    if stream:
        form.update(stream="true", stream_progress="true")
    return {"files": files, "data": form}


def _last_result(events: Iterator[Event], on_progress: ProgressCallback | None) -> ImageResult:
    for event in events:
        if isinstance(event, ImageResult):
            return event
        if on_progress:
            on_progress(event)
    raise RuntimeError("the stream ended without a result")


class ImagesClient:
    def __init__(self, transport: RestTransport):
        self.transport = transport

    def generate(self, prompt: str, *, on_progress: ProgressCallback | None = None, **options) -> ImageResult:
        if on_progress is not None:
            return _last_result(self.generate_stream(prompt, **options), on_progress)
        body = {"prompt": prompt, **ImageOptions(**options).set_fields()}
        return _result_from_json(self.transport.request("POST", "/v1/images/generations", json=body).json())

    def generate_stream(self, prompt: str, **options) -> Iterator[Event]:
        body = {
            "prompt": prompt,
            **ImageOptions(**options).set_fields(),
            "stream": True,
            "stream_progress": True,
        }
        yield from self._events("/v1/images/generations", json=body)

    def edit(
        self,
        image: Source,
        prompt: str,
        *,
        mask: Source | None = None,
        on_progress: ProgressCallback | None = None,
        **options,
    ) -> ImageResult:
        """Image-to-image, or inpainting when a mask is given (its transparent/white pixels are redrawn)."""
        if on_progress is not None:
            return _last_result(self.edit_stream(image, prompt, mask=mask, **options), on_progress)
        request = _edit_request(image, prompt, mask, ImageOptions(**options), stream=False)
        return _result_from_json(self.transport.request("POST", "/v1/images/edits", **request).json())

    def edit_stream(
        self, image: Source, prompt: str, *, mask: Source | None = None, **options
    ) -> Iterator[Event]:
        yield from self._events(
            "/v1/images/edits", **_edit_request(image, prompt, mask, ImageOptions(**options), True)
        )

    def _events(self, path: str, **request) -> Iterator[Event]:
        assembler = _SSEAssembler()
        with self.transport.stream("POST", path, **request) as response:
            for sse in iter_sse(response):
                if (event := assembler.event(sse.event, sse.data)) is not None:
                    yield event
        yield assembler.result()


class AsyncImagesClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def generate(
        self, prompt: str, *, on_progress: ProgressCallback | None = None, **options
    ) -> ImageResult:
        if on_progress is not None:
            async for event in self.generate_stream(prompt, **options):
                if isinstance(event, ImageResult):
                    return event
                on_progress(event)
            raise RuntimeError("the stream ended without a result")
        body = {"prompt": prompt, **ImageOptions(**options).set_fields()}
        response = await self.transport.request("POST", "/v1/images/generations", json=body)
        return _result_from_json(response.json())

    async def generate_stream(self, prompt: str, **options) -> AsyncIterator[Event]:
        body = {
            "prompt": prompt,
            **ImageOptions(**options).set_fields(),
            "stream": True,
            "stream_progress": True,
        }
        async for event in self._events("/v1/images/generations", json=body):
            yield event

    async def edit(self, image: Source, prompt: str, *, mask: Source | None = None, **options) -> ImageResult:
        request = _edit_request(image, prompt, mask, ImageOptions(**options), stream=False)
        return _result_from_json((await self.transport.request("POST", "/v1/images/edits", **request)).json())

    async def _events(self, path: str, **request) -> AsyncIterator[Event]:
        assembler = _SSEAssembler()
        async with self.transport.stream("POST", path, **request) as response:
            async for sse in aiter_sse(response):
                if (event := assembler.event(sse.event, sse.data)) is not None:
                    yield event
        yield assembler.result()


class ImagesGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.ImageGenerationStub(caller.channel)

    def generate(
        self,
        prompt: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **options,
    ) -> ImageResult:
        if on_progress is not None:
            return _last_result(self.generate_stream(prompt, timeout=timeout, **options), on_progress)
        request = ImageOptions(**options).to_proto(prompt)
        return _result_from_proto(self.caller.unary(self.stub.Generate, request, timeout=timeout))

    def generate_stream(self, prompt: str, *, timeout: float | None = None, **options) -> Iterator[Event]:
        yield from self._events(ImageOptions(**options).to_proto(prompt), timeout)

    def edit(
        self,
        image: Source,
        prompt: str,
        *,
        mask: Source | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **options,
    ) -> ImageResult:
        request = ImageOptions(**options).to_proto(
            prompt, read_source(image)[0], read_source(mask)[0] if mask is not None else b""
        )
        if on_progress is not None:
            return _last_result(self._events(request, timeout), on_progress)
        return _result_from_proto(self.caller.unary(self.stub.Generate, request, timeout=timeout))

    def _events(self, request: pb.GenerateRequest, timeout: float | None) -> Iterator[Event]:
        for message in self.caller.unary_stream(self.stub.GenerateStream, request, timeout=timeout):
            which = message.WhichOneof("event")
            if which == "progress":
                yield Progress(message.progress.step, message.progress.total_steps)
            elif which == "partial_image":
                partial = message.partial_image
                for index, preview in enumerate(partial.previews):
                    yield PartialImage(
                        preview.data, index, partial.partial_image_index, partial.step, partial.total_steps
                    )
            elif which == "result":
                yield _result_from_proto(message.result)


SERVICE_CLIENTS = ServiceClients(
    attribute="images",
    rest=ImagesClient,
    async_rest=AsyncImagesClient,
    grpc=ImagesGrpcClient,
)
