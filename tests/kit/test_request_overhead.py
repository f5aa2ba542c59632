"""What the per-request shortcuts keep: the JSON an operation answers is byte for byte what FastAPI's response_model
path wrote (None fields left out, non-ASCII text as UTF-8), answers that are not exactly the response model still go
through FastAPI's filter, and generated request ids keep their shape."""

import re

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.kit.batcher import DynamicBatcher
from services.kit.logs import request_id_from
from services.kit.operations import JobPlan, Operation


class Greeting(BaseModel):
    text: str


class Reply(BaseModel):
    text: str
    score: float
    note: str | None = None
    tags: list[str] | None = None


class ReplyWithSecret(Reply):
    secret: str = "kept out of the answer"


def reply_for(text: str) -> Reply:
    return Reply(text=f"{text} – grüße, 你好", score=0.1, tags=["a", "b"])


def app_with(respond) -> tuple[FastAPI, DynamicBatcher]:
    batcher = DynamicBatcher("overhead-test", lambda works: [work.payload for work in works], max_wait_ms=0)
    operation = Operation(
        "greet", Greeting, Reply, batcher, prepare=lambda body: JobPlan(body.text), respond=respond
    )
    router = APIRouter()
    operation.add_route(router, "/v1/greet")

    @router.post("/v1/fastapi", response_model=Reply, response_model_exclude_none=True)
    async def fastapi_encoded(body: Greeting):  # FastAPI's own validation and encoding, for comparison
        return reply_for(body.text)

    app = FastAPI()
    app.include_router(router)
    return app, batcher


def test_the_answer_is_the_json_fastapi_wrote():
    app, _ = app_with(lambda text, plan: reply_for(text))
    with TestClient(app) as client:
        ours = client.post("/v1/greet", json={"text": "hallo"})
        theirs = client.post("/v1/fastapi", json={"text": "hallo"})
    assert ours.status_code == theirs.status_code == 200
    assert ours.content == theirs.content
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    assert "note" not in ours.json()
    # The response model is still what OpenAPI says the route answers.
    schema = app.openapi()["paths"]["/v1/greet"]["post"]["responses"]["200"]["content"]["application/json"]
    assert schema["schema"]["$ref"].endswith("/Reply")


def test_answers_other_than_the_response_model_go_through_fastapi():
    app, _ = app_with(lambda text, plan: ReplyWithSecret(**reply_for(text).model_dump()))
    with TestClient(app) as client:
        subclass = client.post("/v1/greet", json={"text": "x"}).json()
    assert "secret" not in subclass and subclass["text"].startswith("x")

    app, _ = app_with(lambda text, plan: {"text": text, "score": 1, "extra": "dropped"})
    with TestClient(app) as client:
        plain = client.post("/v1/greet", json={"text": "y"}).json()
    assert plain == {"text": "y", "score": 1.0}


def test_generated_request_ids_are_32_hex_digits_and_distinct():
    ids = {request_id_from(None) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert request_id_from(b"caller-id-1") == "caller-id-1"
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_from("has space"))
