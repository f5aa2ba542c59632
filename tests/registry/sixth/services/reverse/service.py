"""The sixth service for the kit: one operation, bound to REST, gRPC and the Open Inference Protocol."""

from fastapi import APIRouter
from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from protos import reverse_pb2 as pb
from protos import reverse_pb2_grpc as pb_grpc
from services.kit.config import ServiceSettings
from services.kit.oip import Tensor
from services.kit.operations import JobPlan, Operation
from services.kit.service import GrpcServicer, Service

from .runner import ReverseRunner

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reverse"].full_name


class ReverseSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REVERSE_", extra="ignore")


class ReverseRequest(BaseModel):
    text: str = Field(min_length=1, max_length=1000)


class ReverseResponse(BaseModel):
    text: str


def create_service(settings: ReverseSettings | None = None) -> Service:
    settings = settings or ReverseSettings()
    runner = ReverseRunner()
    service = Service(name="reverse", settings=settings, runner=runner, models=lambda: [{"id": "reverse"}])
    reverse = Operation(
        "reverse",
        ReverseRequest,
        ReverseResponse,
        service.batcher("reverse", runner.predict_batch),
        prepare=JobPlan,
        respond=lambda text, plan: ReverseResponse(text=text),
    )

    service.router = APIRouter(tags=["reverse"])
    reverse.add_route(service.router, "/v1/reverse")

    servicer = pb_grpc.ReverseServicer()
    servicer.Reverse = reverse.grpc_method(lambda response: pb.ReverseResponse(text=response.text))
    service.grpc.append(GrpcServicer(pb_grpc.add_ReverseServicer_to_server, servicer, SERVICE_NAME))

    service.oip.append(
        reverse.oip_model(
            "reverse",
            inputs=[Tensor("text", "BYTES", (1,))],
            outputs=[Tensor("text", "BYTES", (1,))],
            to_outputs=lambda response: {"text": [response.text]},
        )
    )
    return service
