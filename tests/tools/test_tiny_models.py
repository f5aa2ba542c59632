"""The tiny-model builder writes loadable, working checkpoints of every serving architecture, once."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.tiny_models import LAYOUT, MARKER, main

SR = 16_000


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert main(["--out", str(out)]) == 0
    return out


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_complete_and_pickle_free(models):
    for names in LAYOUT.values():
        for name in names:
            assert (models / name / MARKER).is_file(), name
    suffixes = {p.suffix for p in models.rglob("*") if p.is_file()}
    assert ".safetensors" in suffixes
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5"}


def test_second_run_is_fast_and_rewrites_nothing(models, capsys):
    capsys.readouterr()
    before = _snapshot(models)
    start = time.perf_counter()
    main(["--out", str(models)])
    assert time.perf_counter() - start < 2
    assert _snapshot(models) == before
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == sum(map(len, LAYOUT.values()))
    assert all(line.startswith("kept") for line in lines)


def test_force_rebuilds_byte_identical_weights(models):
    weights = models / "vit/hf-vit/model.safetensors"
    before = weights.read_bytes()
    main(["--out", str(models), "--only", "vit", "--force"])
    assert weights.read_bytes() == before


@pytest.mark.parametrize("pair", ["en-de", "de-en", "en-ru", "ru-en"])
def test_fsmt_beam_search_returns_several_translations(models, pair):
    from transformers import FSMTForConditionalGeneration, FSMTTokenizer

    model_dir = models / f"translation/wmt19-{pair}"
    tokenizer = FSMTTokenizer.from_pretrained(model_dir)
    model = FSMTForConditionalGeneration.from_pretrained(model_dir, use_safetensors=True)
    batch = tokenizer(["Hello world, how are you?", "Привет, мир!"], return_tensors="pt", padding=True)
    assert tokenizer.unk_token_id not in batch.input_ids[0].tolist()
    out = model.generate(**batch, num_beams=4, num_return_sequences=2)
    assert out.shape[0] == 4 and out.shape[1] <= model.generation_config.max_length
    assert all(isinstance(text, str) for text in tokenizer.batch_decode(out, skip_special_tokens=True))


@pytest.fixture(scope="module")
def whisper(models):
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(models / "asr/whisper")
    main = WhisperForConditionalGeneration.from_pretrained(models / "asr/whisper", use_safetensors=True)
    assistant = AutoModelForCausalLM.from_pretrained(models / "asr/whisper-assistant", use_safetensors=True)
    return processor, main, assistant


def test_whisper_assisted_decoding_equals_greedy_and_drafts(whisper):
    processor, main, assistant = whisper
    assert type(assistant).__name__ == "WhisperForCausalLM"
    rng = np.random.default_rng(0)
    calls = []
    hook = main.register_forward_hook(lambda *_: calls.append(1))
    for seconds in (2, 7):
        audio = rng.standard_normal(SR * seconds).astype(np.float32) * 0.1
        feats = processor(audio, sampling_rate=SR, return_tensors="pt").input_features
        kwargs = {"language": "en", "task": "transcribe", "num_beams": 1, "max_new_tokens": 60}
        plain = main.generate(feats, **kwargs)
        calls.clear()
        assisted = main.generate(feats, assistant_model=assistant, **kwargs)
        assert torch.equal(plain, assisted)
        assert len(calls) < plain.shape[1] // 2  # drafts are really accepted, several tokens per main pass
    hook.remove()


def test_whisper_timestamps_and_long_form(whisper):
    processor, main, _ = whisper
    audio = np.random.default_rng(1).standard_normal(SR * 40).astype(np.float32) * 0.1
    short = processor(audio[: SR * 5], sampling_rate=SR, return_tensors="pt").input_features
    no_ts = main.generation_config.no_timestamps_token_id
    plain = main.generate(short, language="de", max_new_tokens=40)
    assert not (plain > no_ts).any()  # timestamps are biased away unless asked for
    stamped = main.generate(short, language="de", return_timestamps=True, max_new_tokens=40)
    assert "<|0." in processor.batch_decode(stamped, decode_with_timestamps=True)[0]

    inputs = processor(
        audio,
        sampling_rate=SR,
        truncation=False,
        padding="longest",
        return_attention_mask=True,
        return_tensors="pt",
    )
    assert inputs.input_features.shape[-1] > 3000
    out = main.generate(**inputs, language="en", task="transcribe", max_new_tokens=20)
    assert isinstance(processor.batch_decode(out, skip_special_tokens=True)[0], str)


def test_speecht5_speaks_and_converts_voices(models):
    from transformers import (
        SpeechT5ForSpeechToSpeech,
        SpeechT5ForTextToSpeech,
        SpeechT5HifiGan,
        SpeechT5Processor,
    )

    voices = {p.stem: np.load(p) for p in (models / "tts/voices").glob("*.npy")}
    assert set(voices) == {"alloy", "echo", "nova", "shimmer"}
    for vector in voices.values():
        assert vector.shape == (512,) and vector.dtype == np.float32
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    speaker = torch.from_numpy(voices["nova"])[None]

    processor = SpeechT5Processor.from_pretrained(models / "tts/speecht5_tts")
    tts = SpeechT5ForTextToSpeech.from_pretrained(models / "tts/speecht5_tts", use_safetensors=True)
    vocoder = SpeechT5HifiGan.from_pretrained(models / "tts/speecht5_hifigan", use_safetensors=True)
    ids = processor(text="Hello world, how are you?", return_tensors="pt").input_ids
    # threshold > 1 never stops early, so maxlenratio fixes the length: len * 2 / reduction 2 steps, 2 frames
    # a step, 256 samples a frame.
    speech = tts.generate_speech(
        ids, speaker, vocoder=vocoder, threshold=2.0, minlenratio=0.0, maxlenratio=2.0
    )
    assert speech.ndim == 1 and speech.shape[0] == ids.shape[1] * 2 * 256
    assert 0 < speech.abs().max() <= 1

    vc = SpeechT5ForSpeechToSpeech.from_pretrained(models / "tts/speecht5_vc", use_safetensors=True)
    audio = np.random.default_rng(2).standard_normal(SR).astype(np.float32) * 0.1
    values = SpeechT5Processor.from_pretrained(models / "tts/speecht5_vc")(
        audio=audio, sampling_rate=SR, return_tensors="pt"
    ).input_values
    converted = vc.generate_speech(values, speaker, vocoder=vocoder, threshold=2.0, maxlenratio=1.0)
    assert converted.ndim == 1 and converted.shape[0] > 0


def test_stable_diffusion_pipelines_make_64px_images(models):
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(
        models / "imagegen/stable-diffusion",
        safety_checker=None,
        requires_safety_checker=False,
        use_safetensors=True,
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a photo of a cat", num_inference_steps=5, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert img2img("a dog", image=image, strength=0.6, num_inference_steps=5).images[0].size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    assert inpaint("a dog", image=image, mask_image=mask, num_inference_steps=5).images[0].size == (64, 64)


def test_vit_classifies_into_readable_labels(models):
    from PIL import Image
    from transformers import AutoImageProcessor, ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(models / "vit/hf-vit", use_safetensors=True)
    processor = AutoImageProcessor.from_pretrained(models / "vit/hf-vit")
    pixels = processor(Image.new("RGB", (300, 200), (200, 30, 30)), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)
    logits = model(pixel_values=pixels).logits
    assert logits.shape == (1, len(model.config.id2label)) and len(model.config.id2label) == 10
    assert "tabby cat" in model.config.id2label.values()
