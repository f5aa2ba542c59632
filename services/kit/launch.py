"""Start a server as its own process, wait until it is ready, stop it as a pod is stopped: the one launcher of the
tests, load tests, tools and image tests.

It imports no service and nothing heavier than httpx, so a load test or an image test pays no model import for it.
As a command it only waits (for a server something else started, a container say):

    python -m services.kit.launch --ready http://127.0.0.1:8000/readyz --timeout 240 --alive 'docker top NAME'
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines with shell quoting and comments, as `set -a; . file` exports them."""
    variables = {}
    for line in path.read_text().splitlines():
        for word in shlex.split(line, comments=True):
            key, sep, value = word.partition("=")
            if sep and key.isidentifier():
                variables[key] = value
    return variables


def with_repo_on_path(env: Mapping[str, str], repo: Path = REPO) -> str:
    """PYTHONPATH for a child that imports `services` (and the rest of the checkout) from `repo`."""
    return os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))


def answers_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    """Whether `url` answers 200 now (a refused connection or a timeout is a no)."""
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class NotReady(RuntimeError):
    """The server exited, or was not ready in time."""


def wait_ready(
    urls: Sequence[str],
    timeout_s: float,
    exited: Callable[[], str | None],
    headers: Mapping[str, str] | None = None,
) -> float:
    """Until every URL answers 200; the seconds it took. `exited()` says why the server can no longer become ready
    (checked between tries: a crash ends the wait at once instead of at the time limit)."""
    started = time.monotonic()
    waiting = list(urls)
    while True:
        waiting = [url for url in waiting if not answers_ok(url, headers)]
        if not waiting:
            return time.monotonic() - started
        if (reason := exited()) is not None:
            raise NotReady(reason)
        if time.monotonic() - started > timeout_s:
            raise NotReady(f"{', '.join(waiting)} not ready within {timeout_s:.0f} s")
        time.sleep(0.25)


class Launched:
    """`with Launched([sys.executable, "-m", "services"], env=..., ready=[url + "/readyz"]) as server: ...`

    Starts `command` (output to `log_path`, else to a temporary file), waits until every `ready` URL answers 200
    while watching that the process did not exit (the log's tail in the error), and on leaving sends SIGTERM (the
    kit drains in-flight requests), then SIGKILL after `stop_grace_s`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        ready: Sequence[str] = (),
        ready_headers: Mapping[str, str] | None = None,
        ready_timeout_s: float = 300.0,
        stop_grace_s: float = 60.0,
        log_path: Path | None = None,
        log_stdout: bool = True,  # False: the log holds stderr only, stdout is dropped
    ):
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.ready = list(ready)
        self.ready_headers = ready_headers
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log_path = log_path
        self.log_stdout = log_stdout
        self.process: subprocess.Popen | None = None
        self.ready_s: float | None = None
        self.log = None
        self.started = 0.0

    def start(self) -> "Launched":
        """Start the process; return at once (`wait_ready` waits)."""
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(self.log_path, "w+b")  # noqa: SIM115 (readable: output() reads it back)
        else:
            self.log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open: output() reads it back)
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=self.log if self.log_stdout else subprocess.DEVNULL,
            stderr=self.log,
        )
        self.started = time.monotonic()
        return self

    def exited(self) -> str | None:
        """Why the process can no longer become ready (it exited), with its log's tail; None while it runs."""
        if self.process.poll() is None:
            return None
        return f"{shlex.join(self.command)} exited with code {self.process.returncode}:\n{self.log_tail()}"

    def wait_ready(self) -> "Launched":
        """Until ready; on failure stop the process and raise NotReady with the log's tail."""
        try:
            wait_ready(self.ready, self.ready_timeout_s, self.exited, self.ready_headers)
        except NotReady as exc:
            tail = "" if self.process.poll() is not None else f":\n{self.log_tail()}"
            self.stop()
            raise NotReady(f"{exc}{tail}") from None
        self.ready_s = time.monotonic() - self.started
        return self

    def is_ready(self) -> bool:
        """One look, for waiting on several servers at once: True once every URL answered 200; NotReady if the
        process exited first."""
        if self.ready_s is None:
            if (reason := self.exited()) is not None:
                raise NotReady(reason)
            if all(answers_ok(url, self.ready_headers) for url in self.ready):
                self.ready_s = time.monotonic() - self.started
        return self.ready_s is not None

    def output(self) -> str:
        """Everything the process has written to its log so far."""
        if self.log is None:
            return ""
        # pread leaves the file offset alone: the child shares it and keeps appending there.
        return os.pread(self.log.fileno(), os.fstat(self.log.fileno()).st_size, 0).decode(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after the grace time; the exit code (None if never started). The log stays
        readable through `output()`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_grace_s if grace_s is None else grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "Launched":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.kit.launch",
        description="Wait until every --ready URL answers 200 while --alive (a command) succeeds.",
    )
    parser.add_argument("--ready", action="append", required=True, metavar="URL")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument(
        "--alive", metavar="COMMAND", help="exits non-zero once the server is gone (e.g. 'docker top NAME')"
    )
    args = parser.parse_args(argv)

    def exited() -> str | None:
        if args.alive is None:
            return None
        check = subprocess.run(shlex.split(args.alive), capture_output=True, text=True)
        return None if check.returncode == 0 else f"stopped before it was ready: {check.stderr.strip()}"

    try:
        seconds = wait_ready(args.ready, args.timeout, exited)
    except NotReady as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ready after {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
