"""A client that leaves mid-request, for the hostile tests of cancellation: the request is sent over a raw
connection that is closed once the model thread is paused inside it."""

import socket
import time

import httpx


def client_gone(server) -> float:
    """How many requests the server has dropped because their client left (its `/metrics`)."""
    metrics = httpx.get(server.rest_url + "/metrics").text
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("serving_rejected_total{") and 'reason="client_gone"' in line)


def post_and_leave(server, request: httpx.Request, pause, notice_s: float = 10) -> None:
    """Send `request` over a raw connection and close it once the model thread is paused in it (`pause.reached`);
    return when the server has noticed (within `notice_s`), with the model thread released (`pause.release`)."""
    gone_before = client_gone(server)
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items() if name.lower() != "host")
    with socket.create_connection(("127.0.0.1", server.settings.rest_port)) as client:
        client.sendall(head.encode() + b"\r\n" + request.read())
        assert pause.reached.wait(60), "the request never reached the model"
    try:
        deadline = time.monotonic() + notice_s
        while client_gone(server) == gone_before:
            assert time.monotonic() < deadline, "the server never noticed the client leave"
            time.sleep(0.02)
    finally:
        pause.release.set()
