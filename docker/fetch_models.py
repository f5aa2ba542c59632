"""Init-container model fetcher: fill the model cache (HF_HOME on the /models volume) once.

    python /app/fetch_models.py TRANSLATION_MODELS            # names of env vars to read
    python /app/fetch_models.py ASR_MODEL ASR_ASSISTANT_MODEL
    python /app/fetch_models.py TTS_MODEL TTS_VOCODER TTS_VC_MODEL --voices TTS_VOICES_DIR

Each variable holds a Hub id (`org/name`, optionally `org/name@revision`), a local directory
(skipped: it is baked in or mounted), or a JSON object/list of those (TRANSLATION_MODELS).
Only safetensors weights plus config/tokenizer files are downloaded: a repository without
safetensors is an error unless MODELSERVE_CONVERT_BIN=1 opts into a one-time conversion of
its pytorch_model.bin with `torch.load(weights_only=True)` (no arbitrary unpickling), so the
server itself never reads a pickle. A marker written after a complete download makes the
next pod start skip the repository without touching the network.

`--voices VAR`: the TTS service needs named speaker x-vectors (`<name>.npy`) in the directory
VAR names. When it holds none, one vector per speaker is taken from the CMU ARCTIC x-vector
set the SpeechT5 examples use (dataset `Matthijs/cmu-arctic-xvectors`, `spkrec-xvect.zip`).
"""

import fnmatch
import json
import logging
import os
import re
import sys
import zipfile
from pathlib import Path

log = logging.getLogger("fetch_models")

# Config, tokenizer (json/txt/sentencepiece/tiktoken) and safetensors weights - never pickles.
TRANSFORMERS_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.spm", "*.tiktoken"]
# diffusers layout: one folder per component; the repo root of SD 1.5 also holds multi-GB
# single-file checkpoints that from_pretrained never reads, hence folder-level patterns.
DIFFUSERS_PATTERNS = ["model_index.json", "*/*.safetensors", "*/*.json", "*/*.txt", "*/*.model"]
# Alternative weight variants double the download; the services load the default variant.
IGNORE_PATTERNS = ["*.fp16.safetensors", "*non_ema*", "*.ema.safetensors", "*.onnx*", "*.msgpack", "*.h5"]


def parse_specs(values: list[str]) -> list[str]:
    """Model specs from env values: a JSON object (its values), a JSON list, or one plain string."""
    specs: list[str] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        if value[0] in "{[":
            parsed = json.loads(value)
            specs.extend(parsed.values() if isinstance(parsed, dict) else parsed)
        else:
            specs.append(value)
    return list(dict.fromkeys(specs))  # de-duplicate, keep order


def is_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../")) or Path(spec).is_dir()


def split_revision(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.partition("@")
    return repo, revision or None


def select_patterns(files: list[str]) -> list[str]:
    return DIFFUSERS_PATTERNS if "model_index.json" in files else TRANSFORMERS_PATTERNS


def wanted(files: list[str], allow: list[str], ignore: list[str]) -> list[str]:
    return [
        f
        for f in files
        if any(fnmatch.fnmatch(f, p) for p in allow) and not any(fnmatch.fnmatch(f, p) for p in ignore)
    ]


def marker_path(cache: Path, repo: str, revision: str | None) -> Path:
    return cache / "modelserve-complete" / f"{repo.replace('/', '--')}@{revision or 'main'}.json"


def convert_bin(snapshot: Path) -> None:
    """pytorch_model.bin -> model.safetensors inside the snapshot, then drop the pickle."""
    import torch
    from safetensors.torch import save_file

    for pickle in sorted(snapshot.glob("*.bin")):
        state = torch.load(pickle, map_location="cpu", weights_only=True)
        # Tied weights share storage and save_file refuses shared tensors: store copies;
        # from_pretrained ties them again.
        tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
        target = snapshot / pickle.name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        save_file(tensors, str(target), metadata={"format": "pt"})
        blob = pickle.resolve()
        pickle.unlink()
        blob.unlink(missing_ok=True)
        log.info("converted %s -> %s", pickle.name, target.name)


def fetch(spec: str, cache: Path, hub=None) -> str:
    """Download one repository into the cache unless its marker says it is complete."""
    if hub is None:
        import huggingface_hub as hub
    repo, revision = split_revision(spec)
    marker = marker_path(cache, repo, revision)
    if marker.exists():
        return "cached"
    files = hub.list_repo_files(repo, revision=revision)
    allow = select_patterns(files)
    selected = wanted(files, allow, IGNORE_PATTERNS)
    has_safetensors = any(f.endswith(".safetensors") for f in selected)
    convert = os.environ.get("MODELSERVE_CONVERT_BIN") == "1"
    if not has_safetensors and not convert:
        raise SystemExit(
            f"{spec}: no safetensors weights (files: {', '.join(files[:20])}). Use a revision that has "
            "them (e.g. the Hub's conversion PR: '<repo>@refs/pr/<N>') or set MODELSERVE_CONVERT_BIN=1 "
            "for a one-time weights_only conversion of pytorch_model.bin."
        )
    if not has_safetensors:
        allow = [*allow, "pytorch_model*.bin", "pytorch_model.bin.index.json"]
    snapshot = Path(
        hub.snapshot_download(
            repo,
            revision=revision,
            cache_dir=cache / "hub",
            allow_patterns=allow,
            ignore_patterns=IGNORE_PATTERNS,
        )
    )
    if not has_safetensors:
        convert_bin(snapshot)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"repo": repo, "revision": revision, "files": selected}))
    return "downloaded"


VOICES_REPO = "Matthijs/cmu-arctic-xvectors"
VOICES_FILE = "spkrec-xvect.zip"


def extract_voices(archive: Path, voices_dir: Path) -> list[str]:
    """One x-vector per CMU ARCTIC speaker (its first utterance) saved as <speaker>.npy."""
    pattern = re.compile(r"cmu_us_([a-z]+)_arctic.*\.npy$")
    first: dict[str, str] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            m = pattern.search(name.rsplit("/", 1)[-1])
            if m and m.group(1) not in first:
                first[m.group(1)] = name
        if not first:
            raise SystemExit(f"{archive}: no cmu_us_<speaker>_arctic*.npy x-vectors inside")
        voices_dir.mkdir(parents=True, exist_ok=True)
        for speaker, name in first.items():
            (voices_dir / f"{speaker}.npy").write_bytes(zf.read(name))
    return sorted(first)


def fetch_voices(voices_dir: Path, hub=None) -> str:
    if any(voices_dir.glob("*.npy")):
        return "present"
    if hub is None:
        import huggingface_hub as hub
    repo = os.environ.get("MODELSERVE_VOICES_REPO", VOICES_REPO)
    archive = hub.hf_hub_download(repo, VOICES_FILE, repo_type="dataset")
    return "extracted " + ", ".join(extract_voices(Path(archive), voices_dir))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    voices_var = None
    if "--voices" in argv:
        i = argv.index("--voices")
        voices_var = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    cache = Path(os.environ.get("HF_HOME", "/models/hf-cache"))
    for spec in parse_specs([os.environ.get(name, "") for name in argv]):
        if is_local(spec):
            log.info("%s: local directory, nothing to fetch", spec)
            continue
        log.info("%s: %s", spec, fetch(spec, cache))
    if voices_var:
        voices_dir = Path(os.environ[voices_var])
        log.info("voices in %s: %s", voices_dir, fetch_voices(voices_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
