"""REST routes: POST /v1/translate (GET /v1/models is served by the kit from `Service.models`)."""

from fastapi import APIRouter, Request

from services.kit.batcher import DynamicBatcher

from .runner import TranslationRunner
from .schemas import TranslateRequest, TranslateResponse, build_job, build_response
from .settings import TranslationSettings


def create_router(runner: TranslationRunner, batcher: DynamicBatcher, settings: TranslationSettings) -> APIRouter:
    router = APIRouter(tags=["translation"])

    @router.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True)
    async def translate(body: TranslateRequest, request: Request) -> TranslateResponse:
        runner.ensure_pair(body.pair)
        job = build_job(body, settings)
        hypotheses = await batcher.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job)
        )
        return build_response(hypotheses, runner.model_name(job.pair))

    return router
