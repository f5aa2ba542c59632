"""Cheap drafts for Whisper's assisted (speculative) decoding: a restricted-vocabulary head and a draft loop
without an inner `generate()`.

At batch size 1 on a CPU a decoder step is memory-bound, and the 51,865-row output projection dominates it:
a 2-layer assistant with Whisper's full head costs about two thirds of a main-model step per token, and
transformers' default candidate generator adds a whole inner `generate()` call per draft round. Here:

* `draft_vocabulary` picks a few thousand token ids (recipe below) and `Drafter` keeps only those rows of the
  assistant's head; the draft's argmax over them maps back to full-vocabulary ids.
* `DraftLoop`, a transformers `CandidateGenerator`, runs the assistant decoder's cached steps directly
  (`DraftSteps`: the decoder's own modules called as plain tensor code, keys and values in preallocated
  tensors): one cache per `generate()` call (per 30 s window in long-form), cropped to the accepted prefix
  each round.
* `WhisperWithDraftLoop` hands transformers' `_assisted_decoding` that loop instead of its default one.

Nothing that decides the output changes: the main model verifies every draft in transformers' own
`_assisted_decoding`, with Whisper's logits processors (suppressed tokens, language/task prompt, timestamps),
long-form loop and temperature fallback, so the transcript is the main model's token for token whatever the
draft proposes. A worse draft (a token outside the restricted vocabulary, say) only costs speed.

Use:
    main = WhisperWithDraftLoop.from_pretrained(...)          # or runtime.load(WhisperWithDraftLoop, ...)
    main.drafter = Drafter.build(main, assistant, tokenizer, DraftConfig.from_assistant(assistant))
    main.generate(input_features, assistant_model=assistant, language="en")

Measured on whisper-base with its distilled 2-layer assistant, 2 CPU threads (bench/bench_asr_real.py): a draft
step costs 2.2 ms (int8, 16,384-row head) against 16.5 ms for the assistant with its fp32 full head and 13 ms
for a main-model step (with the kit's FewRowLinear kernels); assisted decoding went from 0.65x of plain decoding's
speed (transformers' loop) to 1.3x, with identical tokens.
"""

import copy
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from opentelemetry import trace
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import (
    LogitsProcessorList,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from services.kit.quantize import quantize_linears


@dataclass(frozen=True)
class DraftConfig:
    # Tokens the assistant drafts per round (the starting count with the heuristic schedule).
    num_tokens: int = 5
    # Rows of the restricted draft head (special and timestamp tokens included); 0 keeps the full head.
    vocab_size: int = 16384
    # Optional token frequency file (tab-separated, first column the token id, a header line, most frequent
    # first): its ids are preferred over plain low ids for up to half of the text-token budget.
    counts_file: Path | None = None
    # "heuristic" is transformers' schedule: +2 tokens after a fully accepted round, -1 otherwise.
    schedule: Literal["constant", "heuristic"] = "constant"
    # Stop a round early once the draft's top probability (over its own vocabulary) falls below this.
    confidence_threshold: float | None = 0.8
    # Int8 dynamic quantization of the draft's linear layers and head, on CPU only (ignored on GPU, where
    # half-precision steps are cheap already).
    quantize: bool = True

    @classmethod
    def from_assistant(cls, assistant, **overrides) -> "DraftConfig":
        """Draft length, schedule and confidence threshold from the assistant's generation config, where
        transformers keeps them (`num_assistant_tokens`, `num_assistant_tokens_schedule`,
        `assistant_confidence_threshold`; a threshold of 0 drafts every token)."""
        generation = assistant.generation_config
        heuristic = generation.num_assistant_tokens_schedule in ("heuristic", "heuristic_transient")
        settings = dict(
            num_tokens=int(generation.num_assistant_tokens or cls.num_tokens),
            schedule="heuristic" if heuristic else "constant",
            confidence_threshold=generation.assistant_confidence_threshold or None,
        )
        return cls(**{**settings, **overrides})


def read_token_counts(path: Path) -> list[int]:
    """Token ids of a `token_id<TAB>count...` file with a header line, in file order (most frequent first)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [int(line.split("\t", 1)[0]) for line in lines if line.strip()]


def draft_vocabulary(
    tokenizer, size: int, counts: Sequence[int] = (), exclude: Iterable[int] = ()
) -> list[int]:
    """The token ids a restricted draft head keeps, sorted; deterministic for a given tokenizer.

    Recipe: every added token (Whisper's special, language, task and 1,501 timestamp tokens, which the
    main model emits at fixed points of every transcript), then the ids of `counts` (most frequent first) for
    up to half of the remaining budget, then the lowest remaining ids: Whisper's byte-level BPE ids are
    roughly in merge order, so low ids are, broadly, the frequent tokens of its training text in every
    language. `exclude` (the model's suppressed tokens, which the main model never emits) is left out.
    """
    excluded = set(exclude)
    base_vocab = tokenizer.vocab_size  # ids below are BPE tokens; the added tokens come after
    special = [i for i in tokenizer.added_tokens_decoder if i not in excluded]
    if size < len(special) + 256:
        raise ValueError(
            f"a draft vocabulary of {size} ids cannot hold the {len(special)} special tokens and the 256 "
            "byte tokens: use a larger size, or 0 for the full head"
        )
    chosen = dict.fromkeys(special)
    budget = size - len(chosen)
    for token in counts:
        if len(chosen) - len(special) >= budget // 2:
            break
        if token < base_vocab and token not in excluded:
            chosen.setdefault(token)
    for token in range(base_vocab):
        if len(chosen) >= size:
            break
        if token not in excluded:
            chosen.setdefault(token)
    return sorted(chosen)


class Drafter:
    """An assistant prepared for drafting for one main model: its decoder, its (restricted) head, settings and
    counters.

    The assistant is either a decoder-only `WhisperForCausalLM` reading the main encoder's outputs
    (distil-whisper style) or a smaller full Whisper with the same tokenizer (which encodes the audio itself).
    On a CPU the draft's linear layers and head are quantized to int8 (dynamic quantization: a quarter of the
    fp32 weight bytes per step); the assistant passed in is left as it is. Assistant layers whose
    cross-attention key/value projections are copies of a main-model layer's (distil-whisper initialises its
    layers from the teacher's and may freeze them) read that layer's cross-attention keys and values instead
    of computing their own.
    """

    def __init__(
        self,
        main,
        assistant,
        config: DraftConfig = DraftConfig(),
        vocab_ids: Sequence[int] | None = None,
    ):
        self.assistant = assistant
        self.config = config
        self.shares_encoder = not assistant.config.is_encoder_decoder
        weight = assistant.get_output_embeddings().weight.detach()
        self.quantized = config.quantize and weight.device.type == "cpu"
        vocab_size = weight.shape[0]
        suppress = main.generation_config.suppress_tokens or ()
        suppressed = sorted({t for t in suppress if 0 <= t < vocab_size})
        self.head_bias = None
        if vocab_ids is None and not self.quantized:
            # The full float head reads the assistant's own weight (no copy); the main model never emits
            # suppressed tokens, so neither does the draft.
            self.vocab_ids = None
            self.head = assistant.get_output_embeddings()
            if suppressed:
                self.head_bias = torch.zeros(vocab_size, dtype=weight.dtype, device=weight.device)
                self.head_bias[suppressed] = float("-inf")
        else:
            keep = vocab_ids if vocab_ids is not None else sorted(set(range(vocab_size)) - set(suppressed))
            self.vocab_ids = torch.tensor(sorted(keep), dtype=torch.long, device=weight.device)
            self.head = torch.nn.Linear(
                weight.shape[1], len(keep), bias=False, device=weight.device, dtype=weight.dtype
            )
            self.head.weight = torch.nn.Parameter(weight.index_select(0, self.vocab_ids), requires_grad=False)
        self.decoder = assistant.model.decoder
        self.main_layers = main.model.decoder.layers
        self.shared_cross_attention = _shared_cross_attention(self.decoder.layers, self.main_layers)
        if not self.shares_encoder:
            self.shared_cross_attention = {}  # it attends to its own encoder's outputs
        if self.quantized:
            self.decoder, self.head = _quantized_draft(self.decoder, self.head)
        self._lock = threading.Lock()
        self.drafted = 0
        self.accepted = 0
        self.rounds = 0

    @classmethod
    def build(cls, main, assistant, tokenizer, config: DraftConfig = DraftConfig()) -> "Drafter":
        """The drafter for `main`, with the draft vocabulary `config` asks for (see `draft_vocabulary`)."""
        vocab_ids = None
        if config.vocab_size:
            counts = read_token_counts(config.counts_file) if config.counts_file else ()
            suppress = main.generation_config.suppress_tokens or ()
            vocab_ids = draft_vocabulary(tokenizer, config.vocab_size, counts, exclude=suppress)
        return cls(main, assistant, config, vocab_ids)

    @property
    def head_rows(self) -> int:
        return self.head.out_features

    def record(self, drafted: int, accepted: int) -> None:
        with self._lock:
            self.drafted += drafted
            self.accepted += accepted
            self.rounds += 1

    def counters(self) -> tuple[int, int, int]:
        """(drafted, accepted, rounds) since the drafter was built."""
        with self._lock:
            return self.drafted, self.accepted, self.rounds

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft logits over the drafter's own vocabulary (index with `to_token_ids`)."""
        logits = self.head(hidden)
        return logits if self.head_bias is None else logits + self.head_bias

    def to_token_ids(self, index: torch.Tensor) -> torch.Tensor:
        return index if self.vocab_ids is None else self.vocab_ids[index]


def _shared_cross_attention(draft_layers, main_layers) -> dict[int, int]:
    """Draft layer index -> main layer index, for draft layers whose cross-attention key and value projections
    equal that main layer's."""

    def same(a: torch.nn.Linear, b: torch.nn.Linear) -> bool:
        if a.weight.shape != b.weight.shape or not torch.equal(a.weight, b.weight):
            return False
        return (a.bias is None and b.bias is None) or (
            a.bias is not None and b.bias is not None and torch.equal(a.bias, b.bias)
        )

    shared = {}
    for i, layer in enumerate(draft_layers):
        for j, main_layer in enumerate(main_layers):
            a, b = layer.encoder_attn, main_layer.encoder_attn
            if same(a.k_proj, b.k_proj) and same(a.v_proj, b.v_proj) and a.num_heads == b.num_heads:
                shared[i] = j
                break
    return shared


def cross_attention_kv(
    attention, encoder_hidden: torch.Tensor, into: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Whisper cross-attention layer's keys and values (batch x heads x frames x head size), computed exactly
    as its forward pass does; with `into` (slots of a cache), written there instead of into new tensors."""
    shape = (encoder_hidden.shape[0], -1, attention.num_heads, attention.head_dim)
    keys = attention.k_proj(encoder_hidden).view(shape).transpose(1, 2)
    values = attention.v_proj(encoder_hidden).view(shape).transpose(1, 2)
    if into is None:
        return keys.contiguous(), values.contiguous()
    into[0].copy_(keys)
    into[1].copy_(values)
    return into


def _quantized_draft(decoder: torch.nn.Module, head: torch.nn.Linear):
    """Int8 copies of the decoder's linear layers (sharing its embeddings) and of the head."""
    shared = {id(m): m for m in (decoder.embed_tokens, decoder.embed_positions, decoder.layer_norm)}
    return quantize_linears(copy.deepcopy(decoder, memo=shared)), quantize_linears(head)


class DraftSteps:
    """The draft decoder's cached forward passes (batch 1) as plain tensor code: the same modules and the same
    arithmetic as `WhisperDecoder.forward`, without its per-call machinery (cache objects, mask builders,
    output records), which at one token per step costs about as much as a 2-layer draft's own arithmetic.
    Keys and values live in tensors preallocated for `max_length` positions; cropping moves a length."""

    def __init__(self, decoder, cross_keys_values: list[tuple[torch.Tensor, torch.Tensor]], max_length: int):
        self.decoder = decoder
        self.layers = list(decoder.layers)
        attention = self.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.embed_dim = self.heads * self.head_dim
        reference = cross_keys_values[0][0]
        shape = (1, self.heads, max_length, self.head_dim)
        self.keys = [reference.new_empty(shape) for _ in self.layers]
        self.values = [reference.new_empty(shape) for _ in self.layers]
        self.cross = cross_keys_values
        self.length = 0

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(1, -1, self.heads, self.head_dim).transpose(1, 2)

    def __call__(self, ids: torch.LongTensor) -> torch.Tensor:
        """Feed `ids` (1 x n) after the cached positions; the final hidden state of the last one (1 x d)."""
        n, start = ids.shape[1], self.length
        end = start + n
        decoder = self.decoder
        hidden = decoder.embed_tokens(ids) * decoder.embed_scale + decoder.embed_positions.weight[start:end]
        # A new position sees every cached one and the new ones up to itself.
        mask = None if n == 1 else torch.ones(n, end, dtype=torch.bool, device=ids.device).tril(start)
        for i, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.self_attn_layer_norm(hidden)
            query = self._split_heads(attention.q_proj(x) * attention.scaling)
            self.keys[i][:, :, start:end] = self._split_heads(attention.k_proj(x))
            self.values[i][:, :, start:end] = self._split_heads(attention.v_proj(x))
            out = F.scaled_dot_product_attention(
                query, self.keys[i][:, :, :end], self.values[i][:, :, :end], attn_mask=mask, scale=1.0
            )
            hidden = hidden + attention.out_proj(out.transpose(1, 2).reshape(1, n, self.embed_dim))
            cross = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(hidden)
            query = self._split_heads(cross.q_proj(x) * cross.scaling)
            out = F.scaled_dot_product_attention(query, *self.cross[i], scale=1.0)
            hidden = hidden + cross.out_proj(out.transpose(1, 2).reshape(1, n, self.embed_dim))
            x = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
        self.length = end
        return decoder.layer_norm(hidden[:, -1])


class DraftLoop(CandidateGenerator):
    """Drafts candidates with the assistant's cached decoder steps; lives for one `generate()` call."""

    def __init__(self, drafter: Drafter, generation_config, model_kwargs: dict, inputs_tensor=None):
        self.drafter = drafter
        self.num_tokens = drafter.config.num_tokens
        self.max_length = generation_config.max_length
        eos = generation_config.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        if drafter.shares_encoder:
            self.encoder_hidden = model_kwargs["encoder_outputs"][0]
        elif inputs_tensor is None:
            raise ValueError(
                "a full-Whisper assistant encodes the audio itself: pass input_features to generate()"
            )
        else:
            device = drafter.assistant.device
            self.encoder_hidden = drafter.assistant.get_encoder()(inputs_tensor.to(device))[0]
        self.main_cache = model_kwargs.get("cache")
        self.steps: DraftSteps | None = None  # made on the first round

    def _cross_keys_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The draft layers' cross-attention keys and values. Draft layers that are copies of main layers take
        the main model's: computed here, as the main model's first forward pass would (it then finds them
        cached)."""
        main_cache, draft_layers = self.main_cache, self.drafter.decoder.layers
        shared = self.drafter.shared_cross_attention
        if shared and isinstance(main_cache, EncoderDecoderCache) and not any(main_cache.is_updated.values()):
            for j, layer in enumerate(self.drafter.main_layers):
                main_cache.cross_attention_cache.update(
                    *cross_attention_kv(layer.encoder_attn, self.encoder_hidden), j
                )
                main_cache.is_updated[j] = True
            main_layers = main_cache.cross_attention_cache.layers
            return [
                (main_layers[shared[i]].keys, main_layers[shared[i]].values)
                if i in shared
                else cross_attention_kv(layer.encoder_attn, self.encoder_hidden)
                for i, layer in enumerate(draft_layers)
            ]
        return [cross_attention_kv(layer.encoder_attn, self.encoder_hidden) for layer in draft_layers]

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, None]:
        length = input_ids.shape[1]
        budget = min(self.num_tokens, self.max_length - length - 1)
        if budget < 1:
            return input_ids, None
        if self.steps is None:
            self.steps = DraftSteps(self.drafter.decoder, self._cross_keys_values(), self.max_length)
        # The cache holds the prompt and last round's drafts; keep only what the main model accepted
        # (entries for positions before the newest token), then feed the tokens it has not seen yet.
        self.steps.crop(length - 1)
        step_ids = input_ids[:, self.steps.length :].to(self.drafter.assistant.device)
        threshold = self.drafter.config.confidence_threshold
        draft = []
        for _ in range(budget):
            logits = self.drafter.logits(self.steps(step_ids))
            token = self.drafter.to_token_ids(logits.argmax(-1))
            draft.append(token)
            if int(token) in self.eos_ids:
                break
            if threshold is not None and float(logits.softmax(-1).max()) < threshold:
                break
            step_ids = token.view(1, 1)
        draft_ids = torch.stack(draft, dim=1).to(input_ids.device)
        return torch.cat([input_ids, draft_ids], dim=1), None

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int):
        drafted = scores.shape[1] - 1
        self.drafter.record(drafted, int(num_matches))
        # An event on the current span (a served request's model span); a no-op when nothing is traced.
        trace.get_current_span().add_event("draft_round", {"drafted": drafted, "accepted": int(num_matches)})
        if self.drafter.config.schedule == "heuristic":
            self.num_tokens = self.num_tokens + 2 if num_matches == drafted else max(1, self.num_tokens - 1)


class _SuppressTokens(SuppressTokensLogitsProcessor):
    """transformers' processor, with its vocabulary mask built once per `generate()` instead of on every call
    (`torch.isin` over 51,865 ids costs about 1.5 ms on a CPU core, and assisted decoding calls it once per
    verified position)."""

    def __init__(self, original: SuppressTokensLogitsProcessor):
        self.suppress_tokens = original.suppress_tokens
        self.mask = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.mask.shape[-1] != scores.shape[-1] or self.mask.device != scores.device:
            vocab = torch.arange(scores.shape[-1], device=scores.device)
            self.mask = torch.isin(vocab, self.suppress_tokens.to(scores.device))
        return scores.masked_fill(self.mask, float("-inf"))


class _SuppressTokensAtBegin(SuppressTokensAtBeginLogitsProcessor):
    """transformers' processor, masking only at the begin index (it built its mask on every call)."""

    def __init__(self, original: SuppressTokensAtBeginLogitsProcessor):
        self.begin_suppress_tokens = original.begin_suppress_tokens
        self.begin_index = original.begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        vocab = torch.arange(scores.shape[-1], device=scores.device)
        mask = torch.isin(vocab, self.begin_suppress_tokens.to(scores.device))
        return scores.masked_fill(mask, float("-inf"))


_FASTER_PROCESSORS = {
    SuppressTokensLogitsProcessor: _SuppressTokens,
    SuppressTokensAtBeginLogitsProcessor: _SuppressTokensAtBegin,
}


class WhisperWithDraftLoop(WhisperForConditionalGeneration):
    """Whisper whose assisted decoding drafts with `self.drafter` when `generate(assistant_model=...)` is given
    that drafter's assistant; any other assistant gets transformers' default candidate generator.

    Its token-suppressing logits processors compute their masks once per call instead of once per token:
    the same scores, cheaper (plain and assisted decoding alike).
    """

    def _get_logits_processor(self, *args, **kwargs) -> LogitsProcessorList:
        processors = super()._get_logits_processor(*args, **kwargs)
        return LogitsProcessorList(_FASTER_PROCESSORS.get(type(p), lambda p: p)(p) for p in processors)

    drafter: Drafter | None = None

    def _get_candidate_generator(
        self,
        generation_config,
        input_ids,
        inputs_tensor,
        logits_processor,
        model_kwargs,
        assistant_model=None,
        **kwargs,
    ):
        if self.drafter is not None and assistant_model is self.drafter.assistant:
            return DraftLoop(self.drafter, generation_config, model_kwargs, inputs_tensor)
        return super()._get_candidate_generator(
            generation_config,
            input_ids,
            inputs_tensor,
            logits_processor,
            model_kwargs,
            assistant_model,
            **kwargs,
        )
