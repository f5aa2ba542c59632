"""`modelserve` / `python -m clients`: the platform from a shell.

Exit codes: 0 success, 1 the server refused or failed the request (its message is printed),
2 bad command line or unreadable local file, 3 the server could not be reached or timed out.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .client import (
    DEFAULT_GRPC_TARGET,
    DEFAULT_URL,
    VIT_GRPC_PORT,
    VIT_REST_PORT,
    Client,
    GrpcClient,
    with_port,
)
from .errors import APIError, ConnectionFailedError, DeadlineExceededError, ModelServeError, UnavailableError
from .retry import RetryPolicy

EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class UsageError(Exception):
    """A problem with the command line or a local file, reported without a traceback."""


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write_file(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _say(args, line: str) -> None:
    print(line, file=sys.stdout)


# -- commands -------------------------------------------------------------------------------------


def cmd_translate(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.translation if args.protocol == "grpc" else rest.translation
    options = {
        "num_beams": args.beams,
        "num_return_sequences": args.alternatives,
        "max_new_tokens": args.max_tokens,
    }
    result = api.translate(
        args.text,
        source_lang=args.source,
        target_lang=args.target,
        **{k: v for k, v in options.items() if v is not None},
    )
    if args.json:
        _say(
            args,
            json.dumps(
                {
                    "translations": result.translations,
                    "alternatives": result.alternatives,
                    "model": result.model,
                },
                ensure_ascii=False,
            ),
        )
        return
    for i, translation in enumerate(result.translations):
        _say(args, translation)
        for alternative in result.alternatives[i][1:] if result.alternatives else []:
            _say(args, f"  ~ {alternative}")


def cmd_models(args, rest: Client, grpc_client: GrpcClient) -> None:
    entries = rest.models()
    if args.json:
        _say(args, json.dumps([{"id": e.id, "service": e.service, **e.extra} for e in entries]))
        return
    for entry in entries:
        details = " ".join(f"{k}={v}" for k, v in entry.extra.items() if not isinstance(v, dict | list))
        _say(args, f"{entry.service:<12} {entry.id:<32} {details}".rstrip())


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelserve",
        description="Call the modelserve platform: translation, speech recognition and synthesis, "
        "image generation and image classification.",
        epilog="Addresses default to the environment: MODELSERVE_URL, MODELSERVE_GRPC, MODELSERVE_VIT_URL, "
        "MODELSERVE_VIT_GRPC.",
    )
    url = os.environ.get("MODELSERVE_URL", DEFAULT_URL)
    parser.add_argument("--url", default=url, help="platform REST URL (default %(default)s)")
    parser.add_argument(
        "--grpc", default=os.environ.get("MODELSERVE_GRPC", DEFAULT_GRPC_TARGET), help="platform gRPC target"
    )
    parser.add_argument(
        "--vit-url",
        default=os.environ.get("MODELSERVE_VIT_URL"),
        help=f"ViT REST URL (default: the --url host, port {VIT_REST_PORT})",
    )
    parser.add_argument(
        "--vit-grpc",
        default=os.environ.get("MODELSERVE_VIT_GRPC"),
        help=f"ViT gRPC target (default: the --grpc host, port {VIT_GRPC_PORT})",
    )
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per attempt (default %(default)s)"
    )
    parser.add_argument("--retries", type=int, default=3, help="retries on overload/unavailable (default 3)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("translate", help="translate text")
    p.add_argument("text", nargs="+", help="one or more texts")
    p.add_argument("--from", dest="source", required=True, help="source language, e.g. en")
    p.add_argument("--to", dest="target", required=True, help="target language, e.g. de")
    p.add_argument("--beams", type=int, help="beam search width")
    p.add_argument("--alternatives", type=int, help="hypotheses to return per text (needs --beams >= it)")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(run=cmd_translate)

    p = commands.add_parser("models", help="list the models every service serves")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    retry = RetryPolicy(max_attempts=max(1, args.retries + 1))
    vit_url = args.vit_url or with_port(args.url, VIT_REST_PORT)
    vit_grpc = args.vit_grpc or with_port(args.grpc, VIT_GRPC_PORT)
    run: Callable = args.run
    try:
        with (
            Client(args.url, vit_url=vit_url, timeout=args.timeout, retry=retry) as rest,
            GrpcClient(args.grpc, vit_target=vit_grpc, timeout=args.timeout, retry=retry) as grpc_client,
        ):
            run(args, rest, grpc_client)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (ConnectionFailedError, DeadlineExceededError) as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except UnavailableError as exc:
        # gRPC reports a refused connection as UNAVAILABLE; a loading or draining server says so too.
        return _fail(f"server unavailable: {exc.message}", EXIT_UNREACHABLE)
    except APIError as exc:
        return _fail(f"server error: {exc}", EXIT_SERVER_ERROR)
    except ModelServeError as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


def _fail(message: str, code: int) -> int:
    print("modelserve: " + " ".join(message.split()), file=sys.stderr)  # always one line
    return code
