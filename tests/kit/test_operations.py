"""The operations layer itself: a plan's key, cost and bytes reach the batcher, `prepare`'s refusals reach every
transport naming the field, and one kit form reader spells OpenAI's lists, objects and files."""

import asyncio
import json
from dataclasses import dataclass

import grpc
import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings
from services.kit.errors import InvalidArgument
from services.kit.oip import Tensor
from services.kit.operations import FormSpelling, JobPlan, Operation, Upload, form_schema
from services.kit.service import GrpcServicer, Service
from services.kit.testing import ServerThread

MOST_WEIGHT = 100
BUDGET = 50  # the batcher's request budget, in cost units


class OpsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OPS_TEST_", extra="ignore")


class ShoutRequest(BaseModel):
    text: str = Field(min_length=1)
    weight: int = 1
    loud: bool = False


class ShoutResponse(BaseModel):
    echo: str


@dataclass(frozen=True)
class ShoutPlan:
    """A service's own plan: the four fields the kit reads, plus what its answer needs (`loud`)."""

    job: str
    key: str
    cost: float
    nbytes: int
    loud: bool


def plan_shout(request: ShoutRequest) -> ShoutPlan:
    if request.weight > MOST_WEIGHT:
        raise InvalidArgument(f"weight: {request.weight} exceeds the limit of {MOST_WEIGHT}", field="weight")
    return ShoutPlan(request.text, request.text[0], request.weight, len(request.text.encode()), request.loud)


def shout_response(result: str, plan: ShoutPlan) -> ShoutResponse:
    return ShoutResponse(echo=result.upper() if plan.loud else result)


class FormRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: Upload
    extras: list[Upload] = []
    tags: list[str] = []
    meta: dict[str, str] = {}
    note: str | None = Field(None, description="a free note")


class FormResponse(BaseModel):
    file: str
    extras: list[str]
    tags: list[str]
    meta: dict[str, str]
    note: str | None = None


SPELLING = FormSpelling(
    lists=frozenset({"tags"}),
    objects=frozenset({"meta"}),
    refused={"user": "end-user ids are not kept here; leave it out"},
    max_files={"extras": 2},
)


def form_summary(request: FormRequest) -> JobPlan:
    return JobPlan(
        FormResponse(
            file=request.file.data.decode(),
            extras=[upload.data.decode() for upload in request.extras],
            tags=request.tags,
            meta=request.meta,
            note=request.note,
        )
    )


class RecordingRunner:
    """Returns each job as its result and records what the batcher handed over with it."""

    def __init__(self):
        self.seen: list[tuple] = []

    def load(self) -> None: ...

    def warmup(self) -> None: ...

    def predict_batch(self, works):
        self.seen += [(work.payload, work.key, work.cost, work.nbytes) for work in works]
        return [work.payload for work in works]


def create_service(settings: OpsSettings) -> Service:
    runner = RecordingRunner()
    service = Service(name="ops", settings=settings, runner=runner)
    batcher = service.batcher("ops", runner.predict_batch)
    shout = Operation(
        "shout", ShoutRequest, ShoutResponse, batcher, prepare=plan_shout, respond=shout_response
    )
    form = Operation(
        "form", FormRequest, FormResponse, batcher, prepare=form_summary, respond=lambda result, plan: result
    )
    service.router = APIRouter()
    shout.add_route(service.router, "/v1/shout")
    form.add_route(service.router, "/v1/form", form=SPELLING)
    service.oip.append(
        shout.oip_model(
            "shout",
            [Tensor("text", "BYTES", (1,))],
            [Tensor("echo", "BYTES", (1,))],
            to_outputs=lambda response: {"echo": [response.echo]},
        )
    )
    say = shout.grpc_method(lambda response: response.echo.encode(), to_fields=json.loads)
    handler = grpc.method_handlers_generic_handler(
        "ops.v1.Ops", {"Shout": grpc.unary_unary_rpc_method_handler(say)}
    )
    service.grpc.append(
        GrpcServicer(lambda _, server: server.add_generic_rpc_handlers((handler,)), None, "ops.v1.Ops")
    )
    return service


@pytest.fixture(scope="module")
def server():
    settings = OpsSettings(log_level="warning", max_wait_ms=0, max_request_cost=BUDGET)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def runner_of(server) -> RecordingRunner:
    return server.services[0].runner


def refusal(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


# -- plans ---------------------------------------------------------------------------------------------------


class RecordingBatcher:
    def __init__(self):
        self.submitted: list[tuple] = []

    async def submit(self, job, **options):
        self.submitted.append((job, options))
        return job


def test_call_carries_the_plan_and_submits_its_job_key_cost_and_bytes():
    batcher = RecordingBatcher()
    shout = Operation(
        "shout", ShoutRequest, ShoutResponse, batcher, prepare=plan_shout, respond=shout_response
    )

    async def run():
        call = await shout.start(ShoutRequest(text="héllo", weight=7, loud=True), timeout=9.0)
        return call, await call.response()

    call, response = asyncio.run(run())
    assert call.plan == ShoutPlan("héllo", "h", 7, 6, True)
    assert response == ShoutResponse(echo="HÉLLO")  # respond read the plan's own field
    [(job, options)] = batcher.submitted
    assert job == "héllo"
    assert (options["key"], options["cost"], options["nbytes"], options["timeout"]) == ("h", 7, 6, 9.0)


def test_an_async_prepare_is_awaited():
    async def prepare(request: ShoutRequest) -> JobPlan:
        await asyncio.sleep(0)
        return JobPlan(request.text, key="k", cost=2.0, nbytes=3)

    batcher = RecordingBatcher()
    shout = Operation(
        "shout",
        ShoutRequest,
        ShoutResponse,
        batcher,
        prepare=prepare,
        respond=lambda result, plan: ShoutResponse(echo=result),
    )
    assert asyncio.run(shout(ShoutRequest(text="hi"))) == ShoutResponse(echo="hi")
    assert batcher.submitted == [
        ("hi", {"key": "k", "timeout": None, "disconnected": None, "cost": 2.0, "nbytes": 3})
    ]


def test_plan_key_cost_and_bytes_reach_the_runner_over_rest(server):
    response = httpx.post(server.rest_url + "/v1/shout", json={"text": "quiet", "weight": 3})
    assert response.json() == {"echo": "quiet"}
    assert ("quiet", "q", 3, 5) in runner_of(server).seen


def test_a_plan_over_the_budget_is_refused_by_the_batcher_before_compute(server):
    error = refusal(httpx.post(server.rest_url + "/v1/shout", json={"text": "heavy", "weight": BUDGET + 1}))
    assert error["param"] == "max_request_cost"
    assert f"request costs {BUDGET + 1} units of work" in error["message"]
    assert not [seen for seen in runner_of(server).seen if seen[0] == "heavy"]


# -- prepare's refusals on every transport -------------------------------------------------------------------


def test_prepare_refusal_is_a_400_naming_the_field_over_rest(server):
    error = refusal(httpx.post(server.rest_url + "/v1/shout", json={"text": "x", "weight": MOST_WEIGHT + 1}))
    assert error["param"] == "weight"
    assert error["message"] == f"weight: {MOST_WEIGHT + 1} exceeds the limit of {MOST_WEIGHT}"


def test_prepare_refusal_is_invalid_argument_naming_the_field_over_grpc(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        shout = channel.unary_unary("/ops.v1.Ops/Shout")
        assert shout(json.dumps({"text": "hey", "loud": True}).encode(), timeout=30) == b"HEY"
        with pytest.raises(grpc.RpcError) as refused:
            shout(json.dumps({"text": "x", "weight": MOST_WEIGHT + 1}).encode(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("weight: ")


def test_prepare_refusal_is_a_400_naming_the_field_over_oip(server):
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["oip"]}
    url = server.rest_url + "/v2/models/shout/infer"
    answered = httpx.post(url, json={"inputs": [text], "parameters": {"loud": True}})
    assert answered.json()["outputs"][0]["data"] == ["OIP"]
    refused = httpx.post(url, json={"inputs": [text], "parameters": {"weight": MOST_WEIGHT + 1}})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("weight: ")


# -- the kit's form reader -----------------------------------------------------------------------------------


def post_form(server, data: dict | list | None = None, files: list | None = None) -> httpx.Response:
    files = files if files is not None else [("file", ("main.txt", b"main"))]
    return httpx.post(server.rest_url + "/v1/form", data=data, files=files)


def test_form_reads_lists_objects_files_and_text(server):
    files = [("file", ("main.txt", b"main")), ("extras[]", ("a.txt", b"A")), ("extras[]", ("b.txt", b"B"))]
    data = {"tags[]": ["red", "green"], "meta[lang]": "en", "meta[tone]": "dry", "note": "hi"}
    response = post_form(server, data, files)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "file": "main",
        "extras": ["A", "B"],
        "tags": ["red", "green"],
        "meta": {"lang": "en", "tone": "dry"},
        "note": "hi",
    }


def test_form_takes_a_list_in_its_plain_spelling_too(server):
    assert post_form(server, {"tags": ["a", "b"]}).json()["tags"] == ["a", "b"]


@pytest.mark.parametrize(
    "data, files, param, message",
    [
        ({"user": "u-1"}, None, "user", "user: end-user ids are not kept here; leave it out"),
        (
            None,
            [("file", ("main.txt", b"main")), ("other", ("o.txt", b"o"))],
            "other",
            "other: unexpected file; this route takes files as: extras, file",
        ),
        ({"file": "not a file"}, [], "file", "file: upload a file (multipart/form-data), not text"),
        ({"note": ["one", "two"]}, None, "note", "note: given more than once"),
        (
            None,
            [("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))],
            "file",
            "file: given more than once; send exactly one file",
        ),
        (
            None,
            [("file", ("main.txt", b"main"))] + [("extras", (f"{n}.txt", b"x")) for n in range(3)],
            "extras",
            "extras: at most 2 file(s) in one request",
        ),
        ({"meta[lang]": ["en", "de"]}, None, "meta[lang]", "meta[lang]: given more than once"),
        ({"tags[0]": "a"}, None, "tags[0]", "tags[0]: send the list as tags[]=value, once per value"),
        ({"note[x]": "a"}, None, "note[x]", "note[x]: note takes one value, not a list or object"),
    ],
)
def test_form_refusals_name_the_part(server, data, files, param, message):
    error = refusal(post_form(server, data, files))
    assert (error["param"], error["message"]) == (param, message)


def test_form_field_the_model_does_not_take_is_refused_by_the_model(server):
    error = refusal(post_form(server, {"colour": "blue"}))
    assert "colour" in error["message"]


def test_form_schema_describes_files_lists_and_objects():
    content = form_schema(FormRequest, SPELLING)["requestBody"]["content"]["multipart/form-data"]
    properties = content["schema"]["properties"]
    assert properties["file"] == {"type": "string", "format": "binary"}
    assert properties["extras"] == {"type": "array", "items": {"type": "string", "format": "binary"}}
    assert "tags" not in properties and properties["tags[]"]["type"] == "array"
    assert content["encoding"] == {"tags[]": {"explode": True}}
    assert properties["meta"]["type"] == "object"
    assert properties["note"]["description"] == "a free note"
    assert content["schema"]["required"] == ["file"]


def test_form_route_publishes_that_schema(server):
    document = httpx.get(server.rest_url + "/openapi.json").json()
    published = document["paths"]["/v1/form"]["post"]["requestBody"]["content"]["multipart/form-data"]
    built = form_schema(FormRequest, SPELLING)["requestBody"]["content"]["multipart/form-data"]
    # FastAPI drops a `default: null`; the parts, their files and the list encoding are the reader's.
    assert published["schema"]["properties"].keys() == built["schema"]["properties"].keys()
    assert {name: published["schema"]["properties"][name] for name in ("file", "extras", "tags[]")} == {
        name: built["schema"]["properties"][name] for name in ("file", "extras", "tags[]")
    }
    assert published["encoding"] == built["encoding"] == {"tags[]": {"explode": True}}
