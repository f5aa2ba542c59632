"""Iteration-level (continuous) greedy decoding for FSMT: texts join a running decode at the next step and leave
the step they finish, each with its own cache slot.

`GreedyLoop` is the translation runner's `DecodeLoop`. Each joining text is encoded alone (exactly as
`generate` encodes a one-text request), its cross-attention keys and values go into a free slot, and from then
on every `step` feeds all running texts' newest tokens through the decoder at once: the model's own modules
called as plain tensor code (FSMT's post-norm layers, scaled token embeddings plus sinusoidal positions), each
text attending to its own keys and values (masked to its own length). The logits processors and stopping
criteria are transformers' own, built per text by generate's own helpers for that text's `max_new_tokens`
(forced EOS at the last position, min length, bad words, n-gram bans: whatever the model's generation config
asks for), so each text stops exactly where `generate` would.

Tokens equal those of translating the text alone. The floats do not match bit for bit: a linear layer over
several rows takes another kernel than over one (rounding in the last bits, about 1e-6 relative), as happens
in a whole-request batch too; a token could differ only where two logits tie to that precision.
"""

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
        # All joining texts go through the encoder in one call, padded to the longest: each text's positions
        # and masked attention are what a one-text `generate` sees, so only the rounding of the batched
        # matrix products differs, as in any batched decode (encoding texts one by one cost as much as the
        # whole decode of a short text on a mid-sized model).
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
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])[0]
        cross = [
            (
                self._split_heads(layer.encoder_attn.k_proj(hidden)),
                self._split_heads(layer.encoder_attn.v_proj(hidden)),
            )
            for layer in self.layers
        ]
        # Everything that can fail has run: the rows go in together.
        rows = len(self.texts) + len(texts)
        source_length = max(lengths)
        longest = max(work.payload.options.max_new_tokens for work in works)
        self._ensure_room(rows, longest + 1, source_length)
        for work in works:
            self.jobs[id(work)] = _Job(
                results=[None] * len(work.payload.texts), running=len(work.payload.texts)
            )
        for position, (work, index, _) in enumerate(texts):
            processors, criteria = plans[position]
            length = lengths[position]
            row = len(self.texts)
            for i, (keys, values) in enumerate(cross):
                self.cross_keys[i][row].zero_()
                self.cross_values[i][row].zero_()
                self.cross_keys[i][row, :, :length] = keys[position, :, :length]
                self.cross_values[i][row, :, :length] = values[position, :, :length]
            self.source_mask[row] = False
            self.source_mask[row, :length] = True
            self.ids[row] = self.pad_token_id
            self.ids[row, 0] = self.start_token_id
            self.lengths[row] = 1
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
        for i, layer in enumerate(self.layers):
            attention = layer.self_attn
            query = self._split_heads(attention.q_proj(hidden) * attention.scaling)
            self.keys[i][rows, :, positions] = attention.k_proj(hidden).view(n, self.heads, self.head_dim)
            self.values[i][rows, :, positions] = attention.v_proj(hidden).view(n, self.heads, self.head_dim)
            out = F.scaled_dot_product_attention(
                query,
                self.keys[i][:n, :, :length],
                self.values[i][:n, :, :length],
                attn_mask=self_mask,
                scale=1.0,
            )
            hidden = layer.self_attn_layer_norm(
                hidden + attention.out_proj(out.transpose(1, 2).reshape(n, 1, -1))
            )
            cross = layer.encoder_attn
            query = self._split_heads(cross.q_proj(hidden) * cross.scaling)
            out = F.scaled_dot_product_attention(
                query,
                self.cross_keys[i][:n, :, :source_length],
                self.cross_values[i][:n, :, :source_length],
                attn_mask=cross_mask,
                scale=1.0,
            )
            hidden = layer.encoder_attn_layer_norm(
                hidden + cross.out_proj(out.transpose(1, 2).reshape(n, 1, -1))
            )
            hidden = layer.final_layer_norm(hidden + layer.fc2(layer.activation_fn(layer.fc1(hidden))))
        return decoder.output_projection(hidden[:, 0]).float()

    @torch.inference_mode()
    def step(self) -> list[tuple[Work, list[list[str]]]]:
        if not self.texts:
            return []
        logits = self._logits()
        n = len(self.texts)
        lengths = self.lengths[:n].tolist()
        scores = []
        for row, text in enumerate(self.texts):
            row_scores = logits[row : row + 1]
            # What LogitsProcessorList.__call__ does without extra arguments, minus its per-call
            # inspect.signature (0.1 ms a processor, more than a tiny model's whole step per row).
            for processor in text.processors:
                row_scores = processor(self.ids[row : row + 1, : lengths[row]], row_scores)
            scores.append(row_scores)
        next_tokens = torch.cat(scores).argmax(-1)
        rows = torch.arange(n, device=self.device)
        self.ids[rows, self.lengths[:n]] = next_tokens
        self.lengths[:n] += 1
        finished_rows = [
            row
            for row, text in enumerate(self.texts)
            if bool(text.criteria(self.ids[row : row + 1, : lengths[row] + 1], scores[row]).any())
        ]
        finished: list[tuple[Work, list[list[str]]]] = []
        for row in reversed(finished_rows):
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
