"""Whisper runner: a main model, a speculative-decoding assistant, and load-adaptive batch decoding. No web code.

Assisted (speculative) decoding lets a small assistant draft tokens that the main model checks in one forward
pass; greedy output is exactly the main model's own. It decodes one request at a time, so whether it pays depends
on the hardware and the load: for `decoding=auto`, `choose_path` (and `step_decodable`, for the continuous decode
loop) asks `path_choice.MeasuredPathChoice`, which compares the measured seconds per token of both paths at the
current load (or, with `path_choice=threshold`, follows `adaptive_threshold`).

Each decoded 30 s window is also described the way OpenAI's Whisper describes it (`Window`, generation.py): its
seek offset, the temperature that produced it, the average log-probability of its tokens, the compression ratio
of its text and the probability of `<|nospeech|>` at the start of the transcript. Optional temperature fallback
re-decodes a window that fails OpenAI's thresholds, and word timings come from a cross-attention alignment pass
per window (`alignment.py`), whichever path decoded it. Continuous batching (`continuous.py`) builds on this
runner; chunked decoding (`chunking.py`) is below it.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    SuppressTokensAtBeginLogitsProcessor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE
from transformers.utils import cached_file

from services.kit import tracing
from services.kit.batcher import Work
from services.kit.errors import Cancelled, InvalidArgument
from services.kit.precision import bfloat16_speedup, resolve_compute_dtype, run_in_dtype
from services.kit.quantize import quantize_linears, resolve_quantization
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, resolve_source

from . import metrics
from .alignment import Aligner
from .chunking import transcribe_chunked
from .domain import (
    SAMPLE_RATE,
    ASRJob,
    DecodeOptions,
    DecodingPath,
    Partial,
    Segment,
    TokenLogprob,
    Transcript,
    Word,
)
from .drafting import DraftConfig, Drafter
from .generation import (
    DecodeCapture,
    FallbackRule,
    GenerationSetup,
    PartialTexts,
    Window,
    WindowCapturingWhisper,
    bytes_to_unicode,
)
from .path_choice import MeasuredPathChoice
from .settings import QUANTIZE_AUTO_INT8, ASRSettings

log = logging.getLogger(__name__)


@dataclass
class Features:
    """A batch's log-mel features, with a mask of where each clip ends for long-form audio."""

    input_features: torch.Tensor
    attention_mask: torch.Tensor | None


@dataclass
class ASRRunner:
    settings: ASRSettings
    runtime: TorchRuntime | None = None
    processor: WhisperProcessor | None = None
    model: WindowCapturingWhisper | None = None
    assistant: torch.nn.Module | None = None
    main_passes: int = 0  # forward passes of the main model's decoder, start-up work excluded
    quantization: str = "none"  # "int8" once load() quantized the main model (CPU only)
    encoder_dtype: str = "float32"  # what the main encoder computes in (bfloat16 where it measured faster)
    head_dtype: str = "float32"  # what the main decoder's vocabulary projection computes in
    # The checkpoint's length limit (Whisper: tokens per 30 s window), taken out of its generation config at load.
    model_max_length: int | None = None
    aligner: Aligner | None = None
    no_speech_token: int | None = (
        None  # <|nospeech|> (<|nocaptions|> in the original multilingual vocabularies)
    )
    _byte_values: dict[str, int] = field(default_factory=dict)  # byte-level BPE character -> byte
    # What `decoding=auto` takes with ASR_PATH_CHOICE=measured: fed by every decode, seeded at warm-up.
    path_choice: MeasuredPathChoice = field(init=False)

    def __post_init__(self):
        self.path_choice = MeasuredPathChoice(explore_every=self.settings.path_explore_every)

    # -- loading ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        source = resolve_source(s.model)
        self.processor = WhisperProcessor.from_pretrained(source)
        self.model = self.runtime.load(WindowCapturingWhisper, source)
        self.quantization = resolve_quantization(s.quantize, self.runtime.device, QUANTIZE_AUTO_INT8)
        # Each call passes its own length limit (see `_generate_kwargs`); a max_length left in the model's config
        # would be a second limit that generate() warns about on every window.
        config = self.model.generation_config
        self.model_max_length = config.max_length or self.model.config.max_target_positions
        config.max_length = None
        self.model.model.decoder.register_forward_hook(self._count_main_pass)
        self.model.model.decoder.register_forward_hook(self.model.note_prefill, with_kwargs=True)
        self.model.model.encoder.register_forward_hook(self.model.note_encoder_output)
        tokenizer = self.processor.tokenizer
        vocabulary = tokenizer.get_vocab()
        self.no_speech_token = next(
            (vocabulary[t] for t in ("<|nospeech|>", "<|nocaptions|>") if t in vocabulary), None
        )
        self.aligner = Aligner(self.model, tokenizer)
        self._byte_values = {char: byte for byte, char in bytes_to_unicode().items()}
        if s.assistant_model:
            self.assistant = self._load_assistant(resolve_source(s.assistant_model))
            overrides = dict(vocab_size=s.draft_vocab_size, quantize=s.draft_quantize)
            if s.draft_tokens is not None:
                overrides["num_tokens"] = s.draft_tokens
            if s.draft_confidence is not None:
                overrides["confidence_threshold"] = s.draft_confidence or None
            draft = DraftConfig.from_assistant(self.assistant, **overrides)
            self.model.drafter = Drafter.build(self.model, self.assistant, self.processor.tokenizer, draft)
            # After the drafter is built: its int8 copy quantizes only stock nn.Linear layers.
            self.runtime.tune_for_decoding(self.assistant)
            self.runtime.tune_for_decoding(self.model.drafter.head)  # its own fp32 head, when not int8
        # After the drafter matched its cross-attention layers against the main model's float weights (it reads
        # the main layers themselves, so it follows them to int8 or bfloat16) and before FewRowLinear, which
        # stays float.
        if self.quantization == "int8":
            quantize_linears(self.model)
        else:
            self._lower_audio_precision()
            self._lower_head_precision()
        self.runtime.tune_for_decoding(self.model)
        log.info("loaded %s with assistant %s", s.model, s.assistant_model or "none")

    def _lower_audio_precision(self) -> None:
        """The audio side in bfloat16 where `ASR_ENCODER_DTYPE` asks for it or (`auto`) one of the encoder's layers
        measured faster so (CPUs with AMX): the encoder and the cross-attention key and value projections (the
        main decoder's and the assistant's) that read its output, which run once per 30 s window over its 1,500
        positions, the bulk of a short clip's compute. The encoder's output stays in bfloat16 (only those
        projections read it); the keys and values they give the decoder, and the decoder's own steps, which pick
        the tokens, are in the model's dtype."""
        encoder = self.model.model.encoder

        def speedup() -> float:
            hidden = torch.randn(1, encoder.config.max_source_positions, encoder.config.d_model)
            return bfloat16_speedup(encoder.layers[0], (hidden, None))

        dtype = resolve_compute_dtype(
            self.settings.encoder_dtype, self.runtime.device, self.runtime.dtype, speedup, "ASR encoder"
        )
        if dtype != self.runtime.dtype:
            run_in_dtype(encoder, dtype)
            decoders = [self.model.model.decoder]
            if self.assistant is not None and not self.assistant.config.is_encoder_decoder:
                decoders.append(self.assistant.model.decoder)
            for decoder in decoders:
                for layer in decoder.layers:
                    run_in_dtype(layer.encoder_attn.k_proj, dtype, self.runtime.dtype)
                    run_in_dtype(layer.encoder_attn.v_proj, dtype, self.runtime.dtype)
        self.encoder_dtype = str(dtype).removeprefix("torch.")

    def _lower_head_precision(self) -> None:
        """The main decoder's vocabulary projection in bfloat16 where `ASR_HEAD_DTYPE` asks for it or (`auto`) it
        measured faster so: read whole at every step (51,865 rows), it costs half the time in half the bytes.
        The logits it gives are float32; the processors and the choice of each token work on them as before.
        Every path shares it, so assisted decoding still gives plain decoding's tokens."""
        head = self.model.proj_out

        def speedup() -> float:
            return bfloat16_speedup(head, (torch.randn(8, head.in_features),))

        dtype = resolve_compute_dtype(
            self.settings.head_dtype, self.runtime.device, self.runtime.dtype, speedup, "ASR output head"
        )
        if dtype != self.runtime.dtype:
            run_in_dtype(head, dtype, self.runtime.dtype)  # untied from the input embeddings, which stay
        self.head_dtype = str(dtype).removeprefix("torch.")

    def _load_assistant(self, source: str) -> torch.nn.Module:
        config = AutoConfig.from_pretrained(source)
        main = self.model.config
        if config.vocab_size != main.vocab_size:
            raise ValueError(
                f"assistant {self.settings.assistant_model} has a vocabulary of {config.vocab_size} tokens but the "
                f"main model {self.settings.model} has {main.vocab_size}: speculative decoding needs the same "
                "tokenizer (set ASR_ASSISTANT_MODEL to a matching model, or to '' to run without one)"
            )
        # Distil-style decoders may ship without a tokenizer; when one is there, its ids must match exactly.
        has_tokenizer = cached_file(
            source, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False
        )
        if (
            has_tokenizer
            and AutoTokenizer.from_pretrained(source).get_vocab() != self.processor.tokenizer.get_vocab()
        ):
            raise ValueError(
                f"assistant {self.settings.assistant_model} uses a different tokenizer from the main model "
                f"{self.settings.model}: speculative decoding needs identical token ids"
            )
        if config.is_encoder_decoder:  # a smaller full Whisper with its own encoder
            return self.runtime.load(WhisperForConditionalGeneration, source)
        if config.d_model != main.d_model:
            raise ValueError(
                f"assistant {self.settings.assistant_model} is a decoder of width {config.d_model} but reads the "
                f"main encoder's outputs of width {main.d_model}"
            )
        return self.runtime.load(AutoModelForCausalLM, source)

    @property
    def window_tokens(self) -> int:
        """The most tokens decoded per 30 s window: the configured cap, else the model's own limit."""
        return self.settings.max_new_tokens or self.model_max_length

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens a request may give: Whisper conditions on at most half its decoder positions (OpenAI's
        decoder keeps the last 223 tokens), and a window still needs room for its start tokens and its own."""
        positions = self.model.config.max_target_positions
        return min(positions // 2 - 1, positions - 4 - (self.settings.max_new_tokens or 0))

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.processor.get_prompt_ids(prompt))

    def cost(self, job: ASRJob) -> float:
        """The job's work in audio-second-tokens: seconds of audio x the tokens each 30 s window may take."""
        return job.duration * self.window_tokens

    def _count_main_pass(self, module, args, output) -> None:
        self.main_passes += 1

    def draft_counts(self) -> tuple[int, int]:
        """(drafted, accepted) tokens since load; the drafter is the one place that counts them."""
        if self.model.drafter is None:
            return 0, 0
        drafted, accepted, _ = self.model.drafter.counters()
        return drafted, accepted

    def warmup(self) -> None:
        clip = np.zeros(SAMPLE_RATE, dtype=np.float32)
        paths = ("assisted", "plain") if self.assistant is not None else ("plain",)
        for path in paths:
            self.transcribe([ASRJob(clip, language="en")], path, max_new_tokens=4, record=False)
        if self.assistant is not None:
            # Warm now, both paths are timed on the same clip: the first `auto` decisions go by these.
            for path in paths:
                started = time.perf_counter()
                (transcript,) = self.transcribe(
                    [ASRJob(clip, language="en")], path, max_new_tokens=4, record=False
                )
                self.path_choice.seed(path, time.perf_counter() - started, len(transcript.tokens) + 1)
        # Start-up work stays out of the served totals.
        self.main_passes = 0

    # -- requests ---------------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """The Hub id, or a local directory's name."""
        model = self.settings.model
        return Path(model).name if Path(model).is_dir() else model

    @property
    def has_assistant(self) -> bool:
        return self.assistant is not None

    @property
    def multilingual(self) -> bool:
        """English-only checkpoints (whisper-*.en) take neither a language nor a task token."""
        config = self.model.generation_config
        return bool(getattr(config, "is_multilingual", False) and getattr(config, "lang_to_id", None))

    def language_code(self, language: str | None) -> str | None:
        """'en', 'English' or '<|en|>' -> 'en'; refuses languages the model does not know."""
        if language is None or not language.strip():
            return None
        name = language.strip().lower().removeprefix("<|").removesuffix("|>")
        code = TO_LANGUAGE_CODE.get(name, name)
        if not self.multilingual:
            if code == "en":
                return None
            raise InvalidArgument(f"language: model {self.model_id} is English-only", field="language")
        if f"<|{code}|>" not in self.model.generation_config.lang_to_id:
            raise InvalidArgument(
                f"language: unknown language {language!r}; use an ISO 639-1 code such as 'en' or 'de'",
                field="language",
            )
        return code

    @staticmethod
    def language_name(code: str) -> str:
        return LANGUAGES.get(code, code)

    def choose_path(self, jobs: list[ASRJob], queued: int = 0) -> DecodingPath:
        """The path for these jobs (one batch key) given the load: the jobs plus the `queued` requests behind
        them (the kit's `Work.queue_depth`)."""
        forced = jobs[0].decoding  # the batch key keeps forced paths apart
        if forced != "auto":
            return forced
        if self.assistant is None:
            return "plain"
        waiting = len(jobs) + queued
        if self.settings.path_choice == "measured":
            return self.path_choice.choose(waiting)
        # Alone, the assistant is faster for the request and frees the model sooner, whatever waits behind it.
        if len(jobs) == 1:
            return "assisted"
        return "assisted" if waiting <= self.settings.adaptive_threshold else "plain"

    # -- continuous batching (continuous.py) -------------------------------------------------------------------

    def loop_decodable(self, job: ASRJob) -> bool:
        """Whether the job, on the plain path, decodes exactly in a continuous decode loop: one 30 s window, greedy
        with no temperature fallback (a re-decode would sample)."""
        if not self.settings.continuous_batching or job.long_form or job.chunking is not None:
            return False
        return self.temperatures(job.options) == (0.0,) and job.decoding in ("plain", "auto")

    def step_decodable(self, job: ASRJob, waiting: int = 1) -> bool:
        """Whether the job is decoded in a continuous decode loop: it can be (`loop_decodable`), and an `auto`
        request, when an assistant is loaded, is given the plain path for `waiting` requests (this one included)
        by `choose_path`."""
        if not self.loop_decodable(job):
            return False
        if job.decoding == "auto" and self.assistant is not None:
            if self.settings.path_choice == "measured":
                return self.path_choice.choose(waiting) == "plain"
            return waiting > self.settings.adaptive_threshold
        return True

    def generation_setup(
        self, job: ASRJob, language: str, features: torch.Tensor, encoder_outputs: BaseModelOutput
    ) -> GenerationSetup:
        """What Whisper's generate() makes of a short clip given the arguments `transcribe([job], "plain")` passes
        it, read just before its first decoder pass (given the encoder's outputs, it computes nothing)."""
        kwargs = self._generate_kwargs([job], "plain", None)
        if self.multilingual:
            kwargs.update(task=job.options.task, language=language)
        self.model.reading_setup, self.model.prepared = True, None
        try:
            self.model.generate(features, encoder_outputs=encoder_outputs, **kwargs)
        finally:
            self.model.reading_setup = False
        if self.model.prepared is None:
            raise RuntimeError("generate() returned without reaching its greedy loop")
        prompt, processors, stopping = self.model.prepared
        self.model.prepared = None
        config = self.model.generation_config
        timestamp_begin = getattr(config, "no_timestamps_token_id", self.model.config.vocab_size) + 1
        return GenerationSetup(prompt, processors, stopping, timestamp_begin)

    def _transcribe_chunked(self, work: Work) -> Transcript | Exception:
        work.span.set_attribute("asr.path", "chunked")
        try:
            return transcribe_chunked(
                self, work.payload, work.payload.chunking, stop=StopWhenCancelled([work])
            )
        except Cancelled as exc:
            return exc
        except Exception as exc:  # one bad request must not fail its neighbours
            log.exception("chunked transcription failed")
            return exc

    def predict_batch(self, works: list[Work]) -> list[Transcript | Exception]:
        results: dict[int, Transcript | Exception] = {
            id(work): Cancelled("request was cancelled before decoding") for work in works
        }
        pending = [work for work in works if work.payload.chunking is None]
        for work in works:
            if work.payload.chunking is not None:
                results[id(work)] = self._transcribe_chunked(work)
        # An `auto` request the decode loop could take is here because opening the loop chose the assistant for
        # it: that decision stands for the first request (one decision, one exploration count).
        chosen = (
            bool(pending)
            and self.settings.path_choice == "measured"
            and self.assistant is not None
            and pending[0].payload.decoding == "auto"
            and self.loop_decodable(pending[0].payload)
        )
        while pending := [work for work in pending if not work.cancelled]:
            # Re-decided before each assisted decode: if requests piled up meanwhile, the rest of this batch is
            # decoded together instead.
            queued = pending[0].queue_depth
            path = "assisted" if chosen else self.choose_path([work.payload for work in pending], queued)
            chosen = False
            if path == "plain":
                for work in pending:
                    work.span.set_attribute("asr.path", "plain")
                try:
                    transcripts = self.transcribe(
                        [work.payload for work in pending],
                        "plain",
                        stop=StopWhenCancelled(pending),
                        on_partial=lambda row, partial, works=tuple(pending): works[row].emit(partial),
                    )
                except Cancelled:  # every request of the batch went away mid-decode
                    break
                results.update(
                    (id(work), transcript) for work, transcript in zip(pending, transcripts, strict=True)
                )
                break
            decided_under = len(pending) + queued
            work = pending.pop(0)
            drafted, accepted = self.draft_counts()
            try:  # assisted generate decodes one sequence at a time
                with tracing.activate(work.span):  # its draft rounds become events of this request's span
                    stop = StopWhenCancelled([work])
                    results[id(work)] = self.transcribe(
                        [work.payload],
                        "assisted",
                        stop=stop,
                        on_partial=lambda _, partial, work=work: work.emit(partial),
                        # Requests that arrived meanwhile shared the CPU with it (their uploads were parsed).
                        load=lambda work=work, rest=len(pending), decided=decided_under: max(
                            decided, 1 + rest + work.queue_depth
                        ),
                    )[0]
                drafted_now, accepted_now = self.draft_counts()
                work.span.set_attributes(
                    {
                        "asr.path": "assisted",
                        "asr.draft.tokens": drafted_now - drafted,
                        "asr.draft.accepted": accepted_now - accepted,
                    }
                )
            except Cancelled:
                continue
            except Exception as exc:  # one bad request must not fail its neighbours
                log.exception("assisted transcription failed")
                results[id(work)] = exc
        return [results[id(work)] for work in works]

    # -- decoding ---------------------------------------------------------------------------------------------

    def features(self, jobs: list[ASRJob]) -> Features:
        audio = [job.audio for job in jobs]
        extractor = self.processor.feature_extractor
        if jobs[0].long_form:
            # Sequential long-form decoding needs the whole audio and a mask of where each clip ends. Each clip
            # is featurised alone: padding the waveforms together would change the STFT frames at a clip's end,
            # and a batched transcript must be the one the clip gets alone. Whisper never reads past the mask.
            items = [
                extractor(
                    clip,
                    sampling_rate=SAMPLE_RATE,
                    return_tensors="pt",
                    truncation=False,
                    padding="longest",
                    return_attention_mask=True,
                )
                for clip in audio
            ]
            frames = max(item.input_features.shape[-1] for item in items)
            features = torch.cat(
                [F.pad(item.input_features, (0, frames - item.input_features.shape[-1])) for item in items]
            )
            mask = torch.cat(
                [F.pad(item.attention_mask, (0, frames - item.attention_mask.shape[-1])) for item in items]
            )
            return Features(
                features.to(self.runtime.device, self.runtime.dtype), mask.to(self.runtime.device)
            )
        # Short clips are each padded to Whisper's 30 s window, alone or in a batch.
        features = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return Features(features.to(self.runtime.device, self.runtime.dtype), None)

    def detect_languages(
        self, jobs: list[ASRJob], features: torch.Tensor, encoder_outputs: BaseModelOutput | None = None
    ) -> list[str]:
        """Given languages as they are; the rest detected from the first 30 s, as Whisper's generate would (from
        `encoder_outputs` when the features were encoded already: the same encoder pass)."""
        if not self.multilingual:
            return ["en"] * len(jobs)
        missing = [i for i, job in enumerate(jobs) if job.language is None]
        languages = [job.language for job in jobs]
        if missing:
            if encoder_outputs is not None:
                encoded = BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state[missing])
                detected = self.model.detect_language(encoder_outputs=encoded)
            else:
                detected = self.model.detect_language(input_features=features[missing])
            for i, lang_id in zip(missing, detected.tolist(), strict=True):
                languages[i] = self.language_codes[lang_id]
        return languages

    @property
    def language_codes(self) -> dict[int, str]:
        """Language token id -> language code (`<|de|>` -> "de")."""
        return {i: token[2:-2] for token, i in self.model.generation_config.lang_to_id.items()}

    def language_of(self, logits: torch.Tensor) -> str:
        """The language Whisper's `detect_language` takes from a row of logits after `<|startoftranscript|>`:
        the likeliest language token."""
        codes = self.language_codes
        ids = torch.tensor(list(codes), device=logits.device)
        return codes[int(ids[logits.reshape(-1)[ids].argmax()])]

    def encode_for_detection(self, jobs: list[ASRJob], features: Features) -> BaseModelOutput | None:
        """The encoder's outputs for short clips whose language is to be detected, computed once for detection and
        decoding (generate() would encode the audio again). None where generate() must encode itself: long-form
        audio (one pass per window), nothing to detect, or word timings (the word alignment reads the encoder pass
        of the decode that produced the words)."""
        if not self.multilingual or jobs[0].long_form or all(job.language is not None for job in jobs):
            return None
        if any(job.words for job in jobs):
            return None
        return self.model.model.encoder(features.input_features)

    def temperatures(self, options: DecodeOptions) -> tuple[float, ...]:
        """The request's temperature, then the configured fallback temperatures above it."""
        return (
            options.temperature,
            *(t for t in self.settings.fallback_temperatures if t > options.temperature),
        )

    def _generate_kwargs(self, jobs: list[ASRJob], path: DecodingPath, max_new_tokens: int | None) -> dict:
        options = jobs[0].options
        kwargs = dict(return_timestamps=options.timestamps or jobs[0].long_form, num_beams=1)
        if options.timestamps:
            kwargs["return_segments"] = True
        temperatures = self.temperatures(options)
        kwargs["temperature"] = temperatures if len(temperatures) > 1 else options.temperature
        if options.prompt:
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(options.prompt, return_tensors="pt").to(
                self.runtime.device
            )
        max_new_tokens = max_new_tokens or self.settings.max_new_tokens
        if max_new_tokens:
            kwargs["max_new_tokens"] = max_new_tokens
        else:
            kwargs["max_length"] = self.model_max_length
        if path == "assisted":
            kwargs["assistant_model"] = self.assistant
            # Whisper's generate drops the begin-suppression when an assistant is present (the assistant must be
            # free to draft end-of-text). Put it back as an explicit processor so that the main model's choice is
            # constrained exactly as in plain decoding; Whisper moves its begin index to each window's start.
            begin_suppress = self.model.generation_config.begin_suppress_tokens
            if begin_suppress:
                kwargs["logits_processor"] = LogitsProcessorList(
                    [
                        SuppressTokensAtBeginLogitsProcessor(
                            begin_suppress, begin_index=0, device=self.runtime.device
                        )
                    ]
                )
        return kwargs

    def window_capture(self, jobs: list[ASRJob], languages: list[str]) -> DecodeCapture:
        s, tokenizer = self.settings, self.processor.tokenizer
        config = self.model.generation_config
        fallback = None
        if s.fallback_temperatures:
            fallback = FallbackRule(s.compression_ratio_threshold, s.logprob_threshold, s.no_speech_threshold)
        capture = DecodeCapture(
            rows=len(jobs),
            text_of=lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            sot=config.decoder_start_token_id,
            eot=tokenizer.eos_token_id,
            no_timestamps=config.no_timestamps_token_id,
            no_speech_token=self.no_speech_token,
            fallback=fallback,
            keep_scores=fallback is not None or any(job.window_stats or job.logprobs for job in jobs),
            samples=max(self.temperatures(jobs[0].options)) > 0,
            languages=languages,
            aligner=self.aligner,
            word_rows=frozenset(i for i, job in enumerate(jobs) if job.words),
        )
        return capture

    @torch.inference_mode()
    def transcribe(
        self,
        jobs: list[ASRJob],
        path: DecodingPath,
        max_new_tokens: int | None = None,
        record: bool = True,
        stop: StopWhenCancelled | None = None,
        on_partial: Callable[[int, Partial], None] | None = None,
        load: Callable[[], int] | None = None,
    ) -> list[Transcript]:
        """Decode jobs sharing a batch key; assisted decoding takes exactly one job.

        `stop` ends decoding within a step once every request is cancelled, and raises `Cancelled` before the
        next 30 s window of long-form audio. `on_partial(job index, Partial)` is called for streaming jobs as
        each of their windows is decoded. `load()`, read when decoding ends, is the load `auto`'s estimates file
        the decode under (default: the number of jobs).
        """
        if path == "assisted" and (len(jobs) != 1 or self.assistant is None):
            raise ValueError("assisted decoding needs an assistant model and exactly one job")
        started = time.perf_counter()
        passes_before, drafts_before = self.main_passes, self.draft_counts()
        features = self.features(jobs)
        encoded = self.encode_for_detection(jobs, features)
        languages = self.detect_languages(jobs, features.input_features, encoder_outputs=encoded)
        kwargs = self._generate_kwargs(jobs, path, max_new_tokens)
        if encoded is not None:
            kwargs["encoder_outputs"] = encoded
        if features.attention_mask is not None:
            kwargs["attention_mask"] = features.attention_mask
        if self.multilingual:
            kwargs.update(task=jobs[0].options.task, language=languages if len(jobs) > 1 else languages[0])
        if stop is not None:
            kwargs.update(stopping_criteria=[stop], monitor_progress=stop.check)
        capture = self.window_capture(jobs, languages)
        partials = None
        if on_partial is not None and any(job.stream for job in jobs):
            partials = capture.on_window = self.partial_texts(jobs, on_partial)
        self.model.capture = capture
        try:
            self.model.generate(features.input_features, **kwargs)
        finally:
            self.model.capture = None
        if partials is not None:
            partials.finish()
        transcripts = [
            self.transcript(job, language, capture.windows[i], path)
            for i, (job, language) in enumerate(zip(jobs, languages, strict=True))
        ]
        if record:
            elapsed = time.perf_counter() - started
            self._record(path, transcripts, elapsed, passes_before, drafts_before, load() if load else len(jobs))
        return transcripts

    def partial_texts(self, jobs: list[ASRJob], on_partial: Callable[[int, Partial], None]) -> PartialTexts:
        """The window callback that streams the text each streaming job's transcript gains."""
        tokenizer = self.processor.tokenizer
        return PartialTexts(
            jobs,
            on_partial,
            text_of=lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True),
            token_logprob=self.token_logprob,
            eot=tokenizer.eos_token_id,
        )

    def token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        """A token as OpenAI reports log-probabilities: its text, its UTF-8 bytes (a piece of a character
        decodes to U+FFFD on its own), its log-probability."""
        piece = self.processor.tokenizer.convert_ids_to_tokens(token)
        raw = (
            bytes(self._byte_values[c] for c in piece)
            if all(c in self._byte_values for c in piece)
            else piece.encode()
        )
        return TokenLogprob(raw.decode("utf-8", errors="replace"), tuple(raw), round(logprob, 6))

    def transcript(self, job: ASRJob, language: str, windows: list[Window], path: DecodingPath) -> Transcript:
        tokenizer = self.processor.tokenizer
        eot = tokenizer.eos_token_id
        ids: list[int] = []
        segments: list[Segment] = []
        words: list[Word] = []
        logprobs: list[TokenLogprob] = []
        for window in windows:
            for part in window.segments:
                ids.extend(part.tokens)
                if job.logprobs and part.logprobs is not None:
                    logprobs.extend(
                        self.token_logprob(t, lp)
                        for t, lp in zip(part.tokens, part.logprobs, strict=True)
                        if t < eot
                    )
                for timing in part.words or ():
                    # A token that is only a space is a "word" to the aligner; OpenAI lists no empty words.
                    if not (word := timing.word.strip()):
                        continue
                    start = min(timing.start, job.duration)
                    words.append(
                        Word(word, round(start, 2), round(min(max(timing.end, start), job.duration), 2))
                    )
                text = tokenizer.decode(part.tokens, skip_special_tokens=True).strip()
                if not job.options.timestamps or not text:
                    continue
                start, end = part.start, min(part.end, job.duration)
                segments.append(
                    Segment(
                        round(start, 2),
                        round(max(end, start), 2),
                        text,
                        tuple(part.tokens),
                        seek=window.seek,
                        temperature=window.temperature,
                        avg_logprob=window.avg_logprob,
                        compression_ratio=window.compression_ratio,
                        no_speech_prob=window.no_speech_prob,
                    )
                )
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Transcript(
            text,
            language,
            job.duration,
            path,
            tuple(ids),
            segments if job.options.timestamps else None,
            words if job.words else None,
            logprobs if job.logprobs else None,
        )

    def _record(self, path, transcripts, elapsed, passes_before, drafts_before: tuple[int, int], load: int) -> None:
        metrics.record_transcriptions(
            path,
            requests=len(transcripts),
            main_passes=self.main_passes - passes_before,
            tokens=sum(len(t.tokens) for t in transcripts),
            audio_seconds=sum(t.duration for t in transcripts),
            elapsed=elapsed,
        )
        drafted, accepted = self.draft_counts()
        metrics.record_drafts(drafted - drafts_before[0], accepted - drafts_before[1])
        tokens = sum(len(t.tokens) + 1 for t in transcripts)  # + the end-of-text step of each
        self.path_choice.record(path, elapsed, tokens, load=load)
