"""`make demo`: start the local platform, call every service like a user would, save the answers.

Each service contributes `tools/demo/<service>.py` with `run(rest_url, grpc_target, out_dir)`
returning one-line summaries; this driver starts `python -m services`, waits for readiness, runs
each of them, prints a summary and stops the platform with SIGTERM (a clean drain).
"""

import argparse
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


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"platform exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"platform not ready after {timeout:.0f} s ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--ready-timeout", type=float, default=600)
    args = parser.parse_args()
    rest_port = os.environ.setdefault("PLATFORM_REST_PORT", "8000")
    grpc_port = os.environ.setdefault("PLATFORM_GRPC_PORT", "50051")
    rest_url, grpc_target = f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"
    names = selected_services(PlatformSettings())
    print(f"starting the platform with {', '.join(names)} (REST {rest_url}, gRPC {grpc_target})", flush=True)
    platform = subprocess.Popen([sys.executable, "-m", "services"], env=os.environ.copy())
    failures = 0
    try:
        wait_ready(rest_url + "/readyz", platform, args.ready_timeout)
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"\n== demo: answers saved under {args.out}/")
        for name in names:
            try:
                demo = importlib.import_module(f"tools.demo.{name}")
            except ModuleNotFoundError:
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
        platform.send_signal(signal.SIGTERM)
        code = platform.wait(timeout=120)
        print(f"platform stopped (exit code {code})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
