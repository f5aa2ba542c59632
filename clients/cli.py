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

from tqdm import tqdm

from .auth import API_KEY_ENV, resolve_api_key
from .client import (
    DEFAULT_GRPC_TARGET,
    DEFAULT_URL,
    VIT_GRPC_PORT,
    VIT_REST_PORT,
    Client,
    GrpcClient,
    with_port,
)
from .errors import (
    APIError,
    AuthenticationError,
    ConnectionFailedError,
    DeadlineExceededError,
    ModelServeError,
    UnavailableError,
)
from .images import Progress
from .models_fetch import add_fetch_command
from .retry import RetryPolicy
from .tts import save_audio_stream

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
        print(
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
        print(translation)
        for alternative in result.alternatives[i][1:] if result.alternatives else []:
            print(f"  ~ {alternative}")


AUDIO_SUFFIXES = {
    ".wav": "wav",
    ".flac": "flac",
    ".mp3": "mp3",
    ".opus": "opus",
    ".ogg": "opus",
    ".pcm": "pcm",
    ".raw": "pcm",
}
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def _format_for(path: str, table: dict[str, str], given: str | None, default: str) -> str:
    return given or table.get(Path(path).suffix.lower(), default)


def _progress(args, **options) -> tqdm:
    """A progress bar on stderr; off with --quiet or when stderr is not a terminal."""
    return tqdm(disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False, **options)


def cmd_transcribe(args, rest: Client, grpc_client: GrpcClient) -> None:
    audio = _read_file(args.audio)
    options = {
        "language": args.language,
        "prompt": args.prompt,
        "temperature": args.temperature,
        "decoding": args.decoding,
    }
    options = {k: v for k, v in options.items() if v is not None} | {"task": args.task}
    timestamps = args.format in ("verbose_json", "srt", "vtt")
    if args.protocol == "grpc":
        # Streamed upload: the bar follows the bytes sent, then the transcript arrives when decoding ends.
        with _progress(args, total=len(audio), unit="B", unit_scale=True, desc="uploading") as bar:
            result = grpc_client.asr.transcribe_file_streamed(
                audio, timestamps=timestamps, on_chunk=lambda chunk: bar.update(len(chunk)), **options
            )
        text = result.subtitles(args.format) if args.format in ("srt", "vtt") else None
    else:
        with _progress(args, desc="transcribing", bar_format="{desc} [{elapsed}]"):
            if args.format in ("srt", "vtt"):
                text, result = rest.asr.transcribe_as(audio, args.format, **options), None
            else:
                text, result = None, rest.asr.transcribe(audio, timestamps=timestamps, **options)
    if text is None:
        text = (
            result.text
            if args.format == "text"
            else json.dumps(
                _transcription_json(result, args.format),
                ensure_ascii=False,
                indent=2 if args.format == "verbose_json" else None,
            )
        )
    if args.output:
        _write_file(args.output, text.encode())
        print(f"wrote {args.format} to {args.output}")
    else:
        print(text.rstrip("\n"))


def _transcription_json(result, fmt: str) -> dict:
    body = {"text": result.text, "decoding": result.decoding}
    if fmt == "verbose_json":
        body |= {
            "task": result.task,
            "language": result.language,
            "duration": result.duration,
            "segments": [vars(s) for s in result.segments or []],
        }
    return body


def cmd_synthesize(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.tts if args.protocol == "grpc" else rest.tts
    text = sys.stdin.read() if args.text == "-" else args.text
    fmt = _format_for(args.output, AUDIO_SUFFIXES, args.format, "wav")
    options = {"voice": args.voice, "response_format": fmt, "speed": args.speed, "seed": args.seed}
    options = {k: v for k, v in options.items() if v is not None}
    if fmt in ("wav", "pcm") and not args.no_stream:
        # Streamed: the file grows sentence by sentence and the bar counts seconds of audio received.
        with _progress(args, unit="s", desc="audio", bar_format="{desc}: {n:.1f} s [{elapsed}]") as bar:
            speech = save_audio_stream(
                api.stream_speech(text, **options), args.output, lambda chunk: bar.update(chunk.duration_s)
            )
    else:
        with _progress(args, total=None, desc="synthesizing", bar_format="{desc} [{elapsed}]"):
            speech = api.speech(text, **options)
        _write_file(args.output, speech.audio)
    duration = f"{speech.duration_s:.1f} s of " if speech.duration_s else ""
    print(f"wrote {duration}{fmt} audio to {args.output}")


def cmd_convert(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.tts if args.protocol == "grpc" else rest.tts
    fmt = _format_for(args.output, AUDIO_SUFFIXES, args.format, "wav")
    speech = api.convert(_read_file(args.audio), voice=args.voice, response_format=fmt, seed=args.seed)
    _write_file(args.output, speech.audio)
    print(f"wrote {fmt} audio in voice {args.voice or '(default)'} to {args.output}")


def cmd_voices(args, rest: Client, grpc_client: GrpcClient) -> None:
    voices = (grpc_client.tts if args.protocol == "grpc" else rest.tts).voices()
    for voice in voices.names:
        print(f"{voice} (default)" if voice == voices.default else voice)


def _image_options(args) -> dict:
    options = {
        "n": args.n,
        "size": args.size,
        "steps": args.steps,
        "seed": args.seed,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance,
        "negative_prompt": args.negative,
        "output_format": _format_for(args.output, IMAGE_SUFFIXES, None, "png"),
    }
    return {k: v for k, v in options.items() if v is not None}


def _save_images(args, result) -> None:
    output = Path(args.output)
    for i, image in enumerate(result.images):
        path = (
            output if len(result.images) == 1 else output.with_name(f"{output.stem}-{i + 1}{output.suffix}")
        )
        _write_file(str(path), image.data)
        print(f"wrote {result.size} image (seed {image.seed}) to {path}")


def _step_bar(args):
    bar = _progress(args, unit="step", desc="denoising")

    def update(event) -> None:
        if isinstance(event, Progress):
            bar.total = event.total_steps
            bar.update(event.step - bar.n)

    return bar, update


def cmd_generate(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.images if args.protocol == "grpc" else rest.images
    bar, update = _step_bar(args)
    with bar:
        result = api.generate(args.prompt, on_progress=update, **_image_options(args))
    _save_images(args, result)


def cmd_edit(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.images if args.protocol == "grpc" else rest.images
    image = _read_file(args.image)
    mask = _read_file(args.mask) if args.mask else None
    options = _image_options(args) | ({"strength": args.strength} if args.strength is not None else {})
    bar, update = _step_bar(args)
    with bar:
        result = api.edit(image, args.prompt, mask=mask, on_progress=update, **options)
    _save_images(args, result)


def cmd_classify(args, rest: Client, grpc_client: GrpcClient) -> None:
    api = grpc_client.vit if args.protocol == "grpc" else rest.vit
    images = [_read_file(path) for path in args.images]
    if args.top:
        for path, image in zip(args.images, images, strict=True):
            ranking = api.top_k(image)[: args.top]
            print(f"{path}\t" + ", ".join(f"{c.label} ({c.confidence:.3f})" for c in ranking))
        return
    for path, result in zip(args.images, api.classify_many(images), strict=True):
        print(f"{path}\t{result.label}\t{result.confidence:.4f}")


def cmd_models(args, rest: Client, grpc_client: GrpcClient) -> None:
    entries = rest.models()
    if args.json:
        print(json.dumps([{"id": e.id, "service": e.service, **e.extra} for e in entries]))
        return
    for entry in entries:
        details = " ".join(f"{k}={v}" for k, v in entry.extra.items() if not isinstance(v, dict | list))
        print(f"{entry.service:<12} {entry.id:<32} {details}".rstrip())


# -- parser ---------------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """On the main parser with defaults; on every command without, so they may follow the command too."""

    def default(value):
        return value if defaults else argparse.SUPPRESS

    env = os.environ.get
    parser.add_argument(
        "--url",
        default=default(env("MODELSERVE_URL", DEFAULT_URL)),
        help=f"platform REST URL (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--grpc",
        default=default(env("MODELSERVE_GRPC", DEFAULT_GRPC_TARGET)),
        help=f"platform gRPC target (default {DEFAULT_GRPC_TARGET})",
    )
    parser.add_argument(
        "--vit-url",
        default=default(env("MODELSERVE_VIT_URL")),
        help=f"ViT REST URL (default: the --url host, port {VIT_REST_PORT})",
    )
    parser.add_argument(
        "--vit-grpc",
        default=default(env("MODELSERVE_VIT_GRPC")),
        help=f"ViT gRPC target (default: the --grpc host, port {VIT_GRPC_PORT})",
    )
    parser.add_argument(
        "--api-key",
        default=default(None),
        help=f"API key sent as a bearer token (default ${API_KEY_ENV}; the variable keeps it out of "
        "the process list)",
    )
    parser.add_argument("--protocol", choices=("rest", "grpc"), default=default("rest"))
    parser.add_argument(
        "--timeout", type=float, default=default(600.0), help="seconds per attempt (default 600)"
    )
    parser.add_argument(
        "--retries", type=int, default=default(3), help="retries on overload/unavailable (default 3)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False), help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelserve",
        description="Call the modelserve platform: translation, speech recognition and synthesis, "
        "image generation and image classification.",
        epilog="Addresses default to the environment: MODELSERVE_URL, MODELSERVE_GRPC, MODELSERVE_VIT_URL, "
        f"MODELSERVE_VIT_GRPC; the API key to {API_KEY_ENV}.",
    )
    _add_connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def new_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        _add_connection_options(command.add_argument_group("connection"), defaults=False)
        return command

    p = new_command("translate", help="translate text")
    p.add_argument("text", nargs="+", help="one or more texts")
    p.add_argument("--from", dest="source", required=True, help="source language, e.g. en")
    p.add_argument("--to", dest="target", required=True, help="target language, e.g. de")
    p.add_argument("--beams", type=int, help="beam search width")
    p.add_argument("--alternatives", type=int, help="hypotheses to return per text (needs --beams >= it)")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.set_defaults(run=cmd_translate)

    p = new_command("transcribe", help="speech to text (or to English with --task translate)")
    p.add_argument("audio", help="wav, flac, ogg (or mp3) file")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--language", help="spoken language, e.g. en or german (default: detected)")
    p.add_argument("--prompt", help="text that conditions the decoder, e.g. spellings of names")
    p.add_argument("--temperature", type=float)
    p.add_argument("--decoding", choices=("auto", "assisted", "plain"), help="force the decoding path")
    p.add_argument("--format", choices=("text", "json", "verbose_json", "srt", "vtt"), default="text")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(run=cmd_transcribe)

    p = new_command("synthesize", help="text to speech, into an audio file")
    p.add_argument("text", help="the text, or - to read it from stdin")
    p.add_argument("-o", "--output", required=True, help="audio file to write (format from its suffix)")
    p.add_argument("--voice", help="a named voice (see: modelserve voices)")
    p.add_argument("--format", choices=sorted(set(AUDIO_SUFFIXES.values())), help="default: from --output")
    p.add_argument("--speed", type=float)
    p.add_argument("--seed", type=int, help="same seed, same audio")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole file instead of streaming")
    p.set_defaults(run=cmd_synthesize)

    p = new_command("convert", help="voice conversion: the same speech in another voice")
    p.add_argument("audio", help="wav, flac, ogg or mp3 file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--voice")
    p.add_argument("--format", choices=sorted(set(AUDIO_SUFFIXES.values())))
    p.add_argument("--seed", type=int)
    p.set_defaults(run=cmd_convert)

    p = new_command("voices", help="list the TTS voices")
    p.set_defaults(run=cmd_voices)

    for command, help_text in (
        ("generate", "text to image"),
        ("edit", "image to image, or inpainting with --mask"),
    ):
        p = new_command(command, help=help_text)
        if command == "edit":
            p.add_argument("image", help="the image to edit")
        p.add_argument("prompt")
        p.add_argument("-o", "--output", required=True, help="image file to write (png, jpg or webp)")
        p.add_argument("-n", type=int, help="number of images (files get -1, -2... suffixes)")
        p.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8")
        p.add_argument("--steps", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--scheduler", help="ddim, pndm, euler, euler_ancestral, lms, dpm++_2m, ...")
        p.add_argument("--guidance", type=float, help="guidance scale")
        p.add_argument("--negative", help="negative prompt")
        if command == "edit":
            p.add_argument("--mask", help="inpainting mask: transparent or white pixels are redrawn")
            p.add_argument("--strength", type=float, help="how much of the image to redraw, (0, 1]")
        p.set_defaults(run=cmd_generate if command == "generate" else cmd_edit)

    p = new_command("classify", help="classify images with ViT (TF Serving protocol)")
    p.add_argument("images", nargs="+", help="JPEG, PNG, GIF or BMP files")
    p.add_argument("--top", type=int, help="show the N best labels with scores instead of the best one")
    p.set_defaults(run=cmd_classify)

    p = new_command(
        "models", help="list the models every service serves (models fetch: download checkpoints)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_models)
    add_fetch_command(p.add_subparsers(dest="models_command", metavar="{fetch}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run_local", None):  # a command that calls no server (models fetch)
        return args.run_local(args)
    retry = RetryPolicy(max_attempts=max(1, args.retries + 1))
    vit_url = args.vit_url or with_port(args.url, VIT_REST_PORT)
    vit_grpc = args.vit_grpc or with_port(args.grpc, VIT_GRPC_PORT)
    run: Callable = args.run
    try:
        options = dict(timeout=args.timeout, retry=retry, api_key=_api_key(args.api_key))
        with (
            Client(args.url, vit_url=vit_url, **options) as rest,
            GrpcClient(args.grpc, vit_target=vit_grpc, **options) as grpc_client,
        ):
            run(args, rest, grpc_client)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AuthenticationError as exc:
        return _fail(f"authentication failed: {exc.message}", EXIT_SERVER_ERROR)
    except (ConnectionFailedError, DeadlineExceededError) as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except UnavailableError as exc:
        # gRPC reports a refused connection as UNAVAILABLE; a loading or draining server says so too.
        return _fail(f"server unavailable: {exc.message}", EXIT_UNREACHABLE)
    except APIError as exc:
        return _fail(f"server error: {exc}", EXIT_SERVER_ERROR)
    except ModelServeError as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except OSError as exc:  # a local file (an output path) could not be written
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


def _api_key(given: str | None) -> str:
    """--api-key, else $MODELSERVE_API_KEY, checked here so that a malformed one is a usage error."""
    try:
        return resolve_api_key(given) or ""
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _fail(message: str, code: int) -> int:
    print("modelserve: " + " ".join(message.split()), file=sys.stderr)  # always one line
    return code
