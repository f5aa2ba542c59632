"""Random-weight checkpoints at the sizes the services run in production (tools/tiny_models/sizes.py: REAL).

Nothing is downloaded: the tokenizers are the tiny models' hand-written ones (tools/tiny_models), padded with
filler pieces to the real vocabulary sizes so that embedding and output-projection shapes are real and every
generated id decodes to text. `build_models(out_dir, REAL, device, dtype)` writes safetensors checkpoints in
the Hub layout and returns the service settings that point at them; the services load them through their
normal `from_pretrained` path.
"""

import contextlib
import itertools
import json
import shutil
import string
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import AddedToken
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    FSMTConfig,
    FSMTForConditionalGeneration,
    FSMTTokenizer,
    GenerationConfig,
    SpeechT5Config,
    SpeechT5ForSpeechToSpeech,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    SpeechT5Processor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from tools.tiny_models import asr as tiny_asr
from tools.tiny_models import imagegen as tiny_imagegen
from tools.tiny_models import translation as tiny_translation
from tools.tiny_models import tts as tiny_tts
from tools.tiny_models.common import (
    CHARACTERS,
    byte_symbols,
    bytes_to_unicode,
    chain_merges,
    end_of_word_symbols,
    end_of_word_vocab,
    seed_everything,
    words,
    write_json,
    write_merges,
)
from tools.tiny_models.sizes import Sizes

# Scale of the residual outputs of the main Whisper decoder's middle layers and of the filler pieces' output
# rows. A trained distil-whisper student (initialised from the teacher's first and last decoder layers) agrees
# with its teacher on most tokens and a trained head rarely picks rare pieces; random weights do neither, and
# assisted decoding would then draft nothing the main model accepts. Compute is unchanged: only values shrink.
ASSISTANT_AGREEMENT = 0.003
FILLER_LOGIT_SCALE = 0.25


def filler_pieces(count: int, taken: set[str], prefix: str = "", suffix: str = "") -> list[str]:
    """`count` distinct pieces (prefix + lowercase letters + suffix) not in `taken`: vocabulary rows that no
    merge produces, which pad a hand-written vocabulary to a real checkpoint's size and decode as text."""

    def candidates() -> Iterator[str]:
        for length in itertools.count(3):
            for letters in itertools.product(string.ascii_lowercase, repeat=length):
                yield prefix + "".join(letters) + suffix

    return list(itertools.islice((p for p in candidates() if p not in taken), max(count, 0)))


def _save(model: torch.nn.Module, model_dir: Path, dtype: torch.dtype) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(model_dir, safe_serialization=True)


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- Whisper ---------------------------------------------------------------------------------------------------


def whisper_tokenizer(model_dir: Path, vocab_size: int) -> tuple[WhisperTokenizer, range]:
    """The tiny Whisper tokenizer (byte-level BPE of common words, Whisper's special and timestamp tokens) with
    filler pieces before <|endoftext|>, so that the ids line up as in the real multilingual checkpoints.
    Returns the tokenizer and the filler ids."""
    merges = chain_merges([byte_symbols(f" {w}") for w in words("en", "de", "ru", capitalized=True)])
    pieces = list(dict.fromkeys([*bytes_to_unicode().values(), *(a + b for a, b in merges)]))
    word_pieces = len(pieces)
    added = 1 + len(tiny_asr.SPECIALS) + len(tiny_asr.TIMESTAMPS)  # <|endoftext|>, specials, timestamps
    pieces += filler_pieces(vocab_size - added - len(pieces), set(pieces), prefix="Ġ")
    vocab = {piece: i for i, piece in enumerate(pieces)}
    vocab["<|endoftext|>"] = len(vocab)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "vocab.json", vocab)
    write_merges(model_dir / "merges.txt", merges, header="#version: 0.2")
    tokenizer = WhisperTokenizer.from_pretrained(model_dir, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"extra_special_tokens": list(tiny_asr.SPECIALS)})
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in tiny_asr.TIMESTAMPS])
    return tokenizer, range(word_pieces, len(pieces))


def build_whisper(main_dir: Path, assistant_dir: Path, sizes: Sizes, dtype: torch.dtype) -> None:
    """Whisper plus a distil-whisper-style decoder-only assistant (WhisperForCausalLM) sharing its encoder."""
    tokenizer, filler_ids = whisper_tokenizer(main_dir, sizes.whisper_vocab)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*tiny_asr.SPECIALS, "<|endoftext|>", "Ġ")}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    timestamp_ids = range(no_ts + 1, no_ts + 1 + len(tiny_asr.TIMESTAMPS))
    suppress = [ids[t] for t in tiny_asr.SPECIALS]
    begin_suppress = [ids["Ġ"], eot]
    seed_everything(100)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        **sizes.whisper,
    )
    main = WhisperForConditionalGeneration(config).eval()
    decoder = main.model.decoder
    with torch.no_grad():
        for layer in decoder.layers[1:-1]:
            for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                proj.weight.mul_(ASSISTANT_AGREEMENT)
        # The output projection is tied to these rows.
        decoder.embed_tokens.weight[filler_ids.start : filler_ids.stop].mul_(FILLER_LOGIT_SCALE)
    main.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        alignment_heads=[[config.decoder_layers - 1, 0], [config.decoder_layers - 1, 1]],
        # As in the tiny model: random weights love timestamp tokens; bias them down rather than suppress them.
        sequence_bias=[[[t], tiny_asr.TIMESTAMP_BIAS] for t in timestamp_ids],
    )
    seed_everything(101)
    assistant = WhisperForCausalLM(
        WhisperConfig(**{**config.to_dict(), "decoder_layers": sizes.assistant_decoder_layers})
    ).eval()
    # distil-whisper initialises its student decoder from the teacher's first and last layers.
    kept = [decoder.layers[0], decoder.layers[-1]][: sizes.assistant_decoder_layers]
    student = assistant.model.decoder
    with torch.no_grad():
        student.embed_tokens.load_state_dict(decoder.embed_tokens.state_dict())
        student.embed_positions.load_state_dict(decoder.embed_positions.state_dict())
        for target, source in zip(student.layers, kept, strict=True):
            target.load_state_dict(source.state_dict())
        student.layer_norm.load_state_dict(decoder.layer_norm.state_dict())
    assistant.generation_config = GenerationConfig(
        **main.generation_config.to_diff_dict(),
        # Random weights are rarely confident: a threshold of 0 and a constant 8-token draft make it draft.
        assistant_confidence_threshold=0.0,
        num_assistant_tokens=8,
        num_assistant_tokens_schedule="constant",
    )
    _save(main, main_dir, dtype)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer=tokenizer
    ).save_pretrained(main_dir)
    _save(assistant, assistant_dir, dtype)


# -- FSMT ------------------------------------------------------------------------------------------------------


def build_fsmt(model_dir: Path, src: str, tgt: str, sizes: Sizes, dtype: torch.dtype, seed: int) -> None:
    """The tiny FSMT tokenizer files (fairseq-style BPE of common words) padded to the wmt19 vocabulary size."""
    model_dir.mkdir(parents=True, exist_ok=True)
    merges = chain_merges([end_of_word_symbols(w) for w in words(src, tgt, capitalized=True)])
    pieces = [*tiny_translation.SPECIALS, *end_of_word_vocab(CHARACTERS, merges)]
    pieces += filler_pieces(sizes.fsmt_vocab - len(pieces), set(pieces), suffix="</w>")
    vocab = {piece: i for i, piece in enumerate(pieces)}
    files = {"src_vocab_file": model_dir / "vocab-src.json", "tgt_vocab_file": model_dir / "vocab-tgt.json"}
    for path in files.values():
        write_json(path, vocab)
    files["merges_file"] = model_dir / "merges.txt"
    write_merges(files["merges_file"], merges)
    tokenizer = FSMTTokenizer(langs=[src, tgt], **files)
    seed_everything(seed)
    config = FSMTConfig(
        langs=[src, tgt],
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        **sizes.fsmt,
    )
    model = FSMTForConditionalGeneration(config).eval()
    # wmt19's generation config.
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        num_beams=5,
        max_length=200,
        early_stopping=True,
    )
    _save(model, model_dir, dtype)
    tokenizer.save_pretrained(model_dir)


# -- SpeechT5 --------------------------------------------------------------------------------------------------


def build_speecht5(dirs: dict[str, Path], sizes: Sizes, dtype: torch.dtype, scratch: Path) -> None:
    """Text-to-speech, voice conversion and HiFi-GAN; the tiny models' character tokenizer and voices."""
    tiny_tts_dir, _, _, tiny_voices = tiny_tts.build(scratch / "tts")
    processor = SpeechT5Processor.from_pretrained(tiny_tts_dir)
    config = SpeechT5Config(vocab_size=len(processor.tokenizer), **sizes.speecht5)
    for seed, (name, cls) in enumerate((("tts", SpeechT5ForTextToSpeech), ("vc", SpeechT5ForSpeechToSpeech)), 200):
        seed_everything(seed)
        _save(cls(config).eval(), dirs[name], dtype)
        processor.save_pretrained(dirs[name])
    seed_everything(202)
    _save(SpeechT5HifiGan(SpeechT5HifiGanConfig(**sizes.hifigan)).eval(), dirs["vocoder"], dtype)
    shutil.copytree(tiny_voices, dirs["voices"], dirs_exist_ok=True)


# -- Stable Diffusion ------------------------------------------------------------------------------------------


def build_stable_diffusion(model_dir: Path, sizes: Sizes, dtype: torch.dtype, scratch: Path) -> None:
    """UNet, VAE and CLIP text encoder; the tiny model's CLIP tokenizer and SD 1.5's PNDM scheduler."""
    tiny_dir = tiny_imagegen.build(scratch / "imagegen")[0]
    tokenizer = CLIPTokenizer.from_pretrained(tiny_dir / "tokenizer")
    scheduler = PNDMScheduler.from_pretrained(tiny_dir / "scheduler")
    seed_everything(300)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sizes.clip_text,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**sizes.vae),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**sizes.unet),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype).save_pretrained(model_dir, safe_serialization=True)


# -- all -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reported(what: str, sizes: Sizes) -> Iterator[None]:
    started = time.perf_counter()
    yield
    _free_accelerator_memory()
    print(f"built {what} ({sizes.name} sizes) in {time.perf_counter() - started:.1f} s", flush=True)


def build_models(out_dir: Path, sizes: Sizes, device: str = "cpu", dtype: torch.dtype = torch.float16) -> dict:
    """Build every torch service's models under `out_dir` (weights initialised on `device`, saved in `dtype`);
    returns the service settings (environment variables) that point at them."""
    pairs = {f"{src}-{tgt}": out_dir / "translation" / f"wmt19-{src}-{tgt}" for src, tgt in sizes.translation_pairs}
    asr = {"main": out_dir / "asr" / "whisper", "assistant": out_dir / "asr" / "whisper-assistant"}
    tts = {name: out_dir / "tts" / name for name in ("tts", "vc", "vocoder", "voices")}
    imagegen = out_dir / "imagegen" / "stable-diffusion"
    with tempfile.TemporaryDirectory(prefix="gpu-check-tiny-") as scratch, torch.device(device):
        for seed, ((src, tgt), model_dir) in enumerate(zip(sizes.translation_pairs, pairs.values(), strict=True)):
            with _reported(f"translation {src}-{tgt}", sizes):
                build_fsmt(model_dir, src, tgt, sizes, dtype, seed)
        with _reported("asr", sizes):
            build_whisper(asr["main"], asr["assistant"], sizes, dtype)
        with _reported("tts", sizes):
            build_speecht5(tts, sizes, dtype, Path(scratch))
        with _reported("imagegen", sizes):
            build_stable_diffusion(imagegen, sizes, dtype, Path(scratch))
    return {
        "TRANSLATION_MODELS": json.dumps({pair: str(path) for pair, path in pairs.items()}),
        "ASR_MODEL": str(asr["main"]),
        "ASR_ASSISTANT_MODEL": str(asr["assistant"]),
        "TTS_MODEL": str(tts["tts"]),
        "TTS_VC_MODEL": str(tts["vc"]),
        "TTS_VOCODER": str(tts["vocoder"]),
        "TTS_VOICES_DIR": str(tts["voices"]),
        "IMAGEGEN_MODEL": str(imagegen),
    }
