"""Property-based fuzzing of every REST operation from the servers' own OpenAPI schemas (schemathesis).

Valid and invalid requests are generated for each operation of the platform's app (translation, ASR, TTS,
image generation) and of the ViT server's TF Serving app. Whatever arrives, the answer must never be a 5xx,
and a success must match the response schema the server publishes.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyFailure, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

# Bounded so that the whole file runs in about a minute on two cores; derandomized so that a failure repeats;
# no deadline, so that a busy machine's slow answers are no failure.
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
CHECKS = [not_a_server_error, response_schema_conformance]
TIMEOUT_S = 60


def only_a_slow_call(exc: Exception) -> bool:
    """Hypothesis's "unreliable" report whose every failure was a client timeout, gone when replayed: the
    machine was busy, the server neither answered 5xx nor broke its schema (those still fail)."""
    inner = getattr(exc, "exceptions", ())
    return isinstance(exc, FlakyFailure) and bool(inner) and all(isinstance(e, requests.Timeout) for e in inner)


def fuzz(schema_url: str, base_url: str) -> list[str]:
    """Runs every operation with valid and invalid data; returns what failed, one report per operation."""
    schema = schemathesis.openapi.from_url(schema_url)
    labels, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=TIMEOUT_S)

            try:
                run()
            except Unsatisfiable:  # nothing to get wrong: the operation takes no input
                continue
            except FlakyFailure as exc:
                if not only_a_slow_call(exc):
                    failures.append(report(operation.label, mode, exc))
            except Exception as exc:  # every operation runs; all failures are reported together
                failures.append(report(operation.label, mode, exc))
    assert labels, f"no operations in {schema_url}"
    return failures


def report(label: str, mode: GenerationMode, exc: Exception) -> str:
    # Hypothesis wraps what failed (e.g. in a Flaky group): name each inner failure, not just the wrapper.
    inner = "".join(f"\n  - {type(sub).__name__}: {sub}" for sub in getattr(exc, "exceptions", ()))
    return f"{label} ({mode.value} data): {exc}{inner}"


@pytest.mark.parametrize("app", ["platform", "vit"])
def test_no_operation_answers_5xx_or_breaks_its_schema(platform, app):
    base_url = platform.rest_url if app == "platform" else platform.vit_rest_url
    failures = fuzz(base_url + "/openapi.json", base_url)
    assert not failures, "\n\n".join(failures)
    platform.assert_alive()


def test_the_fuzzed_schemas_cover_every_service(platform):
    def paths(base_url: str) -> set[str]:
        schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
        return {result.ok().path for result in schema.get_all_operations()}

    assert {"/v1/translate", "/v1/audio/transcriptions", "/v1/audio/speech", "/v1/images/generations",
            "/v1/images/edits"} <= paths(platform.rest_url)
    assert any(path.endswith(":predict") for path in paths(platform.vit_rest_url))


def test_a_timeout_gone_on_replay_is_tolerated_but_a_flaky_server_error_is_not():
    slow = FlakyFailure("Inconsistent results from replaying a test case", [requests.ReadTimeout("read timed out")])
    assert only_a_slow_call(slow)
    server_error = AssertionError("Server error: 500 Internal Server Error")
    assert not only_a_slow_call(FlakyFailure("Inconsistent results", [requests.ReadTimeout("slow"), server_error]))
    assert not only_a_slow_call(FlakyFailure("Inconsistent results", [server_error]))
