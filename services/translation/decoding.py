"""Iteration-level (continuous) greedy decoding for FSMT: texts join a running decode at the next step and leave
the step they finish, each with its own cache slot.

`GreedyLoop` is the translation runner's `DecodeLoop`. Joining texts are encoded together by FSMT's encoder
written as plain tensor code (linear layers on the real tokens only, attention masked to each text), their
cross-attention keys and values go into free slots, and from then on every `step` feeds all running texts'
newest tokens through the decoder at once: the model's own modules called as plain tensor code (FSMT's
post-norm layers, scaled token embeddings plus sinusoidal positions), each text attending to its own keys and
values (masked to its own length). The logits processors and stopping
criteria are transformers' own, built per text by generate's own helpers for that text's `max_new_tokens`
(forced EOS at the last position, min length, bad words, n-gram bans: whatever the model's generation config
asks for) and called once per cohort (the texts of one plan at one length, as one `generate` batch calls
them), so each text stops exactly where `generate` would.

Tokens equal those of translating the text alone. The floats do not match bit for bit: a linear layer over
several rows takes another kernel than over one (rounding in the last bits, about 1e-6 relative), as happens
in a whole-request batch too; a token could differ only where two logits tie to that precision.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import FSMTForConditionalGeneration, FSMTTokenizer
from transformers.generation import GenerationMode, LogitsProcessorList, StoppingCriteriaList

from services.kit.batcher import Work


def greedy_plan(
    model: FSMTForConditionalGeneration,
    max_new_tokens: int,
    encoder_input_ids: torch.LongTensor | None = None,
) -> tuple[LogitsProcessorList, StoppingCriteriaList] | None:
    """The logits processors and stopping criteria `generate(num_beams=1, max_new_tokens=...)` uses for one
    text, built by generate's own helpers; None when the model's generation config does not decode greedily
    (sampling, say)."""
    config, _ = model._prepare_generation_config(
        None, num_beams=1, num_return_sequences=1, max_new_tokens=max_new_tokens
    )
    if config.get_generation_mode() != GenerationMode.GREEDY_SEARCH:
        return None
    device = model.device
    model._prepare_special_tokens(config, True, device=device, batch_size=1)
    config = model._prepare_generated_length(
        config,
        has_default_max_length=model.generation_config.max_length is None,
        has_default_min_length=model.generation_config.min_length is None,
        model_input_name="input_ids",
        input_ids_length=1,  # the decoder start token
        inputs_tensor=encoder_input_ids,
    )
    processors = model._get_logits_processor(
        config, input_ids_seq_length=1, encoder_input_ids=encoder_input_ids, device=device, model_kwargs={}
    )
    return processors, model._get_stopping_criteria(config, StoppingCriteriaList())


def encoder_inputs(tokenizer: FSMTTokenizer, texts: list[str], source_ids: list[tuple[int, ...]] | None):
    """The padded batch for the encoder: from the ids made when the requests were checked when every text has
    them (the same tensors as tokenizing again), else by tokenizing the texts."""
    if source_ids and len(source_ids) == len(texts):
        return tokenizer.pad({"input_ids": [list(ids) for ids in source_ids]}, return_tensors="pt")
    return tokenizer(texts, return_tensors="pt", padding=True)


def direct(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's forward without nn.Module's call machinery (3-5 us a call, and a decoding step makes
    about 40 of them: 4 % of a 16-row step on bench_peers' model): a plain linear or layer norm as its
    functional op on the same parameters (identical results), any other module (quantized, few-row) as
    itself."""
    if type(module) is torch.nn.Linear:
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    if type(module) is torch.nn.LayerNorm:
        return functools.partial(
            torch.layer_norm,
            normalized_shape=module.normalized_shape,
            weight=module.weight,
            bias=module.bias,
            eps=module.eps,
        )
    return module


class _LayerCalls:
    """An FSMT encoder or decoder layer's linear layers and norms as `direct` calls, under the names the layer
    gives them (`cross_*`: the decoder's attention over the source)."""

    def __init__(self, layer: torch.nn.Module):
        attention = layer.self_attn
        self.q_proj, self.k_proj = direct(attention.q_proj), direct(attention.k_proj)
        self.v_proj, self.out_proj = direct(attention.v_proj), direct(attention.out_proj)
        self.self_attn_layer_norm = direct(layer.self_attn_layer_norm)
        self.fc1, self.fc2 = direct(layer.fc1), direct(layer.fc2)
        self.final_layer_norm = direct(layer.final_layer_norm)
        cross = getattr(layer, "encoder_attn", None)
        if cross is not None:
            self.cross_q_proj, self.cross_k_proj = direct(cross.q_proj), direct(cross.k_proj)
            self.cross_v_proj, self.cross_out_proj = direct(cross.v_proj), direct(cross.out_proj)
            self.encoder_attn_layer_norm = direct(layer.encoder_attn_layer_norm)


@dataclass
class _Text:
    """One running text (one row of the loop)."""

    work: Work
    index: int  # among its job's texts
    processors: LogitsProcessorList
    criteria: StoppingCriteriaList


@dataclass
class _Job:
    results: list[list[str] | None]
    running: int = field(default=0)


class GreedyLoop:
    """A `DecodeLoop` over one language pair's model; lives in the model thread."""

    def __init__(self, model: FSMTForConditionalGeneration, tokenizer: FSMTTokenizer, slots: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.decoder = model.model.decoder
        self.encoder = model.model.encoder
        self.layers = list(self.decoder.layers)
        self.layer_calls = [_LayerCalls(layer) for layer in self.layers]
        self.encoder_calls = [_LayerCalls(layer) for layer in self.encoder.layers]
        attention = self.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.embed_dim = attention.embed_dim
        self.padding_idx = self.decoder.padding_idx
        self.pad_token_id = model.config.pad_token_id
        self.start_token_id = model.generation_config.decoder_start_token_id
        weight = self.decoder.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.texts: list[_Text] = []
        self.jobs: dict[int, _Job] = {}
        self._plans: dict[int, tuple[LogitsProcessorList, StoppingCriteriaList] | None] = {}
        self._allocate(slots, 2, 1)

    # Preallocated state: row r of every tensor belongs to self.texts[r]; rows past len(self.texts) are free.
    def _allocate(self, slots: int, length: int, source_length: int) -> None:
        """(Re)allocate room for `slots` rows of `length` tokens and `source_length` source tokens, keeping the
        running rows."""
        shape = (slots, self.heads, length, self.head_dim)
        cross_shape = (slots, self.heads, source_length, self.head_dim)
        new = {
            "keys": [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
            "values": [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
            "cross_keys": [
                torch.zeros(cross_shape, dtype=self.dtype, device=self.device) for _ in self.layers
            ],
            "cross_values": [
                torch.zeros(cross_shape, dtype=self.dtype, device=self.device) for _ in self.layers
            ],
        }
        ids = torch.full((slots, length), self.pad_token_id, dtype=torch.long, device=self.device)
        source_mask = torch.zeros((slots, source_length), dtype=torch.bool, device=self.device)
        lengths = torch.zeros(slots, dtype=torch.long, device=self.device)
        n = len(self.texts)
        if n:
            old_length, old_source = self.ids.shape[1], self.source_mask.shape[1]
            for name, tensors in new.items():
                source = old_length if name in ("keys", "values") else old_source
                for target, old in zip(tensors, getattr(self, name), strict=True):
                    target[:n, :, :source] = old[:n]
            ids[:n, :old_length] = self.ids[:n]
            source_mask[:n, :old_source] = self.source_mask[:n]
            lengths[:n] = self.lengths[:n]
        self.keys, self.values = new["keys"], new["values"]
        self.cross_keys, self.cross_values = new["cross_keys"], new["cross_values"]
        self.ids, self.source_mask, self.lengths = ids, source_mask, lengths

    def _ensure_room(self, rows: int, length: int, source_length: int) -> None:
        slots, have_length = self.ids.shape
        have_source = self.source_mask.shape[1]
        if rows <= slots and length <= have_length and source_length <= have_source:
            return
        self._allocate(
            max(rows, slots * 2) if rows > slots else slots,
            max(length, have_length),
            max(source_length, have_source),
        )

    @property
    def running(self) -> int:
        return len(self.texts)

    @torch.inference_mode()
    def join(self, works: list[Work]) -> None:
        # All joining texts go through the encoder in one call (`_encode`): each text's positions and masked
        # attention are what a one-text `generate` sees, so only the rounding of the batched matrix products
        # differs, as in any batched decode (encoding texts one by one cost as much as the whole decode of a
        # short text on a mid-sized model).
        texts = [(work, index, text) for work in works for index, text in enumerate(work.payload.texts)]
        source_ids = [ids for work in works for ids in work.payload.source_ids]
        inputs = encoder_inputs(self.tokenizer, [text for _, _, text in texts], source_ids).to(self.device)
        lengths = inputs["attention_mask"].sum(1).tolist()
        plans = [
            self._plan(
                work.payload.options.max_new_tokens, inputs["input_ids"][position : position + 1, :length]
            )
            for position, ((work, _, _), length) in enumerate(zip(texts, lengths, strict=True))
        ]
        if any(plan is None for plan in plans):
            raise ValueError("the model's generation config does not decode greedily")
        cross = self._encode(inputs["input_ids"], inputs["attention_mask"])
        # Everything that can fail has run: the rows go in together, after the running ones (one slice per
        # tensor for all of them; a row's source positions past its own length are masked in attention).
        first, count = len(self.texts), len(texts)
        source_length = max(lengths)
        longest = max(work.payload.options.max_new_tokens for work in works)
        self._ensure_room(first + count, longest + 1, source_length)
        for work in works:
            self.jobs[id(work)] = _Job(
                results=[None] * len(work.payload.texts), running=len(work.payload.texts)
            )
        joined = slice(first, first + count)
        for i, (keys, values) in enumerate(cross):
            self.cross_keys[i][joined, :, :source_length] = keys
            self.cross_keys[i][joined, :, source_length:] = 0
            self.cross_values[i][joined, :, :source_length] = values
            self.cross_values[i][joined, :, source_length:] = 0
        self.source_mask[joined] = False
        self.source_mask[joined, :source_length] = inputs["attention_mask"].bool()
        self.ids[joined] = self.pad_token_id
        self.ids[joined, 0] = self.start_token_id
        self.lengths[joined] = 1
        for (work, index, _), (processors, criteria) in zip(texts, plans, strict=True):
            self.texts.append(_Text(work, index, processors, criteria))

    def _plan(self, max_new_tokens: int, source_ids: torch.LongTensor):
        """`greedy_plan` for a text; shared by texts of the same length limit unless the model's generation
        config has processors that read the source."""
        config = self.model.generation_config
        if config.encoder_no_repeat_ngram_size or config.encoder_repetition_penalty not in (None, 1.0):
            return greedy_plan(self.model, max_new_tokens, source_ids)
        if max_new_tokens not in self._plans:
            self._plans[max_new_tokens] = greedy_plan(self.model, max_new_tokens)
        return self._plans[max_new_tokens]

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values (texts x heads x source x head_dim) for a
        right-padded batch: FSMT's encoder (post-norm layers, attention as its own: masked_fill with the
        dtype's minimum, softmax) as plain tensor code whose linear layers run on the real tokens only,
        packed, so that a short text costs its own length, not the longest's (bench_peers' mixed sentences,
        6 or 16 joining at once: 1.4 ms a text, 1.8-2.1 ms through the model's padded encoder)."""
        encoder = self.encoder
        real = attention_mask.bool()
        count, length = input_ids.shape
        hidden = encoder.embed_tokens(input_ids) * encoder.embed_scale + encoder.embed_positions(input_ids)
        hidden = hidden[real]  # real tokens x d
        padding = ~real.view(count, 1, 1, length)
        for layer, calls in zip(encoder.layers, self.encoder_calls, strict=True):
            attention = layer.self_attn
            heads = attention.num_heads  # the encoder's own, which may differ from the decoder's
            query = self._unpack(calls.q_proj(hidden) * attention.scaling, real, heads)
            keys = self._unpack(calls.k_proj(hidden), real, heads)
            values = self._unpack(calls.v_proj(hidden), real, heads)
            out = self._attend(query, keys, values, padding).transpose(1, 2).reshape(count, length, -1)[real]
            hidden = calls.self_attn_layer_norm(hidden + calls.out_proj(out))
            hidden = calls.final_layer_norm(hidden + calls.fc2(layer.activation_fn(calls.fc1(hidden))))
        return [
            (
                self._unpack(calls.cross_k_proj(hidden), real, self.heads),
                self._unpack(calls.cross_v_proj(hidden), real, self.heads),
            )
            for calls in self.layer_calls
        ]

    @staticmethod
    def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """FSMT's own attention on scaled queries: the masked positions' scores set to the dtype's minimum before
        the softmax (weight 0)."""
        scores = torch.matmul(query, keys.transpose(-1, -2)).masked_fill_(masked, torch.finfo(query.dtype).min)
        return torch.matmul(scores.softmax(-1), values)

    @staticmethod
    def _unpack(packed: torch.Tensor, real: torch.Tensor, heads: int) -> torch.Tensor:
        """Packed real tokens x d back to texts x heads x source x head_dim (zeros at the padding)."""
        padded = packed.new_zeros(*real.shape, packed.shape[-1])
        padded[real] = packed
        return padded.view(*real.shape, heads, -1).transpose(1, 2)

    @staticmethod
    def _rows(rows: list[int]) -> slice | list[int]:
        """Index for a set of rows: a slice (a view, no copy) when they are consecutive."""
        if rows[-1] - rows[0] + 1 == len(rows):
            return slice(rows[0], rows[-1] + 1)
        return rows

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

    def _remove_row(self, row: int) -> None:
        """Free a row: the last running row moves into it."""
        last = len(self.texts) - 1
        if row != last:
            for tensors in (self.keys, self.values, self.cross_keys, self.cross_values):
                for tensor in tensors:
                    tensor[row] = tensor[last]
            for tensor in (self.ids, self.source_mask, self.lengths):
                tensor[row] = tensor[last]
            self.texts[row] = self.texts[last]
        self.texts.pop()

    @torch.inference_mode()  # the rows are inference tensors: moving one outside it raises
    def leave(self, work: Work) -> None:
        self.jobs.pop(id(work), None)
        for row in reversed(range(len(self.texts))):
            if self.texts[row].work is work:
                self._remove_row(row)

    @torch.inference_mode()
    def _logits(self) -> torch.Tensor:
        """Feed every running row's newest token; float32 logits for its next one (rows x vocabulary)."""
        n = len(self.texts)
        rows = torch.arange(n, device=self.device)
        lengths = self.lengths[:n]
        positions = lengths - 1  # where the newest token's keys and values go
        tokens = self.ids[rows, positions]
        decoder = self.decoder
        # FSMT's positions count from padding_idx + 1 and leave a padding token at padding_idx.
        position_ids = positions + self.padding_idx + tokens.ne(self.padding_idx).long()
        weights = decoder.embed_positions.weight
        if int(position_ids.max()) >= weights.shape[0]:
            decoder.embed_positions.make_weight(int(position_ids.max()) + 1, self.embed_dim, self.padding_idx)
        hidden = decoder.embed_tokens(tokens) * decoder.embed_scale
        hidden += F.embedding(position_ids, decoder.embed_positions.weight)
        hidden = hidden.unsqueeze(1)  # rows x 1 x d
        length = int(lengths.max())
        self_mask = (torch.arange(length, device=self.device) < lengths.unsqueeze(1)).view(n, 1, 1, length)
        source_length = int(self.source_mask[:n].sum(1).max())
        cross_mask = self.source_mask[:n, :source_length].view(n, 1, 1, source_length)
        for i, (layer, calls) in enumerate(zip(self.layers, self.layer_calls, strict=True)):
            query = self._split_heads(calls.q_proj(hidden) * layer.self_attn.scaling)
            self.keys[i][rows, :, positions] = calls.k_proj(hidden).view(n, self.heads, self.head_dim)
            self.values[i][rows, :, positions] = calls.v_proj(hidden).view(n, self.heads, self.head_dim)
            out = F.scaled_dot_product_attention(
                query,
                self.keys[i][:n, :, :length],
                self.values[i][:n, :, :length],
                attn_mask=self_mask,
                scale=1.0,
            )
            hidden = calls.self_attn_layer_norm(hidden + calls.out_proj(out.transpose(1, 2).reshape(n, 1, -1)))
            query = self._split_heads(calls.cross_q_proj(hidden) * layer.encoder_attn.scaling)
            out = F.scaled_dot_product_attention(
                query,
                self.cross_keys[i][:n, :, :source_length],
                self.cross_values[i][:n, :, :source_length],
                attn_mask=cross_mask,
                scale=1.0,
            )
            hidden = calls.encoder_attn_layer_norm(
                hidden + calls.cross_out_proj(out.transpose(1, 2).reshape(n, 1, -1))
            )
            hidden = calls.final_layer_norm(hidden + calls.fc2(layer.activation_fn(calls.fc1(hidden))))
        return decoder.output_projection(hidden[:, 0]).float()

    @torch.inference_mode()
    def step(self) -> list[tuple[Work, list[list[str]]]]:
        if not self.texts:
            return []
        logits = self._logits()
        n = len(self.texts)
        lengths = self.lengths[:n].tolist()
        # Rows of one plan at one length (texts that joined together) go through the logits processors and
        # stopping criteria at once, as the rows of one `generate` batch do: what those compute for a row
        # depends on its own ids and the common length only.
        cohorts: dict[tuple[int, int], list[int]] = {}
        for row, text in enumerate(self.texts):
            cohorts.setdefault((id(text.processors), lengths[row]), []).append(row)
        finished_rows = []
        for (_, length), cohort_rows in cohorts.items():
            rows = self._rows(cohort_rows)
            text = self.texts[cohort_rows[0]]
            scores = logits[rows]
            # What LogitsProcessorList.__call__ does without extra arguments, minus its per-call
            # inspect.signature (0.1 ms a processor, more than a tiny model's whole step per row).
            for processor in text.processors:
                scores = processor(self.ids[rows, :length], scores)
            self.ids[rows, length] = scores.argmax(-1)
            done = text.criteria(self.ids[rows, : length + 1], scores).tolist()
            finished_rows.extend(row for row, row_done in zip(cohort_rows, done, strict=True) if row_done)
        self.lengths[:n] += 1
        finished: list[tuple[Work, list[list[str]]]] = []
        for row in sorted(finished_rows, reverse=True):
            text = self.texts[row]
            job = self.jobs.get(id(text.work))
            tokens = self.ids[row, : lengths[row] + 1].tolist()
            self._remove_row(row)
            if job is None:
                continue
            job.results[text.index] = [self.tokenizer.decode(tokens, skip_special_tokens=True)]
            job.running -= 1
            if job.running == 0:
                del self.jobs[id(text.work)]
                finished.append((text.work, job.results))
        return finished
