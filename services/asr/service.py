"""The ASR service for the kit: transcription (and translation, its other task), one operation bound to REST
(OpenAI's audio routes), gRPC (asr.v1.SpeechRecognition) and the Open Inference Protocol model "asr"."""

from services.kit.operations import Operation
from services.kit.service import Service

from . import rest
from .grpc_servicer import create_servicer
from .oip import create_oip_model
from .runner import ASRRunner
from .schemas import Transcription, TranscriptionPlan, plan_transcription
from .settings import ASRSettings


def create_service(settings: ASRSettings | None = None) -> Service:
    settings = settings or ASRSettings()
    runner = ASRRunner(settings)
    service = Service(name="asr", settings=settings, runner=runner)
    service.models = lambda: [
        {
            "id": runner.model_id,
            "task": "automatic-speech-recognition",
            "assistant": settings.assistant_model or None,
        }
    ]
    transcription: Operation[Transcription, TranscriptionPlan, None] = Operation(
        "transcribe",
        Transcription,
        None,
        service.batcher("transcribe", runner.predict_batch, decoder=runner),
        prepare=lambda request: plan_transcription(request, runner, settings),
        payload=lambda plan: plan.job,
        key=lambda plan: plan.job.batch_key,
        cost=lambda plan: runner.cost(plan.job),
        nbytes=lambda plan: plan.job.nbytes,
    )
    service.router = rest.create_router(transcription, runner)
    service.grpc.append(create_servicer(transcription, runner, settings))
    service.oip.append(create_oip_model(transcription, runner, settings))
    return service
