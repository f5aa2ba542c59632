"""The client's error classes against the kit's error codes: an error event inside a stream (no HTTP status, no
gRPC status, only the kit's `code`) gets the class the same error gets over gRPC."""

import inspect

import grpc
import pytest

from clients.errors import ERRORS_BY_CODE, error_from_event, error_from_rpc
from services.kit import errors as kit_errors


def kit_error_types() -> list[type[kit_errors.ServiceError]]:
    return [
        value
        for value in vars(kit_errors).values()
        if inspect.isclass(value) and issubclass(value, kit_errors.ServiceError)
    ]


class StatusError(grpc.RpcError):
    """A failed call as grpc raises it: a status code and details."""

    def __init__(self, code: grpc.StatusCode):
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "failed"

    def trailing_metadata(self):
        return ()


def test_the_client_knows_every_error_code_of_the_kit_and_no_other():
    assert sorted(ERRORS_BY_CODE) == sorted(error.code for error in kit_error_types())


@pytest.mark.parametrize("kit_error", kit_error_types(), ids=lambda error: error.code)
def test_a_stream_error_event_gets_the_class_its_grpc_status_gets(kit_error):
    event = kit_error("failed").body()
    from_event = error_from_event(event)
    assert type(from_event) is type(error_from_rpc(StatusError(kit_error.grpc_code)))
    assert from_event.code == kit_error.code
    assert from_event.message == "failed"
