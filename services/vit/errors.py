"""TF Serving status codes the kit's error types do not cover, each mapped once to HTTP and gRPC."""

import grpc

from services.kit.errors import ServiceError


class FailedPrecondition(ServiceError):
    """TF Serving's status for a Predict on a signature the model lacks, or a label on a version that is not
    available (HTTP 400 in its REST API)."""

    http_status = 400
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    code = "failed_precondition"


class Unimplemented(ServiceError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    code = "unimplemented"


class Unknown(ServiceError):
    """What ServerCore answers when models of a new config did not become available."""

    http_status = 500
    grpc_code = grpc.StatusCode.UNKNOWN
    code = "unknown"


class PermissionDenied(ServiceError):
    """An admin operation asked for by a caller without an admin key."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    code = "permission_denied"
