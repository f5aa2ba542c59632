"""Property-based fuzzing of every REST operation from the servers' own OpenAPI schemas (schemathesis).

Valid and invalid requests are generated for each operation of the platform's app (translation, ASR, TTS,
image generation) and of the ViT server's TF Serving app. Whatever arrives, the answer must never be a 5xx,
and a success must match the response schema the server publishes.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

# Bounded so that the whole file runs in about a minute on two cores; derandomized so that a failure repeats.
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
            except Exception as exc:  # every operation runs; all failures are reported together
                # Hypothesis wraps what failed (e.g. in a Flaky group): name each inner failure, not just the wrapper.
                inner = "".join(f"\n  - {type(sub).__name__}: {sub}" for sub in getattr(exc, "exceptions", ()))
                failures.append(f"{operation.label} ({mode.value} data): {exc}{inner}")
    assert labels, f"no operations in {schema_url}"
    return failures


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
