"""A model-free service for testing the kit: the runner sleeps, echoes, or fails on request.

Run as a script it serves on ECHO_REST_PORT / ECHO_GRPC_PORT, like `python -m services.<name>`.
"""

import sys
import threading
import time
from pathlib import Path

import grpc
from fastapi import APIRouter
from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.kit.config import ServiceSettings  # noqa: E402
from services.kit.errors import InvalidArgument  # noqa: E402
from services.kit.grpc_server import time_remaining  # noqa: E402
from services.kit.oip import Tensor  # noqa: E402
from services.kit.operations import Operation  # noqa: E402
from services.kit.service import GrpcServicer, Service  # noqa: E402

GRPC_METHOD = "/echo.v1.Echo/Say"


class EchoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")
    load_seconds: float = 0.0


class EchoRequest(BaseModel):
    text: str = Field(min_length=1)
    delay: float = Field(0.0, ge=0, le=30)
    # Sleep in slices that check Work.cancelled (as a decoding loop checks between steps) instead of at once.
    stepwise: bool = False
    fail: str | None = None


class EchoResponse(BaseModel):
    echo: str


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
            if request.fail == "invalid":
                results.append(InvalidArgument("text: refused on request", field="text"))
            elif request.fail == "crash":
                results.append(RuntimeError("boom"))
            else:
                results.append({"echo": request.text})
        return results


def create_service(settings: EchoSettings | None = None) -> Service:
    """The whole of a service's protocol glue: one operation, bound to REST, gRPC and the OIP."""
    settings = settings or EchoSettings()
    runner = EchoRunner(settings)
    service = Service(name="echo", settings=settings, runner=runner, models=lambda: [{"id": "echo-1"}])
    echo = Operation(
        "echo", EchoRequest, EchoResponse, service.batcher("echo", runner.predict_batch),
        prepare=lambda body: body, respond=lambda result, body: EchoResponse(**result),
    )
    service.router = APIRouter()
    echo.add_route(service.router, "/v1/echo")
    service.oip.append(echo.oip_model("echo", [Tensor("text", "BYTES", (1,))], [Tensor("echo", "BYTES", (1,))],
                                      to_outputs=lambda response: {"echo": [response.echo]}))

    # Without a proto: JSON bytes in, the echoed text's bytes out.
    async def say(request: bytes, context) -> bytes:
        response = await echo(EchoRequest.model_validate_json(request), timeout=time_remaining(context))
        return response.echo.encode()

    handler = grpc.method_handlers_generic_handler("echo.v1.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    service.grpc.append(GrpcServicer(lambda _, server: server.add_generic_rpc_handlers((handler,)), None, "echo.v1.Echo"))
    return service


if __name__ == "__main__":
    from services.kit.server import run

    settings = EchoSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
