"""Run the check: models, servers, probes, report (see the package docstring)."""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from services.kit.launch import REPO, read_env_file

from .probes import PROBES, REAL_WORKLOAD, REQUEST_TIMEOUT_S, TINY_WORKLOAD
from .report import Report, ServiceReport
from .servers import PREFIXES, ServiceProcess, start_all

SERVICES = tuple(PROBES)
# Random weights never predict SpeechT5's "stop" nor Whisper's end-of-text: fixed length ratios and a token cap
# give real-length outputs (about 4 spectrogram frames per character, 48 tokens per clip). The same values as
# env/tiny.env, except the token cap, sized for the check's 10 s clips.
RANDOM_WEIGHT_SETTINGS = {
    "TTS_STOP_THRESHOLD": "3",
    "TTS_MIN_LEN_RATIO": "4",
    "TTS_MAX_LEN_RATIO": "4",
    "TTS_VC_STOP_THRESHOLD": "3",
    "TTS_VC_MIN_LEN_RATIO": "1.25",
    "TTS_VC_MAX_LEN_RATIO": "1.25",
    "ASR_MAX_NEW_TOKENS": "48",
    "IMAGEGEN_SAFETY_CHECKER": "false",
}
MODEL_SETTINGS = ("TRANSLATION_MODELS", "ASR_MODEL", "ASR_ASSISTANT_MODEL", "TTS_MODEL", "TTS_VOCODER", "TTS_VC_MODEL",
                  "TTS_VOICES_DIR", "IMAGEGEN_MODEL")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}


def build(sizes_name: str, models_dir: Path, device: str, dtype: str) -> dict[str, str]:
    # torch and the model libraries load only here: a tiny-size check needs neither in this process.
    import torch

    from tools.tiny_models.sizes import REAL, SMALL

    from .models import build_models

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    sizes = {"real": REAL, "small": SMALL}[sizes_name]
    return build_models(models_dir, sizes, device, getattr(torch, dtype))


def device_description(device: str) -> str:
    if not device.startswith("cuda"):
        return device
    import torch

    index = torch.device(device).index or 0
    return f"{device} ({torch.cuda.get_device_name(index)}, torch {torch.__version__})"


def run(args: argparse.Namespace, models_dir: Path) -> Report:
    started = time.perf_counter()
    os.environ.update(OFFLINE)
    build_s = None
    if args.sizes == "tiny":
        settings = read_env_file(args.tiny_env)
    else:
        print(f"building {args.sizes}-size random-weight models in {models_dir} ...", flush=True)
        settings = {**build(args.sizes, models_dir, args.device, args.dtype), **RANDOM_WEIGHT_SETTINGS}
        build_s = time.perf_counter() - started
    # Settings in the caller's environment win, except the model locations the check itself chose.
    settings.update({k: os.environ[k] for k in settings if k in os.environ and k not in MODEL_SETTINGS})
    workload = TINY_WORKLOAD if args.sizes == "tiny" else REAL_WORKLOAD
    report = Report(
        device_description(args.device), args.dtype, args.sizes,
        models={k: v for k, v in settings.items() if k in MODEL_SETTINGS},
        settings={k: v for k, v in settings.items() if k not in MODEL_SETTINGS and k.startswith(tuple(PREFIXES.values()))},
        build_s=build_s,
    )
    servers = []
    for name in args.services:
        prefix = PREFIXES[name]
        # A slow machine should show up as low throughput, not as requests cut off at the 60 s default.
        timeout = {f"{prefix}REQUEST_TIMEOUT_S": os.environ.get(f"{prefix}REQUEST_TIMEOUT_S", str(REQUEST_TIMEOUT_S))}
        env = {**settings, **timeout, f"{prefix}DEVICE": args.device, f"{prefix}DTYPE": args.dtype}
        servers.append(ServiceProcess(name, env, args.out / "logs" / f"{name}.log"))
    try:
        errors = start_all(servers, args.ready_timeout)
        for server in servers:
            service = ServiceReport(server.name, server.ready_s, error=errors.get(server.name))
            report.services.append(service)
            if service.error:
                continue
            print(f"[{server.name}] probing ...", flush=True)
            try:
                PROBES[server.name](server, workload, service)
            except Exception as exc:  # report every service, then fail the run
                service.error = f"{type(exc).__name__}: {exc}"
                print(f"[{server.name}] FAILED: {service.error}", flush=True)
    finally:
        for server in servers:
            code = server.stop()
            service = next((s for s in report.services if s.name == server.name), None)
            if code not in (0, None) and service is not None and service.error is None:
                service.error = f"exited with code {code} on SIGTERM: {server.log_tail(5)}"
    report.total_s = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__)
    parser.add_argument("--device", default="cuda", help="the services' <P>DEVICE (default cuda)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                        help="the services' <P>DTYPE, and the dtype the models are saved in (default float16)")
    parser.add_argument(
        "--sizes", choices=("real", "small", "tiny"), default="real",
        help="real: production-size random weights built here; small: the same builders, shrunk (CPU tests); "
        "tiny: the checkpoints of `make models`, as env/tiny.env names them",
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check-results"), help="results.md, results.json, logs/")
    parser.add_argument("--services", default=",".join(SERVICES), help="comma-separated subset")
    parser.add_argument("--models-dir", type=Path, default=None, help="keep built models here (default: a temp dir)")
    parser.add_argument("--tiny-env", type=Path, default=REPO / "env" / "tiny.env")
    parser.add_argument("--ready-timeout", type=float, default=420.0, help="seconds for every service to be ready")
    args = parser.parse_args(argv)
    args.services = [name.strip() for name in args.services.split(",") if name.strip()]
    if unknown := set(args.services) - set(SERVICES):
        parser.error(f"unknown services {sorted(unknown)}; choose from {', '.join(SERVICES)}")
    if args.sizes == "tiny" and not args.tiny_env.exists():
        parser.error(f"{args.tiny_env} not found")
    if args.models_dir is not None:
        report = run(args, args.models_dir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-check-models-") as models_dir:
            report = run(args, Path(models_dir))
    markdown, data = report.write(args.out)
    print("\n" + markdown.read_text(), flush=True)
    print(f"written: {markdown}, {data}, logs in {args.out / 'logs'}", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
