"""The sixth service's client: POST /v1/reverse and reverse.v1.Reverse over gRPC."""

from clients.grpc_channel import GrpcCaller
from clients.registry import ServiceClients
from clients.rest import AsyncRestTransport, RestTransport
from protos import reverse_pb2 as pb
from protos import reverse_pb2_grpc as pb_grpc


class ReverseClient:
    def __init__(self, transport: RestTransport):
        self.transport = transport

    def reverse(self, text: str) -> str:
        return self.transport.request("POST", "/v1/reverse", json={"text": text}).json()["text"]


class AsyncReverseClient:
    def __init__(self, transport: AsyncRestTransport):
        self.transport = transport

    async def reverse(self, text: str) -> str:
        return (await self.transport.request("POST", "/v1/reverse", json={"text": text})).json()["text"]


class ReverseGrpcClient:
    def __init__(self, caller: GrpcCaller):
        self.caller = caller
        self.stub = pb_grpc.ReverseStub(caller.channel)

    def reverse(self, text: str) -> str:
        return self.caller.unary(self.stub.Reverse, pb.ReverseRequest(text=text)).text


SERVICE_CLIENTS = ServiceClients(
    attribute="reverse", rest=ReverseClient, async_rest=AsyncReverseClient, grpc=ReverseGrpcClient
)
