"""The translation service for the kit: one operation, bound to REST, gRPC and the Open Inference Protocol."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc
from services.kit.oip import Tensor
from services.kit.operations import JobPlan, Operation
from services.kit.service import GrpcServicer, Service

from .runner import TranslationRunner
from .schemas import TranslateRequest, TranslateResponse, build_job, build_response
from .settings import TranslationSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Translation"].full_name
# Characters of text a request may have to be tokenized on the event loop (about a millisecond of Python).
INLINE_TOKENIZING_CHARS = 400


def create_service(settings: TranslationSettings | None = None) -> Service:
    settings = settings or TranslationSettings()
    runner = TranslationRunner(settings)
    service = Service(
        name="translation",
        settings=settings,
        runner=runner,
        models=lambda: [{**info, "quantization": runner.quantization} for info in runner.model_infos()],
    )

    # Tokenizing 32 texts of 2,000 characters takes up to half a second of Python: off the event loop, in a pool of
    # its own (protocol parsing keeps the loop's default pool). A short request is tokenized on the loop: there it
    # takes under a millisecond, less than the hand-off to the pool and back costs (bench/bench_overhead.py).
    tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="translation-tokenize")

    async def prepare(body: TranslateRequest) -> JobPlan:
        runner.ensure_pair(body.pair)
        if sum(len(text) for text in body.texts()) <= INLINE_TOKENIZING_CHARS:
            job = build_job(body, settings, runner)
        else:
            job = await asyncio.get_running_loop().run_in_executor(tokenizing, build_job, body, settings, runner)
        return JobPlan(job, key=runner.batch_key(job), cost=runner.cost(job))

    translate = Operation(
        "translate",
        TranslateRequest,
        TranslateResponse,
        service.batcher("translate", runner.predict_batch, decoder=runner),
        prepare=prepare,
        respond=lambda hypotheses, plan: build_response(hypotheses, runner.model_name(plan.job.pair)),
    )

    service.router = APIRouter(tags=["translation"])
    translate.add_route(service.router, "/v1/translate")

    servicer = pb_grpc.TranslationServicer()
    servicer.Translate = translate.grpc_method(
        lambda response: pb.TranslateResponse(
            translations=response.translations,
            alternatives=[pb.Hypotheses(text=texts) for texts in response.alternatives or []],
            model=response.model,
        )
    )

    async def list_models(request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(**info) for info in runner.model_infos()])

    servicer.ListModels = list_models
    service.grpc.append(GrpcServicer(pb_grpc.add_TranslationServicer_to_server, servicer, SERVICE_NAME))

    service.oip.append(
        translate.oip_model(
            "translation",
            inputs=[Tensor("text", "BYTES", (-1,), max_elements=settings.max_texts)],
            outputs=[
                Tensor("translations", "BYTES", (-1,)),
                # One row per text when num_return_sequences > 1.
                Tensor("alternatives", "BYTES", (-1, -1)),
                Tensor("model", "BYTES", (1,)),
            ],
            to_outputs=lambda response: {
                "translations": response.translations,
                **({"alternatives": response.alternatives} if response.alternatives else {}),
                "model": [response.model],
            },
        )
    )
    return service
