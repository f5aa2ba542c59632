"""gRPC servicer: the same validation and batcher as REST, over translation.v1.Translation."""

from google.protobuf.json_format import MessageToDict

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc
from services.kit.batcher import DynamicBatcher
from services.kit.grpc_server import time_remaining
from services.kit.validation import parse

from .runner import TranslationRunner
from .schemas import TranslateRequest, build_job, build_response
from .settings import TranslationSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Translation"].full_name


class TranslationServicer(pb_grpc.TranslationServicer):
    def __init__(self, runner: TranslationRunner, batcher: DynamicBatcher, settings: TranslationSettings):
        self.runner = runner
        self.batcher = batcher
        self.settings = settings

    async def Translate(self, request: pb.TranslateRequest, context) -> pb.TranslateResponse:
        fields = MessageToDict(request, preserving_proto_field_name=True)
        fields["text"] = list(request.text)
        body = parse(TranslateRequest, fields)
        self.runner.ensure_pair(body.pair)
        job = build_job(body, self.settings)
        hypotheses = await self.batcher.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job)
        )
        response = build_response(hypotheses, self.runner.model_name(job.pair))
        return pb.TranslateResponse(
            translations=response.translations,
            alternatives=[pb.Hypotheses(text=h) for h in response.alternatives or []],
            model=response.model,
        )

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(**info) for info in self.runner.model_infos()])
