"""The sixth service's Locust users (its registry entry names this module for loadtests/locustfile.py)."""

from locust import task

from loadtests.common import Check, GrpcUser
from loadtests.users import WAIT, RestUser


class ReverseRestUser(RestUser):
    service = "reverse"

    @task
    def reverse(self) -> None:
        def check(_, response):
            if response.json()["text"] != "olleh":
                raise Check("the text reversed expected")

        self.post("/v1/reverse", check, json={"text": "hello"})


class ReverseGrpcUser(GrpcUser):
    service = "reverse"
    wait_time = WAIT

    @task
    def reverse(self) -> None:
        with self.measure("Reverse") as record:
            text = self.grpc.reverse.reverse("hello")
            if text != "olleh":
                raise Check("the text reversed expected")
            record["length"] = len(text)
