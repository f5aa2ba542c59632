"""clients/models_fetch.py, run as `modelserve models fetch` and as the init container (/app/fetch_models.py):
the hub profile's ids, the download patterns, the offline answer, the pickle refusal and conversion, resuming
and the voices, against a stand-in Hub (no network in tests)."""

import argparse
import ast
import fnmatch
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clients import models_fetch
from clients.models_fetch import (
    MODEL_VARIABLES,
    VOICES_REPO,
    VOICES_VARIABLE,
    Checkpoint,
    Fetcher,
    FetchError,
    extract_voices,
    init_container,
    marker_path,
    model_specs,
    profile_checkpoints,
    read_profile,
    run_fetch,
)
from services.kit.testing import free_port

REPO = Path(__file__).resolve().parents[2]


def vit_checkpoint() -> str:
    """The checkpoint the ViT image's SavedModel is exported from (read, not imported: TensorFlow loads slowly)."""
    tree = ast.parse((REPO / "services/vit/export.py").read_text())
    (value,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["DEFAULT_CHECKPOINT"]
    ]
    return value


def configmap_settings() -> dict[str, str]:
    """Every literal of the torch services' ConfigMaps (k8s/base/*/kustomization.yaml)."""
    settings = {}
    for path in (REPO / "k8s/base").glob("*/kustomization.yaml"):
        for generator in yaml.safe_load(path.read_text()).get("configMapGenerator", []):
            for literal in generator.get("literals", []):
                name, _, value = literal.partition("=")
                settings[name] = value
    return settings


def init_container_variables() -> set[str]:
    """The settings the ModelServices' init containers fetch (their fetchModels arguments)."""
    names = set()
    for path in (REPO / "k8s/base").glob("*/model-service.yaml"):
        command = yaml.safe_load(path.read_text())["spec"].get("fetchModels", [])
        names.update(arg for arg in command[2:] if arg.isupper())
    return names - {"TTS_VOICES_DIR"}


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clients", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO,
    )


# -- the hub profile is what the manifests deploy ---------------------------------------------------------


def test_hub_profile_names_the_checkpoints_the_configmaps_deploy():
    deployed = configmap_settings()
    fetched = {str(c) for c in profile_checkpoints(read_profile("hub"))}
    deployed_ids = {str(c) for c in profile_checkpoints({n: deployed[n] for n in init_container_variables()})}
    assert len(deployed_ids) == 10  # FSMT x4, Whisper + assistant, SpeechT5 + HiFi-GAN + VC, SD 1.5
    assert fetched == deployed_ids | {vit_checkpoint()}


def test_hub_profile_settings_agree_with_the_configmaps_and_the_init_container():
    profile, deployed = read_profile("hub"), configmap_settings()
    assert init_container_variables() <= set(MODEL_VARIABLES)
    shared = (set(profile) & set(deployed)) - {"HF_HUB_OFFLINE"}
    assert {"TRANSLATION_MODELS", "ASR_MODEL", "TTS_VOICE_ALIASES", "IMAGEGEN_MODEL"} <= shared
    assert {
        name: json.loads(profile[name]) if name == "TRANSLATION_MODELS" else profile[name] for name in shared
    } == {
        name: json.loads(deployed[name]) if name == "TRANSLATION_MODELS" else deployed[name]
        for name in shared
    }
    assert profile[VOICES_VARIABLE] == VOICES_REPO  # the init container's default


def test_model_specs_read_json_objects_lists_and_revisions():
    assert model_specs(['{"en-de": "a/b", "de-en": "c/d"}', "a/b", "", '["e/f"]']) == ["a/b", "c/d", "e/f"]
    assert Checkpoint.parse("org/m@refs/pr/3") == Checkpoint("org/m", "refs/pr/3")


def test_tiny_profile_has_nothing_to_fetch(tmp_path):
    result = run_cli("models", "fetch", "--profile", "tiny", "--dir", str(tmp_path), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert "nothing to fetch" in result.stdout


# -- offline: one line, at once --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, reason",
    [
        (
            {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0"},
            "cannot reach the Hugging Face Hub",
        ),
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ],
    ids=["hub-unreachable", "hf-hub-offline"],
)
def test_offline_stops_with_one_line_naming_the_model(tmp_path, env, reason):
    result = run_cli("models", "fetch", "--profile", "hub", "--dir", str(tmp_path / "models"), **env)
    assert result.returncode == 3 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("modelserve: ") and reason in line
    assert "facebook/wmt19-en-de" in line and "modelserve models fetch --profile hub --dir DIR" in line
    assert not (tmp_path / "models").exists()


# -- a stand-in Hub ----------------------------------------------------------------------------------------


class FakeHub:
    """list_repo_files / snapshot_download / hf_hub_download over in-memory repositories, in the HF cache
    layout; every call is recorded, and `reachable=False` fails any call as the network would."""

    def __init__(self, repos: dict[str, dict[str, bytes]], reachable: bool = True):
        self.repos = repos
        self.reachable = reachable
        self.calls: list[tuple[str, str]] = []
        self.downloaded: dict[str, list[str]] = {}

    def _call(self, name: str, repo: str) -> None:
        self.calls.append((name, repo))
        if not self.reachable:
            raise AssertionError(f"{name}({repo}) reached the network")

    def list_repo_files(self, repo, revision=None):
        self._call("list", repo)
        return list(self.repos[repo])

    def snapshot_download(self, repo, revision, cache_dir, allow_patterns, ignore_patterns):
        self._call("download", repo)
        snapshot = Path(cache_dir) / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
        self.downloaded[repo] = []
        for name, data in sorted(self.repos[repo].items()):
            chosen = any(fnmatch.fnmatch(name, p) for p in allow_patterns)
            if chosen and not any(fnmatch.fnmatch(name, p) for p in ignore_patterns):
                self.downloaded[repo].append(name)
                blob = snapshot.parents[1] / "blobs" / name.replace("/", "_")
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).unlink(missing_ok=True)
                os.symlink(blob, snapshot / name)
        return str(snapshot)

    def hf_hub_download(self, repo, filename, repo_type, cache_dir):
        self._call("download", repo)
        path = Path(cache_dir) / "datasets" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.repos[repo][filename])
        return str(path)


TIED = torch.arange(6.0).reshape(2, 3)


def pickled_weights() -> bytes:
    buffer = io.BytesIO()
    # Tied weights (one storage, two names) as in FSMT: save_file alone would refuse them.
    torch.save({"encoder.embed.weight": TIED, "decoder.embed.weight": TIED, "bias": torch.ones(2)}, buffer)
    return buffer.getvalue()


def voices_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for speaker in ("slt", "bdl"):
            vector = io.BytesIO()
            np.save(vector, np.zeros(512, np.float32))
            archive.writestr(f"spkrec-xvect/cmu_us_{speaker}_arctic-wav-arctic_a0001.npy", vector.getvalue())
    return buffer.getvalue()


SAFE = {
    "config.json": b"{}",
    "model.safetensors": b"weights",
    "pytorch_model.bin": b"pickle",
    "tf_model.h5": b"h5",
}
PICKLE_ONLY = {"config.json": b"{}", "pytorch_model.bin": pickled_weights()}


def test_pickle_only_checkpoint_is_refused_before_anything_is_downloaded(tmp_path):
    hub = FakeHub({"org/safe": SAFE, "facebook/old": PICKLE_ONLY})
    checkpoints = [Checkpoint.parse("org/safe"), Checkpoint.parse("facebook/old")]
    with pytest.raises(
        FetchError, match=r"facebook/old has only pickled weights \(pytorch_model.bin\).*--convert-pickle"
    ):
        Fetcher.for_directory(tmp_path, hub, convert_pickle=False).run(checkpoints, None)
    assert ("download", "org/safe") not in hub.calls and not (tmp_path / "hf-cache").exists()


def fetch_one(directory: Path, repo: str, files: dict[str, bytes], convert_pickle: bool = False):
    """One checkpoint from a stand-in Hub into `directory`: the Hub, the report and the snapshot folder."""
    hub = FakeHub({repo: files})
    report = Fetcher.for_directory(directory, hub, convert_pickle).run([Checkpoint.parse(repo)], None)
    (snapshot,) = (directory / "hf-cache/hub").glob(f"models--{repo.replace('/', '--')}/snapshots/*")
    return hub, report, snapshot


def test_safetensors_only_are_downloaded(tmp_path):
    _, report, snapshot = fetch_one(tmp_path, "org/safe", SAFE)
    assert report == ["org/safe: downloaded"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]


def test_convert_pickle_leaves_safetensors_only_with_tied_weights(tmp_path):
    _, report, snapshot = fetch_one(tmp_path, "facebook/old", PICKLE_ONLY, convert_pickle=True)
    assert report == ["facebook/old: downloaded, converted to model.safetensors"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert not list((tmp_path / "hf-cache/hub").rglob("blobs/pytorch_model.bin"))
    tensors = load_file(snapshot / "model.safetensors")
    assert torch.equal(tensors["decoder.embed.weight"], TIED) and torch.equal(tensors["bias"], torch.ones(2))


def test_interrupted_fetch_resumes_with_what_is_missing(tmp_path):
    repos = {
        "org/done": SAFE,
        "org/partial": SAFE,
        "Matthijs/cmu-arctic-xvectors": {"spkrec-xvect.zip": voices_zip()},
    }
    checkpoints = [Checkpoint.parse("org/done"), Checkpoint.parse("org/partial")]
    first = FakeHub(repos)
    Fetcher.for_directory(tmp_path, first, convert_pickle=False).run(checkpoints[:1], None)
    # The run was cut off inside org/partial: some files there, no marker.
    partial = tmp_path / "hf-cache/hub/models--org--partial/snapshots/abc123"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")

    again = FakeHub(repos)
    report = Fetcher.for_directory(tmp_path, again, convert_pickle=False).run(
        checkpoints, "Matthijs/cmu-arctic-xvectors"
    )
    assert report == [
        "org/done: already complete",
        "org/partial: downloaded",
        "voices (Matthijs/cmu-arctic-xvectors): extracted bdl, slt",
    ]
    assert ("list", "org/done") not in again.calls and ("list", "org/partial") in again.calls
    assert (partial / "model.safetensors").exists() and sorted(
        p.name for p in (tmp_path / "voices").iterdir()
    ) == [
        "bdl.npy",
        "slt.npy",
    ]

    offline = FakeHub(repos, reachable=False)
    report = Fetcher.for_directory(tmp_path, offline, convert_pickle=False).run(
        checkpoints, "Matthijs/cmu-arctic-xvectors"
    )
    assert report[-1] == "voices (Matthijs/cmu-arctic-xvectors): present" and offline.calls == []


# -- what is downloaded ------------------------------------------------------------------------------------


TRANSFORMERS_REPO = {
    "config.json": b"{}",
    "model.safetensors": b"w",
    "pytorch_model.bin": b"p",
    "tf_model.h5": b"h",
    "vocab-src.json": b"{}",
    "merges.txt": b"",
    "sentencepiece.bpe.model": b"s",
    "model.fp16.safetensors": b"x",
    "README.md": b"",
}
DIFFUSERS_REPO = {
    "model_index.json": b"{}",
    "v1-5-pruned-emaonly.safetensors": b"4GB",
    "v1-5-pruned.ckpt": b"",
    "unet/config.json": b"{}",
    "unet/diffusion_pytorch_model.safetensors": b"u",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"u16",
    "unet/diffusion_pytorch_model.non_ema.safetensors": b"",
    "tokenizer/vocab.json": b"{}",
    "tokenizer/merges.txt": b"",
    "scheduler/scheduler_config.json": b"{}",
    "safety_checker/pytorch_model.bin": b"p",
}


@pytest.mark.parametrize(
    "files, downloaded",
    [
        (
            TRANSFORMERS_REPO,
            ["config.json", "merges.txt", "model.safetensors", "sentencepiece.bpe.model", "vocab-src.json"],
        ),
        (  # diffusers: the components' folders, not the root's multi-GB single-file checkpoints
            DIFFUSERS_REPO,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "tokenizer/merges.txt",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
            ],
        ),
    ],
    ids=["transformers", "diffusers"],
)
def test_only_safetensors_configs_and_tokenizers_are_downloaded(tmp_path, files, downloaded):
    hub, _, _ = fetch_one(tmp_path, "org/model", files)
    assert hub.downloaded == {"org/model": downloaded}


# -- the voices --------------------------------------------------------------------------------------------


def test_voices_are_one_xvector_per_speaker_its_first_utterance(tmp_path):
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in (
            "cmu_us_slt_arctic-wav-arctic_a0002.npy",
            "cmu_us_slt_arctic-wav-arctic_a0001.npy",
            "cmu_us_bdl_arctic-wav-arctic_b0539.npy",
            "readme.txt",
        ):
            zf.writestr(f"spkrec-xvect/{name}", name.encode())
    assert extract_voices(archive, tmp_path / "voices") == ["bdl", "slt"]
    assert (tmp_path / "voices/slt.npy").read_bytes() == b"cmu_us_slt_arctic-wav-arctic_a0001.npy"


def test_voices_archive_without_xvectors_is_refused(tmp_path):
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("spkrec-xvect/other.npy", b"")
    with pytest.raises(FetchError, match="no cmu_us_"):
        extract_voices(archive, tmp_path / "voices")


# -- the init container: python /app/fetch_models.py VAR... [--voices VAR] -------------------------------


@pytest.fixture
def stand_in_hub(monkeypatch):
    """Both ways get this Hub instead of huggingface_hub (and the CLI's reachability probe passes)."""
    hub = FakeHub(
        {"org/safe": SAFE, "facebook/old": PICKLE_ONLY, VOICES_REPO: {"spkrec-xvect.zip": voices_zip()}}
    )
    monkeypatch.setattr(models_fetch, "import_hub", lambda hint: hub)
    monkeypatch.setattr(models_fetch, "check_hub_reachable", lambda *args: None)
    for name in ("HF_HOME", VOICES_VARIABLE, "MODELSERVE_CONVERT_BIN", *MODEL_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return hub


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_init_container_and_cli_lay_out_the_same_directory(tmp_path, monkeypatch, stand_in_hub):
    local = tmp_path / "local-model"
    local.mkdir()
    settings = {
        "TRANSLATION_MODELS": json.dumps({"en-de": "org/safe", "de-en": str(local)}),
        "TTS_MODEL": "org/safe",
        VOICES_VARIABLE: VOICES_REPO,
    }
    profile = tmp_path / "test.env"
    profile.write_text("".join(f"{name}='{value}'\n" for name, value in settings.items()))
    assert (
        run_fetch(argparse.Namespace(profile=str(profile), dir=tmp_path / "cli", convert_pickle=False)) == 0
    )

    monkeypatch.setenv("HF_HOME", str(tmp_path / "pod/hf-cache"))
    monkeypatch.setenv("TTS_VOICES_DIR", str(tmp_path / "pod/voices"))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert init_container(["TRANSLATION_MODELS", "TTS_MODEL", "--voices", "TTS_VOICES_DIR"]) == 0

    # The same checkpoints, markers and voices, file for file.
    pod = tree(tmp_path / "pod")
    assert tree(tmp_path / "cli") == pod
    assert "hf-cache/hub/models--org--safe/snapshots/abc123/model.safetensors" in pod
    assert json.loads(pod["hf-cache/modelserve-complete/org--safe@main.json"])["repo"] == "org/safe"
    assert sorted(k for k in pod if k.startswith("voices/")) == ["voices/bdl.npy", "voices/slt.npy"]


def test_init_container_refuses_pickles_unless_the_pod_opts_in(tmp_path, monkeypatch, caplog, stand_in_hub):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TRANSLATION_MODELS", json.dumps({"en-de": "org/safe", "de-en": "facebook/old"}))
    assert init_container(["TRANSLATION_MODELS"]) == 1
    assert (
        "facebook/old has only pickled weights" in caplog.text and "MODELSERVE_CONVERT_BIN=1" in caplog.text
    )
    assert stand_in_hub.downloaded == {} and not (tmp_path / "hf-cache").exists()

    monkeypatch.setenv("MODELSERVE_CONVERT_BIN", "1")
    assert init_container(["TRANSLATION_MODELS"]) == 0
    (snapshot,) = (tmp_path / "hf-cache/hub").glob("models--facebook--old/snapshots/*")
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]


def test_init_container_skips_local_directories_and_present_voices(
    tmp_path, monkeypatch, caplog, stand_in_hub
):
    caplog.set_level(logging.INFO)
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "a.npy").write_bytes(b"")
    monkeypatch.setenv("TTS_MODEL", str(tmp_path))
    monkeypatch.setenv("TTS_VOICES_DIR", str(voices))
    assert init_container(["TTS_MODEL", "--voices", "TTS_VOICES_DIR"]) == 0
    assert "local directory, nothing to fetch" in caplog.text and stand_in_hub.calls == []


def test_the_file_alone_runs_as_the_init_container(tmp_path):
    """What the torch image does: /app/fetch_models.py is this one file, without the clients package."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(REPO / "clients/models_fetch.py", app / "fetch_models.py")
    cache, voices, local = tmp_path / "hf-cache", tmp_path / "voices", tmp_path / "local-model"
    voices.mkdir()
    (voices / "slt.npy").write_bytes(b"")
    local.mkdir()
    marker = marker_path(cache, Checkpoint.parse("org/done"))
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    # The project's packages cannot be imported: a file that needed them would fail here.
    run_alone = (
        "import runpy, sys; sys.modules.update(clients=None, services=None); "
        "sys.argv = ['fetch_models.py', *sys.argv[1:]]; runpy.run_path('fetch_models.py', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_ENDPOINT")}
    env.update(
        HF_HOME=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSLATION_MODELS=json.dumps({"en-de": "org/done", "de-en": str(local)}),
        TTS_VOICES_DIR=str(voices),
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", run_alone, "TRANSLATION_MODELS", "--voices", "TTS_VOICES_DIR"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=app,
    )
    assert result.returncode == 0, result.stderr
    assert f"{local}: local directory, nothing to fetch" in result.stderr
    assert "org/done: already complete" in result.stderr
    assert f"voices ({VOICES_REPO}): present" in result.stderr

    missing = subprocess.run(
        [sys.executable, "-I", "-c", run_alone], capture_output=True, text=True, timeout=120, env=env, cwd=app
    )
    assert missing.returncode == 2 and "VAR" in missing.stderr
