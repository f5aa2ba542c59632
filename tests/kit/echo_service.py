"""A model-free service for testing the kit: the runner sleeps, echoes, or fails on request.

Run as a script it serves on ECHO_REST_PORT / ECHO_GRPC_PORT, like `python -m services.<name>`.
"""

import json
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.kit.batcher import Done  # noqa: E402
from services.kit.config import ServiceSettings  # noqa: E402
from services.kit.errors import InvalidArgument  # noqa: E402
from services.kit.oip import Tensor  # noqa: E402
from services.kit.operations import Call, JobPlan, Operation, Upload  # noqa: E402
from services.kit.service import GrpcServicer, Service  # noqa: E402
from services.kit.streaming import SSE_MEDIA_TYPE, rest_stream, sse_event  # noqa: E402

GRPC_METHOD = "/echo.v1.Echo/Say"
GRPC_STREAM_METHOD = "/echo.v1.Echo/SayInParts"


class EchoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")
    load_seconds: float = 0.0


class EchoRequest(BaseModel):
    text: str = Field(min_length=1)
    delay: float = Field(0.0, ge=0, le=30)
    # Sleep in slices that check Work.cancelled (as a decoding loop checks between steps) instead of at once.
    stepwise: bool = False
    fail: str | None = None
    # Events the runner emits before its result (the echo's words, one each), for the streaming operation.
    parts: int = Field(0, ge=0, le=16)


class EchoFileRequest(BaseModel):
    """A multipart form: the text to echo as an uploaded file."""

    model_config = ConfigDict(extra="forbid")

    file: Upload
    delay: float = Field(0.0, ge=0, le=30)


class EchoResponse(BaseModel):
    echo: str


@dataclass(frozen=True)
class Part:
    index: int
    text: str


class EchoRunner:
    def __init__(self, settings: EchoSettings):
        self.settings = settings
        self.loaded = threading.Event()
        self.computed: list[str] = []
        self.threads: dict[str, set[int]] = {"load": set(), "warmup": set(), "predict": set(), "close": set()}

    def load(self) -> None:
        self.threads["load"].add(threading.get_ident())
        time.sleep(self.settings.load_seconds)
        self.loaded.set()

    def warmup(self) -> None:
        self.threads["warmup"].add(threading.get_ident())

    def close(self) -> None:
        self.threads["close"].add(threading.get_ident())

    def predict_batch(self, works):
        self.threads["predict"].add(threading.get_ident())
        results = []
        for work in works:
            request: EchoRequest = work.payload
            if request.stepwise:
                ends = time.monotonic() + request.delay
                while time.monotonic() < ends and not work.cancelled:
                    time.sleep(0.02)
            else:
                time.sleep(request.delay)
            self.computed.append(request.text)
            for index in range(request.parts):
                work.emit(Part(index, request.text))
            if request.fail == "invalid":
                results.append(InvalidArgument("text: refused on request", field="text"))
            elif request.fail == "crash":
                results.append(RuntimeError("boom"))
            else:
                results.append({"echo": request.text})
        return results


def create_service(settings: EchoSettings | None = None) -> Service:
    """The whole of a service's protocol glue: a unary and a streaming operation, bound to REST, gRPC and the OIP."""
    settings = settings or EchoSettings()
    runner = EchoRunner(settings)
    service = Service(name="echo", settings=settings, runner=runner, models=lambda: [{"id": "echo-1"}])
    batcher = service.batcher("echo", runner.predict_batch)
    echo = Operation(
        "echo",
        EchoRequest,
        EchoResponse,
        batcher,
        prepare=JobPlan,
        respond=lambda result, plan: EchoResponse(**result),
    )
    echo_file = Operation(
        "echo_file",
        EchoFileRequest,
        EchoResponse,
        batcher,
        prepare=lambda body: JobPlan(EchoRequest(text=body.file.data.decode(errors="replace"), delay=body.delay)),
        respond=lambda result, plan: EchoResponse(**result),
    )
    # The same request answered part by part: each event the runner emits, then the echo.
    echo_in_parts = Operation("echo_in_parts", EchoRequest, None, batcher, prepare=JobPlan)

    async def parts(call: Call) -> AsyncIterator[tuple[str, dict]]:
        async for event in call.events():
            if isinstance(event, Part):
                yield "echo.part", {"index": event.index, "text": event.text}
            elif isinstance(event, Done):
                yield "echo.done", event.result

    async def sse(call: Call):
        events = (sse_event({"type": kind, **data}, event=kind) async for kind, data in parts(call))
        return await rest_stream(events, SSE_MEDIA_TYPE)

    async def oip_parts(call: Call):
        async for _, data in parts(call):
            # The echo itself comes last, as part -1.
            yield {"echo": [data.get("text", data.get("echo"))], "part": [data.get("index", -1)]}

    async def oip_whole(call: Call):
        return {"echo": [(await call.result())["echo"]], "part": [-1]}

    service.router = APIRouter()
    echo.add_route(service.router, "/v1/echo")
    echo_in_parts.add_route(service.router, "/v1/echo/parts", answer=sse)
    echo_file.add_route(service.router, "/v1/echo/file", form=True)
    service.oip.append(
        echo.oip_model(
            "echo",
            [Tensor("text", "BYTES", (1,))],
            [Tensor("echo", "BYTES", (1,))],
            to_outputs=lambda response: {"echo": [response.echo]},
        )
    )
    service.oip.append(
        echo_in_parts.oip_model(
            "echo-parts",
            [Tensor("text", "BYTES", (1,))],
            [Tensor("echo", "BYTES", (1,)), Tensor("part", "INT32", (1,))],
            answer=oip_whole,
            stream=oip_parts,
        )
    )

    # Without a proto: JSON bytes in; the echoed text's bytes out, or one JSON message per part.
    say = echo.grpc_method(lambda response: response.echo.encode(), to_fields=json.loads)

    async def json_parts(call: Call):
        async for kind, data in parts(call):
            yield json.dumps({"type": kind, **data}).encode()

    say_in_parts = echo_in_parts.grpc_stream(json_parts, to_fields=json.loads)
    handler = grpc.method_handlers_generic_handler(
        "echo.v1.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "SayInParts": grpc.unary_stream_rpc_method_handler(say_in_parts),
        },
    )
    service.grpc.append(
        GrpcServicer(lambda _, server: server.add_generic_rpc_handlers((handler,)), None, "echo.v1.Echo")
    )
    return service


if __name__ == "__main__":
    from services.kit.server import run

    settings = EchoSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
