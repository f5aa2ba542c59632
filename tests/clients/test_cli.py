"""The command line without a server: unreachable addresses, bad local files, the console script."""

import subprocess
import sys
from pathlib import Path

from services.kit.testing import free_port


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clients", *args], capture_output=True, text=True, timeout=60
    )


def test_connection_refused_exits_non_zero_with_one_line():
    port = free_port()
    result = run_cli(
        "--url", f"http://127.0.0.1:{port}", "--retries", "1", "translate", "hi", "--from", "en", "--to", "de"
    )
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"modelserve: cannot connect to http://127.0.0.1:{port}/v1/translate: [Errno 111] Connection refused"
    ]


def test_grpc_connection_refused_exits_non_zero_with_one_line():
    result = run_cli("voices", "--protocol", "grpc", "--grpc", f"127.0.0.1:{free_port()}", "--retries", "0")
    assert result.returncode == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("modelserve: server unavailable:") and "Connection refused" in line


def test_unreadable_input_file_is_a_usage_error(tmp_path):
    result = run_cli("convert", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "out.wav"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"modelserve: cannot read {tmp_path / 'missing.wav'}: No such file or directory"
    ]


def test_bad_command_line_is_refused_by_argparse():
    result = run_cli("translate", "hi")  # --from and --to are required
    assert result.returncode == 2 and "--from" in result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("modelserve")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("translate", "synthesize", "generate", "voices", "models"):
        assert command in result.stdout
