"""SpeechT5 model runner: text -> speech and speech -> speech through HiFi-GAN, batched. No web code.

Batching: one `generate_speech` call synthesizes many sentences at once (padded token ids with an
attention mask, one speaker embedding per row). The sentences of all requests in a batch are pooled,
ordered (see `synthesis.row_order`) and cut into calls of at most `max_rows_per_call` rows.

Randomness: SpeechT5's decoder pre-net applies dropout at inference on purpose, so outputs vary from run
to run. Its dropout mask is drawn once per decoding step and shared by every row of a call, so a row's
audio depends on which rows share its call. A request with a `seed` therefore makes its calls alone
(`synthesis.solo_calls`), inside a forked and seeded RNG, and they depend on nothing but the request: the same seed
gives the same bytes whatever else the server is doing. Seeded requests have a batch key of their own
(`SEEDED_BATCH`) and always run whole-request, never in the continuous decode loop (continuous.py): the
loop's batched matrix products round differently from a call's own, which would change the last bits of
the audio. Unseeded requests share `SHARED_BATCH` and decode in the loop when continuous batching is on.

Streaming: a streaming request synthesizes its first sentence alone and then the rest together; each
sentence is emitted as soon as its call finishes, so the first sound does not wait for the whole text.
Seeded requests follow the same plan streamed or not, so their audio does not depend on streaming.

Speed: `speed` stretches the mel spectrogram in time (linear interpolation) before the vocoder, which
changes the duration but not the pitch (resampling the waveform would change both).
"""

import contextlib
import logging
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    SpeechT5FeatureExtractor,
    SpeechT5ForSpeechToSpeech,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5Tokenizer,
)

from services.kit.batcher import Work
from services.kit.errors import Cancelled
from services.kit.quantize import quantize_linears, resolve_quantization
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, resolve_source

from .continuous import SpeechLoop
from .metrics import ROWS_PER_CALL
from .sentences import split_sentences
from .settings import QUANTIZE_AUTO_INT8, TTSSettings
from .synthesis import (
    AudioResult,
    ConversionJob,
    Sentence,
    SpeechJob,
    emit_in_order,
    length_ratios,
    max_frames,
    observe,
    row_order,
    solo_calls,
    speaker_rows,
    vocode,
)
from .voices import VoiceBank

log = logging.getLogger(__name__)


def model_name(model_id: str) -> str:
    return Path(model_id).name if Path(model_id).is_dir() else model_id


class SpeechRunner:
    def __init__(self, settings: TTSSettings):
        self.settings = settings
        self.runtime: TorchRuntime | None = None
        self.tokenizer: SpeechT5Tokenizer | None = None
        self.tts: SpeechT5ForTextToSpeech | None = None
        self.vocoder: SpeechT5HifiGan | None = None
        self.vc_features: SpeechT5FeatureExtractor | None = None
        self.vc: SpeechT5ForSpeechToSpeech | None = None
        self.voices: VoiceBank | None = None
        self.sample_rate = 16000
        self.quantization = "none"  # "int8" once load() quantized the acoustic model (CPU only)

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        source = resolve_source(s.model)
        self.tokenizer = SpeechT5Tokenizer.from_pretrained(source)
        self.quantization = resolve_quantization(s.quantize, self.runtime.device, QUANTIZE_AUTO_INT8)
        self.tts = self.runtime.load(SpeechT5ForTextToSpeech, source)
        if self.quantization == "int8":  # before FewRowLinear (it stays float); HiFi-GAN has no linears
            quantize_linears(self.tts)
        self.tts = self.runtime.tune_for_decoding(self.tts)
        self.vocoder = self.runtime.load(SpeechT5HifiGan, s.vocoder)
        vc_source = resolve_source(s.vc_model)
        self.vc_features = SpeechT5FeatureExtractor.from_pretrained(vc_source)
        self.vc = self.runtime.tune_for_decoding(self.runtime.load(SpeechT5ForSpeechToSpeech, vc_source))
        self.sample_rate = self.vocoder.config.sampling_rate
        self.voices = VoiceBank(
            s.voices_dir, self.tts.config.speaker_embedding_dim, s.default_voice, s.voice_aliases
        )
        # The character tokenizer makes at most one token per character, plus a word marker and </s>.
        if s.max_sentence_chars + 2 > self.tts.config.max_text_positions:
            raise ValueError(
                f"max_sentence_chars {s.max_sentence_chars} exceeds what the model reads "
                f"({self.tts.config.max_text_positions} tokens)"
            )
        log.info("loaded %s, %s and %s on %s", s.model, s.vocoder, s.vc_model, self.runtime.device)

    def warmup(self) -> None:
        speaker = self.voices.get(None)
        self.synthesize([self.sentences("Warm up.")[0].token_ids], [speaker], [1.0])
        self.convert([np.zeros(self.vc_features.sampling_rate, dtype=np.float32)], [speaker])

    # -- text -----------------------------------------------------------------------------------

    def sentences(self, text: str) -> list[Sentence]:
        """Sentences with something to pronounce: a letter or digit the tokenizer knows."""
        tokenizer = self.tokenizer
        silent = set(tokenizer.all_special_ids)
        result = []
        for sentence in split_sentences(text, self.settings.max_sentence_chars):
            ids = tokenizer(sentence)["input_ids"]
            pieces = tokenizer.convert_ids_to_tokens([i for i in ids if i not in silent])
            if any(any(char.isalnum() for char in piece) for piece in pieces):
                result.append(Sentence(sentence, tuple(ids)))
        return result

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples the vocoder makes per spectrogram frame (its hop, 256 for HiFi-GAN)."""
        return int(np.prod(self.vocoder.config.upsample_rates))

    def cost(self, job: SpeechJob | ConversionJob) -> float:
        """A job's work: characters to speak, or seconds of speech to convert."""
        if isinstance(job, SpeechJob):
            return sum(len(sentence.text) for sentence in job.sentences)
        return job.samples.size / self.vc_features.sampling_rate

    # -- model calls ----------------------------------------------------------------------------

    @torch.inference_mode()
    def synthesize(
        self, token_ids: Sequence[Sequence[int]], speakers: Sequence[np.ndarray], speeds: Sequence[float]
    ) -> list[np.ndarray]:
        """One generate call: a waveform (float32, `sample_rate`) per row of token ids."""
        s, device = self.settings, self.runtime.device
        inputs = self.tokenizer.pad([{"input_ids": list(ids)} for ids in token_ids], return_tensors="pt")
        return self._generate(
            self.tts,
            "synthesis",
            inputs["input_ids"].to(device),
            inputs["attention_mask"].to(device),
            speakers,
            row_lengths=[len(ids) for ids in token_ids],
            threshold=s.stop_threshold,
            len_ratios=(s.min_len_ratio, s.max_len_ratio),
            speeds=speeds,
        )

    @torch.inference_mode()
    def convert(self, waveforms: Sequence[np.ndarray], speakers: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One generate call of the speech-to-speech model: the same words in the speakers' voices."""
        s, device = self.settings, self.runtime.device
        features = self.vc_features(
            audio=list(waveforms),
            sampling_rate=self.vc_features.sampling_rate,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        encoder_lengths = self.vc.speecht5.encoder.prenet._get_feat_extract_output_lengths(
            features["attention_mask"].sum(-1)
        ).tolist()
        return self._generate(
            self.vc,
            "conversion",
            features["input_values"].to(device, self.runtime.dtype),
            features["attention_mask"].to(device),
            speakers,
            row_lengths=encoder_lengths,
            threshold=s.vc_stop_threshold,
            len_ratios=(s.vc_min_len_ratio, s.vc_max_len_ratio),
            speeds=[1.0] * len(waveforms),
        )

    def _generate(
        self,
        model: SpeechT5ForTextToSpeech | SpeechT5ForSpeechToSpeech,
        task: str,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor,
        speakers: Sequence[np.ndarray],
        *,
        row_lengths: Sequence[int],
        threshold: float,
        len_ratios: tuple[float, float],
        speeds: Sequence[float],
    ) -> list[np.ndarray]:
        """One `generate_speech` call, each row no longer than it would be alone (`row_lengths`: its encoder
        positions), vocoded at its speed."""
        min_ratio, max_ratio = length_ratios(model, max(row_lengths), *len_ratios)
        spectrograms, lengths = model.generate_speech(
            inputs,
            speaker_rows(speakers, self.runtime),
            attention_mask=attention_mask,
            threshold=threshold,
            minlenratio=min_ratio,
            maxlenratio=max_ratio,
            return_output_lengths=True,
        )
        ROWS_PER_CALL.labels(task).observe(len(row_lengths))
        limits = [max_frames(model, length, max_ratio) for length in row_lengths]
        return vocode(self.vocoder, self._trim(spectrograms, lengths, limits), speeds)

    @staticmethod
    def _trim(
        spectrograms: torch.Tensor, lengths: Sequence[int], limits: Sequence[int]
    ) -> list[torch.Tensor]:
        # generate_speech sizes the length limits by the longest row of the call; cap every row at its own
        # limit so that a sentence that never hits the stop threshold is no longer than it would be alone.
        return [
            spectrograms[row, : min(length, limit)]
            for row, (length, limit) in enumerate(zip(lengths, limits, strict=True))
        ]

    @contextlib.contextmanager
    def _random_state(self, seed: int | None):
        """Seed the RNG for one request without disturbing the sequence other requests draw from."""
        if seed is None:
            yield
            return
        device = self.runtime.device
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            yield

    # -- batcher entry points -------------------------------------------------------------------

    def predict_speech(self, works: list[Work]) -> list[AudioResult | Exception]:
        """Unseeded works share calls; each seeded work then makes its own, in its own seeded RNG."""
        results: list[AudioResult | Exception | None] = [None] * len(works)
        unseeded = [w for w, work in enumerate(works) if work.payload.seed is None]
        if unseeded:
            for w, result in zip(unseeded, self._speak([works[w] for w in unseeded]), strict=True):
                results[w] = result
        for w, work in enumerate(works):
            if work.payload.seed is not None:
                with self._random_state(work.payload.seed):
                    results[w] = self._speak([work])[0]
        return results

    # -- continuous batching (the kit's StepDecoder) -----------------------------------------------

    @property
    def step_decoder(self) -> "SpeechRunner | None":
        """This runner as the speech batcher's step decoder, or None when continuous batching is off."""
        return self if self.settings.continuous_batching else None

    def open_loop(self, key: Hashable, payload: SpeechJob | ConversionJob, waiting: int = 1):
        """A new continuous decode loop for unseeded speech jobs; None for seeded ones (whole-request, so
        that their bytes depend on nothing but the request) and for voice conversion."""
        step_decodable = isinstance(payload, SpeechJob) and payload.seed is None
        if not self.settings.continuous_batching or not step_decodable:
            return None
        return SpeechLoop(self.tts, self.tokenizer, self.vocoder, self.runtime, self.settings)

    def rows(self, payload: SpeechJob | ConversionJob) -> int:
        """Sentences the job decodes at once: its largest call."""
        if isinstance(payload, SpeechJob):
            return max(map(len, solo_calls(payload, self.settings.max_rows_per_call)))
        return 1

    def _speak(self, works: list[Work]) -> list[AudioResult | Exception]:
        started = time.perf_counter()
        jobs: list[SpeechJob] = [work.payload for work in works]
        plans = [job.rounds() for job in jobs]
        ready: list[dict[int, np.ndarray]] = [{} for _ in works]  # sentence index -> waveform
        parts: list[list[np.ndarray]] = [[] for _ in works]  # emitted so far, pauses included
        finished_at = [started] * len(works)
        step, pause_ms = self.settings.max_rows_per_call, self.settings.sentence_pause_ms
        for round_index in range(max(map(len, plans))):
            rows = [
                (w, i)
                for w, plan in enumerate(plans)
                if round_index < len(plan) and not works[w].cancelled
                for i in plan[round_index]
            ]
            rows.sort(key=lambda row: row_order(jobs[row[0]], row[1]))
            for start in range(0, len(rows), step):
                call = [(w, i) for w, i in rows[start : start + step] if not works[w].cancelled]
                if not call:
                    continue
                # generate_speech takes no stopping criteria: its decoder steps check the call's requests.
                stop = StopWhenCancelled(works[w] for w in dict.fromkeys(w for w, _ in call))
                try:
                    with stop.checked_before(self.tts.speecht5.decoder.wrapped_decoder):
                        waveforms = self.synthesize(
                            [jobs[w].sentences[i].token_ids for w, i in call],
                            [jobs[w].speaker for w, _ in call],
                            [jobs[w].speed for w, _ in call],
                        )
                except Cancelled:
                    continue
                for (w, i), waveform in zip(call, waveforms, strict=True):
                    ready[w][i] = waveform
                for w in dict.fromkeys(w for w, _ in call):
                    emit_in_order(works[w], ready[w], parts[w], pause_ms, self.sample_rate)
                    if len(parts[w]) == len(jobs[w].sentences):
                        finished_at[w] = time.perf_counter()
        results: list[AudioResult | Exception] = []
        for w, job in enumerate(jobs):
            if len(parts[w]) < len(job.sentences):
                results.append(Cancelled("request cancelled before its audio was complete"))
                continue
            result = AudioResult(np.concatenate(parts[w]), self.sample_rate, finished_at[w] - started)
            observe("synthesis", result)
            results.append(result)
        return results

    def predict_conversion(self, works: list[Work]) -> list[AudioResult | Exception]:
        with self._random_state(works[0].payload.seed):
            started = time.perf_counter()
            results: list[AudioResult | Exception] = [
                Cancelled("request cancelled before conversion") for _ in works
            ]
            step = self.settings.max_rows_per_call
            for start in range(0, len(works), step):
                call = [w for w in range(start, min(start + step, len(works))) if not works[w].cancelled]
                if not call:
                    continue
                jobs: list[ConversionJob] = [works[w].payload for w in call]
                stop = StopWhenCancelled(works[w] for w in call)
                try:
                    with stop.checked_before(self.vc.speecht5.decoder.wrapped_decoder):
                        waveforms = self.convert([job.samples for job in jobs], [job.speaker for job in jobs])
                except Cancelled:
                    continue
                for w, waveform in zip(call, waveforms, strict=True):
                    results[w] = AudioResult(waveform, self.sample_rate, time.perf_counter() - started)
                    observe("conversion", results[w])
            return results
