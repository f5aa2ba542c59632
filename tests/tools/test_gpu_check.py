"""The GPU check (`make gpu-check`): its dry run on CPU at tiny sizes, the real sizes it builds, the small
build through the services' loading code, and the offline package list it installs on a GPU machine."""

import ast
import importlib
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from packaging.requirements import Requirement
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    FSMTConfig,
    FSMTForConditionalGeneration,
    SpeechT5Config,
    SpeechT5ForTextToSpeech,
    WhisperConfig,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
)

from tools.gpu_check.bootstrap import missing, pins
from tools.gpu_check.check import RANDOM_WEIGHT_SETTINGS, SERVICES
from tools.gpu_check.models import build_models
from tools.tiny_models.asr import whisper_tokenizer
from tools.tiny_models.sizes import REAL, SMALL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dry_run(models_dir, tmp_path_factory) -> tuple[Path, dict]:
    """`make gpu-check DEVICE=cpu`: the tiny models, float32, every torch service in its own process."""
    out = tmp_path_factory.mktemp("gpu-check")
    command = [sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--dtype", "float32", "--sizes", "tiny",
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def test_dry_run_starts_every_torch_service_and_answers_over_rest_and_grpc(dry_run):
    out, results = dry_run
    assert (results["device"], results["dtype"], results["sizes"]) == ("cpu", "float32", "tiny")
    assert [s["name"] for s in results["services"]] == ["translation", "asr", "tts", "imagegen"]
    for service in results["services"]:
        assert (service["rest"], service["grpc"], service["error"]) == ("ok", "ok", None), service
        assert service["ready_s"] > 0
        assert (out / "logs" / f"{service['name']}.log").is_file()
    assert results["ok"]


def test_dry_run_writes_a_throughput_table_with_rows_for_every_service(dry_run):
    out, results = dry_run
    table = (out / "results.md").read_text()
    for service in results["services"]:
        rows = [line for line in table.splitlines() if line.startswith(f"| {service['name']} |")]
        assert len(rows) >= len(service["throughput"]) >= 2
        modes = {row["mode"] for row in service["throughput"]}
        assert modes == {"one at a time", "all at once"}
        assert all(row["requests_per_s"] > 0 for row in service["throughput"])
    by_name = {s["name"]: s for s in results["services"]}
    for audio in ("asr", "tts"):
        assert all(row["real_time_factor"] > 0 for row in by_name[audio]["throughput"])
    assert all(row["output_unit"] == "images" and row["output_per_s"] > 0 for row in by_name["imagegen"]["throughput"])


def test_dry_run_exactness_checks_ran_on_batched_calls_and_hold_in_float32(dry_run):
    _, results = dry_run
    checks = {s["name"]: {e["check"]: e for e in s["exactness"]} for s in results["services"]}
    assert "assisted == plain decoding (one at a time)" in checks["asr"]
    assert checks["translation"]["all at once (batched) == one at a time: greedy translations"]["total"] == 6
    for service in results["services"]:
        batched = next(row for row in service["throughput"] if row["mode"] == "all at once")
        assert batched["mean_batch_size"] > 1, f"{service['name']}: the concurrent requests never shared a call"
    # On a CPU in float32 every comparison must agree exactly (or, for images, within a level).
    for name, by_check in checks.items():
        assert len(by_check) >= 2, name
        for check in by_check.values():
            assert check["matched"] == check["total"] > 0, (name, check)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_real_sizes_are_the_production_checkpoints():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        whisper = WhisperForConditionalGeneration(WhisperConfig(vocab_size=REAL.whisper_vocab, **REAL.whisper))
        assistant = WhisperForCausalLM(WhisperConfig(
            vocab_size=REAL.whisper_vocab, **{**REAL.whisper, "decoder_layers": REAL.assistant_decoder_layers}
        ))
        fsmt = FSMTForConditionalGeneration(FSMTConfig(
            langs=["en", "de"], src_vocab_size=REAL.fsmt_vocab, tgt_vocab_size=REAL.fsmt_vocab, **REAL.fsmt
        ))
        speecht5 = SpeechT5ForTextToSpeech(SpeechT5Config(vocab_size=81, **REAL.speecht5))
        unet, vae = UNet2DConditionModel(**REAL.unet), AutoencoderKL(**REAL.vae)
        clip = CLIPTextModel(CLIPTextConfig(**REAL.clip_text))
    # whisper-large-v2 is "1550M"; Stable Diffusion 1.5's components and speecht5_tts, exactly.
    assert abs(parameters(whisper) - 1.55e9) / 1.55e9 < 0.01
    assert (parameters(unet), parameters(vae), parameters(clip)) == (859_520_964, 83_653_863, 123_060_480)
    assert round(parameters(speecht5) / 1e6) == 144
    assert len(assistant.model.decoder.layers) == 2 and assistant.config.d_model == 1280
    layers = fsmt.model.encoder.layers
    assert (len(layers), len(fsmt.model.decoder.layers), layers[0].fc1.out_features) == (6, 6, 8192)
    assert fsmt.model.decoder.embed_tokens.weight.shape == (42024, 1024)
    assert REAL.unet["sample_size"] * 8 == 512  # SD 1.5's native 512x512


def test_whisper_tokenizer_is_padded_to_the_real_vocabulary(tmp_path):
    tokenizer, fillers = whisper_tokenizer(tmp_path, REAL.whisper_vocab)
    assert len(tokenizer) == 51865
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == fillers.stop
    assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 51865 - 1501 - 1  # timestamps come last
    # Ordinary text still becomes word pieces; every filler id decodes to text of its own.
    assert all(i < fillers.start for i in tokenizer.encode(" hello world today", add_special_tokens=False))
    decoded = [tokenizer.decode([i]) for i in (fillers.start, fillers.start + 1, fillers.stop - 1)]
    assert all(text.strip() for text in decoded) and len(set(decoded)) == 3


def test_built_models_load_and_warm_up_through_each_service(tmp_path, monkeypatch):
    """SMALL runs the same builders as REAL (real vocabularies, shrunk layers): the checkpoints load through the
    services' own settings and loading code and serve their warm-up requests."""
    settings = build_models(tmp_path, SMALL, "cpu", torch.float32)
    for name, value in {**settings, **RANDOM_WEIGHT_SETTINGS, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    assert list(json.loads(settings["TRANSLATION_MODELS"])) == ["en-de"]
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    for name in SERVICES:
        service = importlib.import_module(f"services.{name}.service").create_service()
        service.runner.load()
        service.runner.warmup()


def module_imports(path: Path) -> tuple[set[str], set[Path]]:
    """Top-level third-party names and local modules that `path` imports when it is imported (module level)."""
    external, local = set(), set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module.split(".")[0] in ("services", "protos", "tools"):
                base = path.parents[node.level - 1] if node.level else REPO
                target = base.joinpath(*(node.module or "").split("."))
                candidates = [target.with_suffix(".py"), target / "__init__.py"]
                candidates += [target / f"{alias.name}.py" for alias in node.names]
                local |= {c for c in candidates if c.is_file()}
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in ("services", "protos", "tools"):
                target = REPO.joinpath(*parts)
                local |= {c for c in (target.with_suffix(".py"), target / "__init__.py") if c.is_file()}
            elif parts[0] not in sys.stdlib_module_names:
                external.add(parts[0])
    return external, local


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


PINNED = {canonical(name) for name in pins()}
# What any PyTorch machine has: torch, its own requirements, numpy and Pillow.
PROVIDED = {"torch", "numpy", "pillow"} | {canonical(Requirement(r).name) for r in metadata.requires("torch") or ()}
GPU_MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def test_pinned_wheels_bring_everything_they_require():
    """Installed with --no-deps: a requirement of a pinned package must be pinned too, or come with torch."""
    lacking = [
        f"{name} needs {requirement}"
        for name in pins()
        for requirement in map(Requirement, metadata.requires(name) or ())
        if (requirement.marker is None or requirement.marker.evaluate(GPU_MACHINE))
        and canonical(requirement.name) not in PINNED | PROVIDED
    ]
    assert not lacking


def test_gpu_wheels_cover_what_the_torch_services_and_the_check_import_and_never_torch():
    assert not PINNED & {"torch", "torchvision", "torchaudio", "tensorflow", "tensorflow-cpu"}
    roots = [REPO / "services" / name / "__main__.py" for name in SERVICES]
    roots += list((REPO / "tools" / "gpu_check").glob("*.py"))
    seen, pending, external = set(), list(roots), set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        names, local = module_imports(path)
        external |= names
        pending += local
    distributions = metadata.packages_distributions()
    lacking = {
        module: distributions.get(module, ["?"])
        for module in external
        if not {canonical(d) for d in distributions.get(module, [])} & (PINNED | PROVIDED)
    }
    assert not lacking, f"imported but neither in tools/gpu_check/requirements.txt nor on a PyTorch machine: {lacking}"


def test_bootstrap_installs_only_when_a_pin_is_missing_or_another_version():
    have = metadata.version("packaging")
    assert missing({"packaging": have}) == []
    assert missing({"packaging": "0.0.1", "no-such-distribution": "1.0"}) == [
        "packaging==0.0.1", "no-such-distribution==1.0"
    ]
    assert pins()["transformers"] == metadata.version("transformers")  # the version the test suite runs
