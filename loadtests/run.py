"""`make loadtest` / `python -m loadtests.run`: a headless Locust run with CSV, HTML and PNG results.

Against a deployment: `--host http://HOST:8000` (and the gRPC / ViT addresses when they are not the
defaults). Without `--host`, `--local` starts the local platform with the tiny models first. The
services under test are SERVICE, or with `all` every service the target reports ready (the mixed
scenario, weighted). When a Kubernetes context is available the HPAs' replica counts are recorded
during the run and drawn on the same plot. Exit code: Locust's (non-zero when any request failed).
"""

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from clients.auth import API_KEY_ENV, bearer, resolve_api_key
from clients.client import VIT_GRPC_PORT, VIT_REST_PORT, with_port

from . import hpa as hpa_recording
from . import report
from .platform import REPO, VIT_MODEL_NAME, LocalPlatform
from .scenario import PROTOCOLS, SERVICES, WEIGHTS, split_users, user_class

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_NAMESPACE = "modelserve"


def parse_duration(text: str) -> int:
    """Locust's run-time syntax: 90, 90s, 2m, 1h30m."""
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 60s, 5m, 1h30m)")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def discover(rest_url: str, vit_url: str, api_key: str | None = None) -> list[str]:
    """The services the target reports ready (/readyz) plus ViT when its model answers."""
    found = []
    with contextlib.suppress(httpx.HTTPError, ValueError):
        response = httpx.get(f"{rest_url}/readyz", timeout=5)
        if response.status_code == 200:
            found += [name for name in response.json().get("services", []) if name in SERVICES]
    headers = {"authorization": bearer(api_key)} if api_key else {}
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{vit_url}/v1/models/{VIT_MODEL_NAME}", headers=headers, timeout=5).status_code == 200:
            found.append("vit")
    return sorted(set(found), key=SERVICES.index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", default="all", choices=("all", *SERVICES))
    parser.add_argument(
        "--host", default="", help="platform (or the service's) REST URL, e.g. http://HOST:8000"
    )
    parser.add_argument("--grpc-host", default="", help="gRPC host:port (default: --host's host:50051)")
    parser.add_argument(
        "--vit-host", default="", help=f"ViT REST URL (default: --host's host:{VIT_REST_PORT})"
    )
    parser.add_argument(
        "--vit-grpc-host", default="", help=f"ViT gRPC host:port (default: host:{VIT_GRPC_PORT})"
    )
    parser.add_argument(
        "--api-key", default=None, help=f"API key for every request (default ${API_KEY_ENV}, which keeps it out of ps)"
    )
    parser.add_argument("--local", action="store_true", help="start the local platform (tiny models) first")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default users/5)"
    )
    parser.add_argument("--duration", default="60s", help="e.g. 60s, 5m")
    parser.add_argument(
        "--answers",
        type=int,
        default=0,
        help="after --duration, keep the load on until every service and protocol answered this many "
        "requests (default 0: stop at --duration)",
    )
    parser.add_argument(
        "--answers-timeout", type=parse_duration, default="300s", help="with --answers: the most the run may go on past --duration"
    )
    parser.add_argument("--protocol", default="both", choices=("both", *PROTOCOLS))
    parser.add_argument("--shape", default="constant", choices=("constant", "step"))
    parser.add_argument("--steps", type=int, default=5, help="steps of the step shape")
    parser.add_argument(
        "--payloads",
        default=None,
        choices=("tiny", "standard"),
        help="payload sizes (default: tiny with --local, else standard)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default loadtest-results/<time>-<service>)"
    )
    parser.add_argument("--namespace", default=None, help="namespace of the HPAs (default: the context's)")
    parser.add_argument(
        "--hpa", action="append", default=[], help="HPA name to record (repeatable; default all)"
    )
    parser.add_argument("--kube-context", default=None)
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--no-hpa", action="store_true", help="do not look for a Kubernetes context")
    return parser


def run_time_s(args) -> int:
    """Locust's --run-time: the duration, plus the wait for the answers when the run stops on counts."""
    return parse_duration(args.duration) + (args.answers_timeout if args.answers else 0)


def locust_command(args, targets: dict[str, str], classes: list[str], out: Path) -> list[str]:
    options = {
        "--users": args.users,
        "--spawn-rate": args.spawn_rate or max(1.0, args.users / 5),
        "--run-time": f"{run_time_s(args)}s",
        "--answers": args.answers,
        "--min-run-time": parse_duration(args.duration),
        "--host": targets["host"],
        "--grpc-host": targets["grpc"],
        "--vit-host": targets["vit"],
        "--vit-grpc-host": targets["vit_grpc"],
        "--payloads": args.payloads,
        "--csv": out / "locust",
        "--html": out / "report.html",
        "--loglevel": "WARNING",
    }
    flags = ["--headless", "--csv-full-history", "--only-summary"]
    pairs = [str(part) for option in options.items() for part in option]
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *flags, *pairs, *classes]


def resolve_targets(args) -> dict[str, str]:
    host = args.host or "http://127.0.0.1:8000"
    hostname = urlsplit(host).hostname or "127.0.0.1"
    vit = args.vit_host or (host if args.service == "vit" else with_port(host, VIT_REST_PORT))
    return {
        "host": host,
        "grpc": args.grpc_host or f"{hostname}:50051",
        "vit": vit,
        "vit_grpc": args.vit_grpc_host or f"{hostname}:{VIT_GRPC_PORT}",
    }


def start_hpa_recorder(args):
    if args.no_hpa:
        return None
    connection = hpa_recording.connect(args.kube_context, args.kubeconfig)
    if connection is None:
        print("no Kubernetes context: HPA replicas will not be recorded")
        return None
    api, context_namespace = connection
    namespace = args.namespace or context_namespace or DEFAULT_NAMESPACE
    # One service under test: its own HPA (the manifests name each HPA after its service); else all.
    names = args.hpa or ([args.service] if args.service != "all" else [])
    recorder = hpa_recording.HpaRecorder(api, namespace, names)
    recorder.start()
    print(f"recording HPAs {', '.join(names) or '(all)'} in namespace {namespace}")
    return recorder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.payloads = args.payloads or ("tiny" if args.local else "standard")
    duration_s = run_time_s(args)
    out = args.out or REPO / "loadtest-results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.service}"
    out.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        if args.local:
            wanted = "all" if args.service == "all" else args.service
            print("starting the local platform with the tiny models...", flush=True)
            platform = stack.enter_context(LocalPlatform(services=wanted, log_path=out / "platform.log"))
            args.host, args.grpc_host = platform.rest_url, platform.grpc_target
            args.vit_host, args.vit_grpc_host = platform.vit_url, platform.vit_grpc_target
        targets = resolve_targets(args)
        try:
            key = resolve_api_key(args.api_key)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        services = discover(targets["host"], targets["vit"], key) if args.service == "all" else [args.service]
        if not services:
            print(f"no service answers at {targets['host']} (nor ViT at {targets['vit']})", file=sys.stderr)
            return 2
        protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
        weights = {user_class(s, p): WEIGHTS[s] for s in services for p in protocols}
        try:
            counts = split_users(args.users, weights)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        classes = list(counts)
        print(
            f"load test: {', '.join(services)} over {', '.join(protocols)}; {args.users} users, {args.duration}, "
            f"{args.shape} shape, {args.payloads} payloads -> {out}",
            flush=True,
        )

        recorder = start_hpa_recorder(args)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        # The users read the key from the environment: on Locust's command line `ps` would show it.
        env.pop(API_KEY_ENV, None)
        if key:
            env[API_KEY_ENV] = key
        env["LOADTEST_USER_COUNTS"] = ",".join(f"{name}={count}" for name, count in counts.items())
        if args.shape == "step":
            env.update(LOADTEST_SHAPE="step", LOADTEST_STEPS=str(args.steps))
        try:
            code = subprocess.run(
                locust_command(args, targets, classes, out), cwd=REPO, env=env, timeout=duration_s + 300
            ).returncode
        except subprocess.TimeoutExpired:
            print("locust did not stop in time", file=sys.stderr)
            code = 1
        samples = None
        if recorder is not None:
            recorder.stop()
            recorder.write_csv(out / "hpa.csv")
            samples = recorder.samples
            if recorder.error:
                print(f"warning: reading HPAs failed at least once: {recorder.error}")

    history = out / "locust_stats_history.csv"
    if history.exists():
        over = " and ".join({"rest": "REST", "grpc": "gRPC"}[p] for p in protocols)
        title = f"{', '.join(services)} over {over}: {args.users} users, {args.shape} load, {targets['host']}"
        pngs = report.plot(history, out, samples, title)
        table = report.summary_table(out / "locust_stats.csv")
        (out / "summary.md").write_text(table + "\n")
        print(table)
        print(f"\nresults: {out}/ (report.html, {', '.join(p.name for p in pngs)}, locust_*.csv)")
    return code


if __name__ == "__main__":
    sys.exit(main())
