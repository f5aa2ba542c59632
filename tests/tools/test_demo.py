"""`make demo` quiet: the terminal gets progress and the summary, the platform's log goes to platform.log, and
with --keep the platform stays up until the printed command stops it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from dotenv import dotenv_values

from services.kit.testing import free_port

REPO = Path(__file__).resolve().parents[2]


def test_demo_is_quiet_and_keeps_the_platform_when_asked(models_dir, tmp_path):
    rest_port = free_port()
    env = {
        **os.environ,
        **dotenv_values(REPO / "env/tiny.env"),
        # ViT brings TensorFlow's banners into both processes; translation is the quickest service to load.
        "PLATFORM_SERVICES": "translation,vit",
        "PLATFORM_REST_PORT": str(rest_port),
        "PLATFORM_GRPC_PORT": str(free_port()),
        "VIT_REST_PORT": str(free_port()),
        "VIT_GRPC_PORT": str(free_port()),
    }
    demo = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--out", str(tmp_path), "--keep", "--ready-timeout", "300"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    terminal = demo.stdout + demo.stderr
    log = (tmp_path / "platform.log").read_text(errors="replace")
    pid = (
        int(demo.stdout.split("stop it with: kill ")[1].split()[0])
        if "stop it with: kill" in demo.stdout
        else None
    )
    try:
        assert demo.returncode == 0, terminal
        assert demo.stdout.splitlines()[-1] == f"open http://127.0.0.1:{rest_port}/playground"
        assert "[translation] done in" in demo.stdout and "[vit] done in" in demo.stdout
        # No JSON log lines, TensorFlow banners or warnings on the terminal: they are in the log (or off).
        assert not [line for line in terminal.splitlines() if line.lstrip().startswith("{")], terminal
        for noise in ("oneDNN", "cuda", "tensorflow", "Warning", "WARNING"):
            assert noise not in terminal, terminal
        access_lines = [
            json.loads(line) for line in log.splitlines() if line.startswith("{") and "/v1/translate" in line
        ]
        assert access_lines, log[-3000:]
        # Kept: the platform still serves, and the printed command stops it cleanly.
        assert pid is not None
        assert httpx.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=30).status_code == 200
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.5)
        assert not _alive(pid), "the platform did not stop on `kill`"
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while the process runs: it is not this test's child, so once stopped it may stay a zombie until
    whoever adopted it reaps it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
