"""`make demo`: start the local platform, call every service like a user would, save the answers.

Each service contributes a module with `run(rest_url, grpc_target, out_dir)` returning one-line
summaries (`tools/demo/<service>.py` unless its services/<name>/registry.py names another); this
driver starts `python -m services`, waits for readiness, runs each of them, prints a summary and
stops the platform with SIGTERM (a clean drain), or with --keep leaves it running.

The terminal shows progress and the summary only: the platform's output (its JSON logs, TensorFlow's
banners, library warnings) goes to <out>/platform.log, and load-time progress bars and warnings are
turned off in the platform process.
"""

import argparse
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.kit.config import PlatformSettings
from services.platform import selected_services
from services.registry import entries

# The platform's load-time chatter, off at its cause (the environment a user sets wins).
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' `Loading weights` bars and the Hub's download bars
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}
PROGRESS_EVERY_S = 15


@contextlib.contextmanager
def stderr_into(log):
    """Native banners written straight to file descriptor 2 (TensorFlow's oneDNN and CUDA lines at import,
    before its logging reads TF_CPP_MIN_LOG_LEVEL) go to the log instead of the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


def wait_ready(url: str, process: subprocess.Popen, started: float, timeout: float, log_path: Path) -> None:
    """Until `url` answers 200; `started` (monotonic) is when the process started, progress counts from it."""
    next_progress = started + PROGRESS_EVERY_S
    while time.monotonic() < started + timeout:
        if process.poll() is not None:
            raise SystemExit(
                f"platform exited with code {process.returncode} before it was ready; its log, {log_path}, ends:\n"
                + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                print(f"platform ready after {time.monotonic() - started:.0f} s", flush=True)
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= next_progress:
            print(f"  still loading the models ({time.monotonic() - started:.0f} s)", flush=True)
            next_progress = time.monotonic() + PROGRESS_EVERY_S
        time.sleep(0.5)
    raise SystemExit(f"platform not ready after {timeout:.0f} s ({url}); see {log_path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="leave the platform running afterwards")
    args = parser.parse_args()
    rest_port = os.environ.setdefault("PLATFORM_REST_PORT", "8000")
    grpc_port = os.environ.setdefault("PLATFORM_GRPC_PORT", "50051")
    rest_url, grpc_target = f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"
    names = selected_services(PlatformSettings())
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "platform.log"
    print(f"starting the platform with {', '.join(names)} (REST {rest_url}, gRPC {grpc_target})", flush=True)
    print(f"  its log: {log_path}", flush=True)
    with log_path.open("wb") as log:
        platform_started = time.monotonic()
        platform = subprocess.Popen(
            [sys.executable, "-m", "services"],
            env={**QUIET_ENV, **os.environ},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=args.keep,  # a kept platform outlives this terminal's Ctrl-C
        )
        with stderr_into(log):
            demos = {name: import_demo(entries()[name].demo_module) for name in names}
    failures = 0
    try:
        wait_ready(rest_url + "/readyz", platform, platform_started, args.ready_timeout, log_path)
        print(f"\n== demo: answers saved under {args.out}/")
        for name, demo in demos.items():
            if demo is None:
                print(f"[{name}] no demo yet")
                continue
            started = time.perf_counter()
            try:
                lines = demo.run(rest_url, grpc_target, args.out / name)
            except Exception as exc:  # report every service, then fail the run
                failures += 1
                print(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
                continue
            for line in lines:
                print(f"[{name}] {line}")
            print(f"[{name}] done in {time.perf_counter() - started:.1f} s")
    finally:
        if args.keep and platform.poll() is None:
            print(
                f"\nthe platform keeps running (pid {platform.pid}, log {log_path}); stop it with: kill {platform.pid}"
            )
        else:
            platform.send_signal(signal.SIGTERM)
            code = platform.wait(timeout=120)
            print(f"\nplatform stopped (exit code {code})")
            print("to try every model in a browser: `make demo KEEP=1` (or `make serve`), then")
    print(f"open {rest_url}/playground")
    return 1 if failures else 0


def import_demo(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
