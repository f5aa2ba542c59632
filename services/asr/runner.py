"""Whisper runner: a main model, a speculative-decoding assistant, and load-adaptive batch decoding. No web code.

Assisted (speculative) decoding lets a small assistant draft tokens that the main model checks in one forward
pass; greedy output is exactly the main model's own. It only pays at batch size 1, so `predict_batch` looks at
how many requests the batcher handed over: a few are decoded one by one with the assistant, more than
`adaptive_threshold` together in one plain batched generate.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from opentelemetry import trace
from prometheus_client import Counter, Gauge
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    SuppressTokensAtBeginLogitsProcessor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE
from transformers.utils import cached_file

from services.kit import tracing
from services.kit.batcher import Work
from services.kit.errors import Cancelled, InvalidArgument
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, resolve_source

from .drafting import DraftConfig, Drafter, WhisperWithDraftLoop
from .settings import AsrSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DecodingPath = Literal["assisted", "plain"]

REQUESTS = Counter("asr_requests_total", "Transcriptions served, by decoding path", ["path"])
MAIN_FORWARD_PASSES = Counter(
    "asr_main_forward_passes_total", "Forward passes of the main model's decoder, by decoding path", ["path"]
)
DRAFTED = Counter("asr_draft_tokens_total", "Tokens the assistant drafted")
ACCEPTED = Counter("asr_draft_tokens_accepted_total", "Drafted tokens the main model accepted")
ACCEPTANCE = Gauge("asr_draft_acceptance_rate", "Accepted / drafted tokens since start-up")
DECODED_TOKENS = Counter("asr_decoded_tokens_total", "Transcript tokens produced, by decoding path", ["path"])
COMPUTE_SECONDS = Counter(
    "asr_compute_seconds_total", "Seconds spent in the model, by decoding path", ["path"]
)
AUDIO_SECONDS = Counter("asr_audio_seconds_total", "Seconds of audio transcribed, by decoding path", ["path"])
TOKENS_PER_SECOND = Gauge(
    "asr_decoded_tokens_per_second", "Tokens per compute second in the last batch", ["path"]
)
REALTIME_FACTOR = Gauge(
    "asr_audio_seconds_per_compute_second", "Audio seconds per compute second in the last batch", ["path"]
)


@dataclass
class DraftTally:
    """Running totals, updated only from the model thread."""

    main_passes: int = 0
    drafted: int = 0
    accepted: int = 0


# What the metrics above have counted (the process may hold more than one runner, e.g. in tests).
_SERVED_DRAFTS = DraftTally()


class DraftCountingWhisper(WhisperWithDraftLoop):
    """Whisper that counts what the assistant drafts and the main model accepts, read off the candidate generator
    (the cheap draft loop of `drafting.py` once `drafter` is set), and decodes each window under one length limit.

    generate() builds a fresh candidate generator per call; its `get_candidates` returns the drafts and
    `update_candidate_strategy` receives how many of them matched.
    """

    draft_tally: DraftTally | None = None

    def _set_max_new_tokens_and_length(self, config, decoder_input_ids, generation_config):
        # Whisper sets each window's length limit here. Given max_new_tokens, the max_length its config preparation
        # always fills in is a second, conflicting limit (generate() warns about the pair every window): drop it.
        super()._set_max_new_tokens_and_length(config, decoder_input_ids, generation_config)
        if generation_config.max_new_tokens is not None:
            generation_config.max_length = None

    def _get_candidate_generator(self, *args, **kwargs):
        generator = super()._get_candidate_generator(*args, **kwargs)
        tally = self.draft_tally
        if tally is None:
            return generator
        get_candidates, update_strategy = generator.get_candidates, generator.update_candidate_strategy

        drafted = 0

        def counted_get_candidates(input_ids, *rest, **kw):
            nonlocal drafted
            candidates, logits = get_candidates(input_ids, *rest, **kw)
            drafted = candidates.shape[1] - input_ids.shape[1]
            tally.drafted += drafted
            return candidates, logits

        def counted_update(input_ids, scores, num_matches):
            tally.accepted += int(num_matches)
            # An event on the request's model span (made current by predict_batch); a no-op when not traced.
            trace.get_current_span().add_event("draft_round", {"drafted": drafted, "accepted": int(num_matches)})
            return update_strategy(input_ids, scores, num_matches)

        generator.get_candidates = counted_get_candidates
        generator.update_candidate_strategy = counted_update
        return generator


@dataclass(frozen=True)
class DecodeOptions:
    """Settings every request in one batch shares (the language may differ per request)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None
    timestamps: bool = False
    temperature: float = 0.0


@dataclass(frozen=True, eq=False)
class AsrJob:
    audio: np.ndarray  # float32 mono at 16 kHz
    options: DecodeOptions = DecodeOptions()
    language: str | None = None  # a Whisper language code; None detects it
    decoding: Literal["auto", "assisted", "plain"] = "auto"

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def long_form(self) -> bool:
        return self.audio.size > 30 * SAMPLE_RATE

    @property
    def batch_key(self) -> tuple:
        # Long-form decoding predicts timestamps and seeks through 30 s windows, so it never shares a batch with
        # short clips. `auto` requests batch together; a forced path only batches with the same force.
        return (self.options, self.long_form, None if self.decoding == "auto" else self.decoding)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # Whisper language code, given or detected
    duration: float
    path: DecodingPath
    tokens: tuple[int, ...]  # generated token ids (timestamps included), for exactness checks
    segments: list[Segment] | None = None


@dataclass
class _Features:
    input_features: torch.Tensor
    attention_mask: torch.Tensor | None


@dataclass
class AsrRunner:
    settings: AsrSettings
    runtime: TorchRuntime | None = None
    processor: WhisperProcessor | None = None
    model: DraftCountingWhisper | None = None
    assistant: torch.nn.Module | None = None
    tally: DraftTally = field(default_factory=DraftTally)
    # The checkpoint's length limit (Whisper: tokens per 30 s window), taken out of its generation config at load.
    model_max_length: int | None = None
    # Requests queued behind the batch being decoded (the service wires in its batcher's queue depth).
    queued: Callable[[], int] = lambda: 0

    # -- loading ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        source = resolve_source(s.model)
        self.processor = WhisperProcessor.from_pretrained(source)
        self.model = self.runtime.load(DraftCountingWhisper, source)
        # Each call passes its own length limit (see `_generate_kwargs`); a max_length left in the model's config
        # would be a second limit that generate() warns about on every window.
        config = self.model.generation_config
        self.model_max_length = config.max_length or self.model.config.max_target_positions
        config.max_length = None
        self.model.draft_tally = self.tally
        self.model.model.decoder.register_forward_hook(self._count_main_pass)
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
        self.runtime.tune_for_decoding(self.model)
        log.info("loaded %s with assistant %s", s.model, s.assistant_model or "none")

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

    def cost(self, job: AsrJob) -> float:
        """The job's work in audio-second-tokens: seconds of audio x the tokens each 30 s window may take."""
        return job.duration * self.window_tokens

    def _count_main_pass(self, module, args, output) -> None:
        self.tally.main_passes += 1

    def warmup(self) -> None:
        clip = np.zeros(SAMPLE_RATE, dtype=np.float32)
        for path in ("assisted", "plain") if self.assistant is not None else ("plain",):
            self.transcribe([AsrJob(clip, language="en")], path, max_new_tokens=4, record=False)
        # Start-up work stays out of the served totals.
        self.tally.main_passes = self.tally.drafted = self.tally.accepted = 0

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

    def choose_path(self, jobs: list[AsrJob]) -> DecodingPath:
        """The path for these jobs (one batch key) given the load: the jobs plus whatever queues behind them."""
        forced = jobs[0].decoding  # the batch key keeps forced paths apart
        if forced != "auto":
            return forced
        if self.assistant is None:
            return "plain"
        # Alone, the assistant is faster for the request and frees the model sooner, whatever waits behind it.
        if len(jobs) == 1:
            return "assisted"
        waiting = len(jobs) + self.queued()
        return "assisted" if waiting <= self.settings.adaptive_threshold else "plain"

    def predict_batch(self, works: list[Work]) -> list[Transcript | Exception]:
        results: dict[int, Transcript | Exception] = {
            id(work): Cancelled("request was cancelled before decoding") for work in works
        }
        pending = list(works)
        while pending := [work for work in pending if not work.cancelled]:
            # Re-decided before each assisted decode: if requests piled up meanwhile, the rest of this batch is
            # decoded together instead.
            if self.choose_path([work.payload for work in pending]) == "plain":
                for work in pending:
                    work.span.set_attribute("asr.path", "plain")
                try:
                    transcripts = self.transcribe(
                        [work.payload for work in pending], "plain", stop=StopWhenCancelled(pending)
                    )
                except Cancelled:  # every request of the batch went away mid-decode
                    break
                results.update(
                    (id(work), transcript) for work, transcript in zip(pending, transcripts, strict=True)
                )
                break
            work = pending.pop(0)
            drafted, accepted = self.tally.drafted, self.tally.accepted
            try:  # assisted generate decodes one sequence at a time
                with tracing.activate(work.span):  # its draft rounds become events of this request's span
                    stop = StopWhenCancelled([work])
                    results[id(work)] = self.transcribe([work.payload], "assisted", stop=stop)[0]
                work.span.set_attributes({"asr.path": "assisted", "asr.draft.tokens": self.tally.drafted - drafted,
                                          "asr.draft.accepted": self.tally.accepted - accepted})
            except Cancelled:
                continue
            except Exception as exc:  # one bad request must not fail its neighbours
                log.exception("assisted transcription failed")
                results[id(work)] = exc
        return [results[id(work)] for work in works]

    # -- decoding ---------------------------------------------------------------------------------------------

    def _features(self, jobs: list[AsrJob]) -> _Features:
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
            return _Features(
                features.to(self.runtime.device, self.runtime.dtype), mask.to(self.runtime.device)
            )
        # Short clips are each padded to Whisper's 30 s window, alone or in a batch.
        features = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return _Features(features.to(self.runtime.device, self.runtime.dtype), None)

    def _detect_languages(self, jobs: list[AsrJob], features: torch.Tensor) -> list[str]:
        """Given languages as they are; the rest detected from the first 30 s, as Whisper's generate would."""
        if not self.multilingual:
            return ["en"] * len(jobs)
        missing = [i for i, job in enumerate(jobs) if job.language is None]
        languages = [job.language for job in jobs]
        if missing:
            id_to_code = {i: tok[2:-2] for tok, i in self.model.generation_config.lang_to_id.items()}
            detected = self.model.detect_language(input_features=features[missing])
            for i, lang_id in zip(missing, detected.tolist(), strict=True):
                languages[i] = id_to_code[lang_id]
        return languages

    def _generate_kwargs(self, jobs: list[AsrJob], path: DecodingPath, max_new_tokens: int | None) -> dict:
        options = jobs[0].options
        kwargs = dict(return_timestamps=options.timestamps or jobs[0].long_form, num_beams=1)
        if options.timestamps:
            kwargs["return_segments"] = True
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature)
        else:
            kwargs["do_sample"] = False
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

    @torch.inference_mode()
    def transcribe(
        self,
        jobs: list[AsrJob],
        path: DecodingPath,
        max_new_tokens: int | None = None,
        record: bool = True,
        stop: StopWhenCancelled | None = None,
    ) -> list[Transcript]:
        """Decode jobs sharing a batch key; assisted decoding takes exactly one job.

        `stop` ends decoding within a step once every request is cancelled, and raises `Cancelled` before the
        next 30 s window of long-form audio.
        """
        if path == "assisted" and (len(jobs) != 1 or self.assistant is None):
            raise ValueError("assisted decoding needs an assistant model and exactly one job")
        started = time.perf_counter()
        passes_before, drafted_before, accepted_before = (
            self.tally.main_passes,
            self.tally.drafted,
            self.tally.accepted,
        )
        features = self._features(jobs)
        languages = self._detect_languages(jobs, features.input_features)
        kwargs = self._generate_kwargs(jobs, path, max_new_tokens)
        if features.attention_mask is not None:
            kwargs["attention_mask"] = features.attention_mask
        if self.multilingual:
            kwargs.update(task=jobs[0].options.task, language=languages if len(jobs) > 1 else languages[0])
        if stop is not None:
            kwargs.update(stopping_criteria=[stop], monitor_progress=stop.check)
        output = self.model.generate(features.input_features, **kwargs)
        sequences = output["sequences"] if isinstance(output, dict) else output
        segments = output.get("segments") if isinstance(output, dict) else None
        transcripts = [
            self._transcript(job, language, sequences[i], segments[i] if segments is not None else None, path)
            for i, (job, language) in enumerate(zip(jobs, languages, strict=True))
        ]
        if record:
            self._record(
                path,
                transcripts,
                time.perf_counter() - started,
                passes_before,
                drafted_before,
                accepted_before,
            )
        return transcripts

    def _transcript(
        self, job: AsrJob, language: str, sequence: torch.Tensor, segments, path: DecodingPath
    ) -> Transcript:
        tokenizer = self.processor.tokenizer
        pad = self.model.generation_config.pad_token_id
        ids = [t for t in sequence.tolist() if t != pad]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        parsed = None
        if job.options.timestamps:
            parsed = []
            for segment in segments:
                segment_text = tokenizer.decode(segment["tokens"], skip_special_tokens=True).strip()
                if not segment_text:
                    continue
                start, end = float(segment["start"]), min(float(segment["end"]), job.duration)
                parsed.append(
                    Segment(
                        round(start, 2),
                        round(max(end, start), 2),
                        segment_text,
                        tuple(segment["tokens"].tolist()),
                    )
                )
        return Transcript(text, language, job.duration, path, tuple(ids), parsed)

    def _record(self, path, transcripts, elapsed, passes_before, drafted_before, accepted_before) -> None:
        tokens = sum(len(t.tokens) for t in transcripts)
        audio = sum(t.duration for t in transcripts)
        REQUESTS.labels(path).inc(len(transcripts))
        MAIN_FORWARD_PASSES.labels(path).inc(self.tally.main_passes - passes_before)
        DRAFTED.inc(self.tally.drafted - drafted_before)
        ACCEPTED.inc(self.tally.accepted - accepted_before)
        _SERVED_DRAFTS.drafted += self.tally.drafted - drafted_before
        _SERVED_DRAFTS.accepted += self.tally.accepted - accepted_before
        if _SERVED_DRAFTS.drafted:
            ACCEPTANCE.set(_SERVED_DRAFTS.accepted / _SERVED_DRAFTS.drafted)
        DECODED_TOKENS.labels(path).inc(tokens)
        COMPUTE_SECONDS.labels(path).inc(elapsed)
        AUDIO_SECONDS.labels(path).inc(audio)
        TOKENS_PER_SECOND.labels(path).set(tokens / elapsed)
        REALTIME_FACTOR.labels(path).set(audio / elapsed)
