"""Fetch Hub checkpoints (safetensors only) into a models directory: the one fetcher, run two ways.

    modelserve models fetch --profile hub --dir /data/models   # the CLI: env/hub.env's ids into DIR
    python /app/fetch_models.py TRANSLATION_MODELS             # the torch image's init container (this file)
    python /app/fetch_models.py ASR_MODEL ASR_ASSISTANT_MODEL
    python /app/fetch_models.py TTS_MODEL TTS_VOCODER TTS_VC_MODEL --voices TTS_VOICES_DIR

It needs only the standard library and huggingface_hub (torch and safetensors to convert pickles, python-dotenv
to read a profile), so docker/torch.Dockerfile copies this file alone to /app/fetch_models.py.

The CLI lays DIR out as the pods' /models volume: `DIR/hf-cache` is a Hugging Face cache (serve with
`HF_HOME=DIR/hf-cache HF_HUB_OFFLINE=1`), `DIR/voices` holds the TTS voices' x-vectors. The init container
reads the variables it is given (a Hub id `org/name[@revision]`, a local directory, which is skipped, or a JSON
object/list of those: TRANSLATION_MODELS) and fills HF_HOME (default /models/hf-cache); `--voices VAR` fills
the directory VAR names with one x-vector per CMU ARCTIC speaker (dataset $MODELSERVE_VOICES_REPO).

Only safetensors weights, configs and tokenizer files are downloaded. Every repository's file list is read
before anything is downloaded, so a checkpoint that ships only pickled weights is refused up front, unless
`--convert-pickle` (or MODELSERVE_CONVERT_BIN=1) converts it once (trusting its source:
`torch.load(weights_only=True)`, then safetensors), so the servers never read a pickle. An interrupted fetch
resumes: complete checkpoints are skipped without the network (a marker says they are), and huggingface_hub's
download skips complete files and resumes partial ones.
"""

import argparse
import fnmatch
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fetch_models")

# Config, tokenizer (json/txt/sentencepiece/tiktoken) and safetensors weights - never pickles.
TRANSFORMERS_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.spm", "*.tiktoken"]
# diffusers: one folder per component; SD 1.5's root also holds multi-GB single-file checkpoints it never reads.
DIFFUSERS_PATTERNS = ["model_index.json", "*/*.safetensors", "*/*.json", "*/*.txt", "*/*.model"]
# Alternative weight variants double the download; the services load the default variant.
IGNORE_PATTERNS = ["*.fp16.safetensors", "*non_ema*", "*.ema.safetensors", "*.onnx*", "*.msgpack", "*.h5"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# The settings that name checkpoints (the k8s ModelServices' fetchModels variables, and the ViT export's).
MODEL_VARIABLES = (
    "TRANSLATION_MODELS",
    "ASR_MODEL",
    "ASR_ASSISTANT_MODEL",
    "TTS_MODEL",
    "TTS_VOCODER",
    "TTS_VC_MODEL",
    "IMAGEGEN_MODEL",
    "VIT_CHECKPOINT",
)
# The dataset of the TTS voices' x-vectors: the one the SpeechT5 examples use.
VOICES_VARIABLE = "MODELSERVE_VOICES_REPO"
VOICES_REPO = "Matthijs/cmu-arctic-xvectors"
VOICES_FILE = "spkrec-xvect.zip"
CONVERT_VARIABLE = "MODELSERVE_CONVERT_BIN"
INIT_CONTAINER_CACHE = "/models/hf-cache"
PROFILES_DIR = Path(__file__).resolve().parents[1] / "env"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
PROBE_TIMEOUT_S = 10.0


class FetchError(Exception):
    """A checkpoint that cannot be fetched, said in one line; `exit_code` is the process's."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    revision: str | None

    @classmethod
    def parse(cls, spec: str) -> "Checkpoint":
        repo, _, revision = spec.partition("@")
        return cls(repo, revision or None)

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo


@dataclass(frozen=True)
class DownloadPlan:
    allow_patterns: list[str]
    convert_pickle: bool


def read_profile(profile: str) -> dict[str, str]:
    """A profile name (env/<name>.env in this checkout) or the path of an env file."""
    path = Path(profile) if profile.endswith(".env") or os.sep in profile else PROFILES_DIR / f"{profile}.env"
    if not path.is_file():
        raise FetchError(f"no profile {profile!r} ({path} not found)", EXIT_USAGE)
    from dotenv import dotenv_values

    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def model_specs(values: list[str]) -> list[str]:
    """The model specs settings name, in order, once each: a JSON object (its values), a JSON list, or one
    plain string (TRANSLATION_MODELS is JSON)."""
    specs: list[str] = []
    for value in values:
        value = value.strip()
        if value.startswith(("{", "[")):
            parsed = json.loads(value)
            specs.extend(parsed.values() if isinstance(parsed, dict) else parsed)
        elif value:
            specs.append(value)
    return list(dict.fromkeys(specs))


def is_hub_id(spec: str) -> bool:
    """`org/name[@revision]` (or a bare legacy `name`); anything else (models/asr/whisper, /models/x, ./x, an
    existing directory) is a local directory."""
    repo = spec.partition("@")[0]
    return bool(repo) and repo.count("/") <= 1 and not repo.startswith((".", "/")) and not Path(repo).is_dir()


def profile_checkpoints(settings: dict[str, str]) -> list[Checkpoint]:
    """The Hub checkpoints a profile's model settings name, in order, once each."""
    specs = model_specs([settings.get(name, "") for name in MODEL_VARIABLES])
    return [Checkpoint.parse(spec) for spec in specs if is_hub_id(spec)]


def plan_download(checkpoint: Checkpoint, files: list[str], convert_pickle: bool) -> DownloadPlan:
    """What to download from a repository's file list: safetensors and what loads them, never a pickle
    unless it is to be converted."""
    allow = DIFFUSERS_PATTERNS if "model_index.json" in files else TRANSFORMERS_PATTERNS
    weights = [f for f in files if fnmatch.fnmatch(f, "*.safetensors") and not is_ignored(f)]
    if weights:
        return DownloadPlan(allow, convert_pickle=False)
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        raise FetchError(
            f"{checkpoint} has no weights this platform can load (files: {', '.join(files[:12])})"
        )
    if not convert_pickle:
        raise FetchError(
            f"{checkpoint} has only pickled weights ({', '.join(pickles[:4])}), which the servers never load; "
            "use a revision with safetensors ('<repo>@refs/pr/<N>', the Hub's conversion pull request) or pass "
            f"--convert-pickle (or set {CONVERT_VARIABLE}=1) to convert them once "
            "(torch.load(weights_only=True), trusting the repository)"
        )
    return DownloadPlan([*allow, *pickles, "*.bin.index.json"], convert_pickle=True)


def is_ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in IGNORE_PATTERNS)


def marker_path(cache: Path, checkpoint: Checkpoint) -> Path:
    """Written once a checkpoint is complete: the next run (or pod start) skips it without the network."""
    return (
        cache
        / "modelserve-complete"
        / f"{checkpoint.repo.replace('/', '--')}@{checkpoint.revision or 'main'}.json"
    )


def convert_pickles(snapshot: Path) -> list[str]:
    """Every pickled weights file of a snapshot -> safetensors beside it; the pickle is removed."""
    import torch
    from safetensors.torch import save_file

    converted = []
    for pickle in sorted(p for p in snapshot.rglob("*") if p.name.endswith(PICKLE_SUFFIXES)):
        state = torch.load(pickle, map_location="cpu", weights_only=True)
        # Tied weights share storage, which save_file refuses: store copies; from_pretrained ties them again.
        tensors = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
        target = pickle.with_name(safetensors_name(pickle.name))
        save_file(tensors, str(target), metadata={"format": "pt"})
        blob = pickle.resolve()
        pickle.unlink()
        blob.unlink(missing_ok=True)
        converted.append(target.name)
    for index in snapshot.rglob("*.bin.index.json"):
        content = json.loads(index.read_text())
        content["weight_map"] = {k: safetensors_name(v) for k, v in content.get("weight_map", {}).items()}
        index.with_name(safetensors_name(index.name)).write_text(json.dumps(content, indent=2))
    return converted


def safetensors_name(pickle_name: str) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors (the names transformers looks for)."""
    stem = re.sub(r"\.(bin|pt|pth|ckpt)(?=\.index\.json$|$)", ".safetensors", pickle_name)
    return stem.replace("pytorch_model", "model")


def extract_voices(archive: Path, voices_dir: Path) -> list[str]:
    """One x-vector per CMU ARCTIC speaker (its first utterance) saved as <speaker>.npy."""
    pattern = re.compile(r"cmu_us_([a-z]+)_arctic.*\.npy$")
    first: dict[str, str] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            match = pattern.search(name.rsplit("/", 1)[-1])
            if match and match.group(1) not in first:
                first[match.group(1)] = name
        if not first:
            raise FetchError(f"{archive}: no cmu_us_<speaker>_arctic*.npy x-vectors inside")
        voices_dir.mkdir(parents=True, exist_ok=True)
        for speaker, name in first.items():
            (voices_dir / f"{speaker}.npy").write_bytes(zf.read(name))
    return sorted(first)


class Fetcher:
    """Fetches checkpoints into the Hugging Face cache `cache` and voices into `voices_dir`; `hub` is
    huggingface_hub (or a stand-in with the same functions)."""

    def __init__(self, cache: Path, voices_dir: Path | None, hub, convert_pickle: bool):
        self.cache = cache
        self.voices_dir = voices_dir
        self.hub = hub
        self.convert_pickle = convert_pickle

    @classmethod
    def for_directory(cls, directory: Path, hub, convert_pickle: bool) -> "Fetcher":
        """The pods' /models layout under `directory`."""
        return cls(directory / "hf-cache", directory / "voices", hub, convert_pickle)

    def missing(self, checkpoints: list[Checkpoint]) -> list[Checkpoint]:
        return [c for c in checkpoints if not marker_path(self.cache, c).exists()]

    def wants_voices(self, voices_repo: str | None) -> bool:
        return (
            voices_repo is not None and self.voices_dir is not None and not any(self.voices_dir.glob("*.npy"))
        )

    def run(self, checkpoints: list[Checkpoint], voices_repo: str | None) -> list[str]:
        missing = self.missing(checkpoints)
        # Every file list first: a refusal comes before any download.
        plans = [(c, plan_download(c, self.list_files(c), self.convert_pickle)) for c in missing]
        report = [f"{c}: already complete" for c in checkpoints if c not in missing]
        for checkpoint, plan in plans:
            report.append(f"{checkpoint}: {self.download(checkpoint, plan)}")
        if voices_repo is not None:
            voices = self.fetch_voices(voices_repo) if self.wants_voices(voices_repo) else "present"
            report.append(f"voices ({voices_repo}): {voices}")
        return report

    def list_files(self, checkpoint: Checkpoint) -> list[str]:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return list(self.hub.list_repo_files(checkpoint.repo, revision=checkpoint.revision))
        except HfHubHTTPError as exc:
            raise FetchError(f"cannot list {checkpoint} on the Hub: {str(exc).splitlines()[0]}") from None

    def download(self, checkpoint: Checkpoint, plan: DownloadPlan) -> str:
        snapshot = Path(
            self.hub.snapshot_download(
                checkpoint.repo,
                revision=checkpoint.revision,
                cache_dir=self.cache / "hub",
                allow_patterns=plan.allow_patterns,
                ignore_patterns=IGNORE_PATTERNS,
            )
        )
        outcome = "downloaded"
        if plan.convert_pickle:
            outcome += ", converted to " + ", ".join(convert_pickles(snapshot))
        marker = marker_path(self.cache, checkpoint)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"repo": checkpoint.repo, "revision": checkpoint.revision}))
        return outcome

    def fetch_voices(self, repo: str) -> str:
        archive = self.hub.hf_hub_download(
            repo, VOICES_FILE, repo_type="dataset", cache_dir=self.cache / "hub"
        )
        return "extracted " + ", ".join(extract_voices(Path(archive), self.voices_dir))


def import_hub(hint: str):
    try:
        import huggingface_hub
    except ImportError:
        raise FetchError(f"fetching models needs huggingface_hub: {hint}", EXIT_USAGE) from None
    return huggingface_hub


def convert_by_default() -> bool:
    return os.environ.get(CONVERT_VARIABLE) == "1"


# -- `modelserve models fetch` ---------------------------------------------------------------------------------


def add_fetch_command(subcommands) -> None:
    """`models fetch` under the CLI's `models` command."""
    parser = subcommands.add_parser(
        "fetch",
        help="download a profile's checkpoints (safetensors only) into a directory, as the init container does",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profile", default="hub", help="env/<profile>.env of this checkout, or an env file (default: hub)"
    )
    parser.add_argument("--dir", required=True, type=Path, help="the models directory (the pods' /models)")
    parser.add_argument(
        "--convert-pickle",
        action="store_true",
        default=convert_by_default(),
        help="convert checkpoints that ship only pickled weights to safetensors once, with "
        f"torch.load(weights_only=True): this trusts their source (default: ${CONVERT_VARIABLE}=1)",
    )
    parser.set_defaults(run_local=run_fetch)


def check_hub_reachable(name: str, profile: str, directory: Path) -> None:
    """One short request instead of huggingface_hub's retries (~25 s) when the Hub cannot be reached."""
    from huggingface_hub import constants

    elsewhere = f"`modelserve models fetch --profile {profile} --dir DIR` and copy DIR to {directory}"
    if constants.HF_HUB_OFFLINE:
        raise FetchError(
            f"cannot fetch {name}: HF_HUB_OFFLINE is set; unset it where the Hub is reachable, "
            f"or fetch there with {elsewhere}",
            EXIT_UNREACHABLE,
        )
    try:
        urllib.request.urlopen(
            urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=PROBE_TIMEOUT_S
        )
    except urllib.error.HTTPError:
        pass  # an answer, whatever its status: the Hub is reachable
    except OSError as exc:  # URLError, timeouts
        reason = getattr(exc, "reason", None) or exc or type(exc).__name__
        raise FetchError(
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) for {name}: {reason}; "
            f"fetch it where the Hub is reachable with {elsewhere}, or set HF_ENDPOINT to a mirror",
            EXIT_UNREACHABLE,
        ) from None


def run_fetch(args: argparse.Namespace) -> int:
    try:
        hub = import_hub("pip install 'modelserve[fetch]'")
        settings = read_profile(args.profile)
        checkpoints, voices_repo = profile_checkpoints(settings), settings.get(VOICES_VARIABLE) or None
        fetcher = Fetcher.for_directory(args.dir, hub, args.convert_pickle)
        missing = [str(c) for c in fetcher.missing(checkpoints)]
        if fetcher.wants_voices(voices_repo):
            missing.append(voices_repo)
        if missing:
            check_hub_reachable(missing[0], args.profile, args.dir)
        report = fetcher.run(checkpoints, voices_repo)
    except FetchError as exc:
        print("modelserve: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return exc.exit_code
    for line in report or ["nothing to fetch: the profile names local directories only"]:
        print(line)
    print(
        f"serve them with HF_HOME={args.dir / 'hf-cache'} HF_HUB_OFFLINE=1 TTS_VOICES_DIR={args.dir / 'voices'}"
    )
    return 0


# -- the init container: python /app/fetch_models.py VAR... [--voices VAR] -----------------------------------


def init_container(argv: list[str]) -> int:
    """Fetch what the variables named in `argv` hold into $HF_HOME (the pod's /models volume)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="fetch_models.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "variables", nargs="+", metavar="VAR", help="environment variables naming checkpoints"
    )
    parser.add_argument("--voices", metavar="VAR", help="the variable naming the TTS voices directory")
    parser.add_argument("--convert-pickle", action="store_true", default=convert_by_default())
    args = parser.parse_args(argv)
    specs = model_specs([os.environ.get(name, "") for name in args.variables])
    for spec in specs:
        if not is_hub_id(spec):
            log.info("%s: local directory, nothing to fetch", spec)
    voices_dir = Path(os.environ[args.voices]) if args.voices else None
    try:
        hub = import_hub("the image's service extra installs it")
        fetcher = Fetcher(
            Path(os.environ.get("HF_HOME", INIT_CONTAINER_CACHE)), voices_dir, hub, args.convert_pickle
        )
        voices_repo = os.environ.get(VOICES_VARIABLE, VOICES_REPO) if voices_dir else None
        report = fetcher.run([Checkpoint.parse(spec) for spec in specs if is_hub_id(spec)], voices_repo)
    except FetchError as exc:
        log.error("%s", " ".join(str(exc).split()))
        return exc.exit_code
    for line in report:
        log.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(init_container(sys.argv[1:]))
