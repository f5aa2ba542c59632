"""Message classes of the Open Inference Protocol's gRPC service (inference.proto), in a descriptor pool of
their own.

Generated *_pb2 modules register their names in protobuf's process-wide pool, and Triton's and KServe's client
packages register these very names (`inference.ModelInferRequest`...): a server module doing the same could not
be imported next to them. The wire format does not depend on the pool. `make protos` rebuilds inference.binpb.
"""

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "inference.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString((Path(__file__).with_name("inference.binpb")).read_bytes()).file:
    _POOL.Add(_file)


def _message(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
ModelConfigRequest = _message("ModelConfigRequest")
ModelConfigResponse = _message("ModelConfigResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
