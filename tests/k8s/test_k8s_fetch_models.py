"""docker/fetch_models.py (the init container's downloader) against a fake Hub."""

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
from k8s_support import REPO

spec = importlib.util.spec_from_file_location("fetch_models", REPO / "docker/fetch_models.py")
fetch_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_models)


class FakeHub:
    """list_repo_files + snapshot_download over an in-memory repo, laid out like the HF cache."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.downloads = []

    def list_repo_files(self, repo, revision=None):
        return list(self.files)

    def snapshot_download(self, repo, revision, cache_dir, allow_patterns, ignore_patterns):
        chosen = fetch_models.wanted(list(self.files), allow_patterns, ignore_patterns)
        self.downloads.append((repo, revision, sorted(chosen)))
        base = Path(cache_dir) / f"models--{repo.replace('/', '--')}"
        snapshot = base / "snapshots" / "abc123"
        for name in chosen:
            blob = base / "blobs" / name.replace("/", "_")
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(self.files[name])
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(blob, snapshot / name)
        return str(snapshot)


def test_parse_specs():
    assert fetch_models.parse_specs(['{"en-de": "a/b", "de-en": "c/d"}', "a/b", "", '["e/f"]']) == [
        "a/b",
        "c/d",
        "e/f",
    ]
    assert fetch_models.split_revision("org/m@refs/pr/3") == ("org/m", "refs/pr/3")


def test_transformers_repo_gets_safetensors_and_tokenizer_never_pickles(tmp_path):
    hub = FakeHub(
        {
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
    )
    assert fetch_models.fetch("facebook/wmt19-en-de", tmp_path, hub) == "downloaded"
    ((_, _, files),) = hub.downloads
    assert files == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "sentencepiece.bpe.model",
        "vocab-src.json",
    ]
    # Second pod start: the marker answers, the Hub is not asked again.
    hub.list_repo_files = None
    assert fetch_models.fetch("facebook/wmt19-en-de", tmp_path, hub) == "cached"


def test_diffusers_repo_skips_root_single_file_checkpoints(tmp_path):
    hub = FakeHub(
        {
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
    )
    fetch_models.fetch("stable-diffusion-v1-5/stable-diffusion-v1-5", tmp_path, hub)
    ((_, _, files),) = hub.downloads
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]


def test_pickle_only_repo_is_refused_without_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELSERVE_CONVERT_BIN", raising=False)
    hub = FakeHub({"config.json": b"{}", "pytorch_model.bin": b"p"})
    with pytest.raises(SystemExit, match="no safetensors"):
        fetch_models.fetch("facebook/wmt19-de-en", tmp_path, hub)
    assert hub.downloads == [] and not (tmp_path / "modelserve-complete").exists()


def test_opt_in_converts_pickle_with_weights_only_and_removes_it(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    shared = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    bin_path = tmp_path / "src.bin"
    # Tied weights (one storage, two names) as in FSMT: save_file alone would refuse them.
    torch.save(
        {"encoder.embed.weight": shared, "decoder.embed.weight": shared, "bias": torch.ones(2)}, bin_path
    )
    hub = FakeHub({"config.json": b"{}", "pytorch_model.bin": bin_path.read_bytes()})
    monkeypatch.setenv("MODELSERVE_CONVERT_BIN", "1")
    fetch_models.fetch("facebook/wmt19-de-en", tmp_path / "cache", hub)
    snapshot = Path(next((tmp_path / "cache/hub").rglob("snapshots/abc123")))
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert not list((tmp_path / "cache/hub").rglob("blobs/pytorch_model.bin"))
    tensors = load_file(snapshot / "model.safetensors")
    assert torch.equal(tensors["decoder.embed.weight"], shared) and torch.equal(
        tensors["bias"], torch.ones(2)
    )
    marker = json.loads(
        fetch_models.marker_path(tmp_path / "cache", "facebook/wmt19-de-en", None).read_text()
    )
    assert marker["repo"] == "facebook/wmt19-de-en"


def test_main_skips_local_directories(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("TRANSLATION_MODELS", json.dumps({"en-de": str(tmp_path)}))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache"))
    assert fetch_models.main(["TRANSLATION_MODELS"]) == 0
    assert "local directory" in caplog.text


def voices_zip(path: Path, names: list[str]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(f"spkrec-xvect/{name}", name.encode())
    return path


def test_voices_one_per_speaker_from_the_arctic_xvectors(tmp_path, monkeypatch):
    archive = voices_zip(
        tmp_path / "x.zip",
        [
            "cmu_us_slt_arctic-wav-arctic_a0002.npy",
            "cmu_us_slt_arctic-wav-arctic_a0001.npy",
            "cmu_us_bdl_arctic-wav-arctic_b0539.npy",
            "readme.txt",
        ],
    )
    calls = []

    class Hub:
        def hf_hub_download(self, repo, filename, repo_type):
            calls.append((repo, filename, repo_type))
            return str(archive)

    voices = tmp_path / "voices"
    monkeypatch.delenv("MODELSERVE_VOICES_REPO", raising=False)
    assert fetch_models.fetch_voices(voices, Hub()) == "extracted bdl, slt"
    assert calls == [("Matthijs/cmu-arctic-xvectors", "spkrec-xvect.zip", "dataset")]
    assert (voices / "slt.npy").read_bytes() == b"cmu_us_slt_arctic-wav-arctic_a0001.npy"
    # Voices already there (baked, or a previous pod): nothing is downloaded.
    assert fetch_models.fetch_voices(voices, None) == "present"


def test_voices_archive_without_xvectors_is_an_error(tmp_path):
    archive = voices_zip(tmp_path / "x.zip", ["other.npy"])
    with pytest.raises(SystemExit, match="no cmu_us_"):
        fetch_models.extract_voices(archive, tmp_path / "voices")


def test_main_voices_flag(tmp_path, monkeypatch):
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "a.npy").write_bytes(b"")
    monkeypatch.setenv("TTS_MODEL", str(tmp_path))
    monkeypatch.setenv("TTS_VOICES_DIR", str(voices))
    assert fetch_models.main(["TTS_MODEL", "--voices", "TTS_VOICES_DIR"]) == 0
