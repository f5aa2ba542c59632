"""FSMT model runner: load one model per language pair, translate a batch of texts. No web code."""

import functools
import logging
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import FSMTForConditionalGeneration, FSMTTokenizer

from services.kit.batcher import Work
from services.kit.errors import NotFound
from services.kit.quantize import quantize_linears, resolve_quantization
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, resolve_source

from .decoding import GreedyLoop, encoder_inputs, greedy_plan
from .settings import QUANTIZE_AUTO_INT8, TranslationSettings

log = logging.getLogger(__name__)

# Source tokens at which attention over the source doubles the cost of a token: the encoder's self-attention and
# every decoded beam-token's cross-attention grow with the source length (fitted on the tiny FSMT with
# bench/bench_costs.py; a full-size model's wider layers make the linear part weigh more, so it errs high there).
SOURCE_ATTENTION_TOKENS = 1024


def column_major_linears(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """Store the plain linear layers' weights column-major (the same values, laid out as weight.T contiguous),
    on a CPU in float32; returns how many. `F.linear` then hands the CPU's matrix library `x @ weight.T` with a
    contiguous right-hand side, which it multiplies without re-packing: 1.1-2.3x faster for the 5-64 rows of
    a decoding step (one token per text or beam) on 1 thread, about even from 256 rows (an encoder's batch)
    and 6-15 % slower for exactly 2, measured on bench_peers' FSMT shapes and wmt19's (1024 x 4096); a
    decoding step of 16 rows took 2.4 ms instead of 3.1. Results agree to about 1e-6 (the order of the float
    sums), as any batch does. Weights an embedding shares (tied) keep their rows."""
    if device.type != "cpu" or dtype != torch.float32:
        return 0
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and id(module.weight) not in embeddings:
            weight = module.weight
            module.weight = torch.nn.Parameter(weight.detach().t().contiguous().t(), weight.requires_grad)
            switched += 1
    return switched


@dataclass(frozen=True)
class GenerationOptions:
    """Beam-search settings; requests batch together only when these (and the pair) match."""

    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | None = None
    num_return_sequences: int = 1
    max_new_tokens: int = 200

    def generate_kwargs(self) -> dict:
        kwargs = {"num_return_sequences": self.num_return_sequences, "max_new_tokens": self.max_new_tokens}
        for name in ("num_beams", "length_penalty", "early_stopping"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


@dataclass(frozen=True)
class TranslationJob:
    pair: str
    texts: tuple[str, ...]
    options: GenerationOptions
    # Each text's source tokens (end-of-sentence token included), as the model's tokenizer makes them.
    source_tokens: tuple[int, ...] = ()
    # Those tokens' ids, made once when the request is checked (tokenizing is most of a short request's CPU);
    # empty: the runner tokenizes the texts itself.
    source_ids: tuple[tuple[int, ...], ...] = ()

    @property
    def batch_key(self) -> tuple:
        """Greedy requests (num_beams=1) of a pair share a key whatever their max_new_tokens: a continuous decode
        loop mixes lengths. Beam search batches only identical options (one generate call each)."""
        options = self.options
        if options.num_beams == 1 and options.num_return_sequences == 1:
            return (self.pair, replace(options, max_new_tokens=None))
        return (self.pair, options)


class TranslationRunner:
    def __init__(self, settings: TranslationSettings):
        self.settings = settings
        self.runtime: TorchRuntime | None = None
        self.models: dict[str, FSMTForConditionalGeneration] = {}
        self.tokenizers: dict[str, FSMTTokenizer] = {}
        self.quantization = "none"  # "int8" once load() quantized the models (CPU only)

    def load(self) -> None:
        s = self.settings
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        self.quantization = resolve_quantization(s.quantize, self.runtime.device, QUANTIZE_AUTO_INT8)
        for pair, model_id in s.models.items():
            source = resolve_source(model_id)
            self.tokenizers[pair] = FSMTTokenizer.from_pretrained(source)
            model = self.runtime.load(FSMTForConditionalGeneration, source)
            if self.quantization == "int8":
                quantize_linears(model)  # before FewRowLinear, which stays float
            model = self.runtime.tune_for_decoding(model)
            if self.runtime.few_row_linears and self.quantization == "none":
                column_major_linears(model, self.runtime.device, self.runtime.dtype)
            # Every call gives max_new_tokens (the service's length limit); the checkpoint's max_length would be a
            # second, conflicting limit that generate() warns about on every request.
            model.generation_config.max_length = None
            self.models[pair] = model
            log.info("loaded %s from %s", pair, source)

    def warmup(self) -> None:
        for pair in self.models:
            self.translate(pair, ["Hello world."], GenerationOptions(max_new_tokens=8))

    @functools.cache  # noqa: B019 - one runner per service, a few pairs: asked on every response, a stat call
    def model_name(self, pair: str) -> str:
        model_id = self.settings.models[pair]
        return Path(model_id).name if Path(model_id).is_dir() else model_id

    def model_infos(self) -> list[dict]:
        """One entry per configured pair, for GET /v1/models and gRPC ListModels."""
        return [
            {
                "id": self.model_name(pair),
                "source_lang": pair.split("-")[0],
                "target_lang": pair.split("-")[1],
            }
            for pair in self.settings.models
        ]

    def ensure_pair(self, pair: str) -> None:
        if pair not in self.settings.models:
            known = ", ".join(sorted(self.settings.models))
            raise NotFound(
                f"source_lang/target_lang: no model for the pair {pair!r}; available pairs: {known}",
                field="target_lang",
            )

    def source_ids(self, pair: str, texts: list[str]) -> list[list[int]]:
        """Each text's source token ids as `translate` feeds them to the encoder (end-of-sentence token included)."""
        return self.tokenizers[pair](texts)["input_ids"]

    def max_source_tokens(self, pair: str) -> int:
        """The most source tokens a text may have: the positions the model was trained on (FSMT's sinusoidal table
        would stretch past them, into positions the model never saw, with attention growing quadratically)."""
        return self.models[pair].config.max_position_embeddings

    def cost(self, job: TranslationJob) -> float:
        """The job's work in beam-tokens: per text, (source tokens + beams x return sequences x max_new_tokens)
        x (1 + source tokens / SOURCE_ATTENTION_TOKENS), the model's own beam count when the request sets none.
        The source tokens are the encoder's work; the factor is attention over the source (the encoder's own and
        each decoded token's cross-attention, whose keys and values every beam holds in memory)."""
        options = job.options
        beams = options.num_beams or self.models[job.pair].generation_config.num_beams or 1
        decoded = beams * options.num_return_sequences * options.max_new_tokens
        return sum(
            (source + decoded) * (1 + source / SOURCE_ATTENTION_TOKENS) for source in job.source_tokens
        )

    @torch.inference_mode()
    def translate(
        self,
        pair: str,
        texts: list[str],
        options: GenerationOptions,
        stop: StopWhenCancelled | None = None,
        source_ids: list[tuple[int, ...]] | None = None,
    ) -> list[list[str]]:
        """num_return_sequences hypotheses per text, best first; `stop` ends decoding early once nobody waits."""
        tokenizer, model = self.tokenizers[pair], self.models[pair]
        inputs = encoder_inputs(tokenizer, texts, source_ids).to(self.runtime.device)
        output = model.generate(**inputs, **options.generate_kwargs(), stopping_criteria=[stop] if stop else None)
        decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
        n = options.num_return_sequences
        return [decoded[i * n : (i + 1) * n] for i in range(len(texts))]

    def predict_batch(self, works: list[Work]) -> list[list[list[str]]]:
        """All works share the pair (the batch key): one generate call per distinct options (greedy requests of
        one key may differ in max_new_tokens) for all their texts."""
        groups: dict[GenerationOptions, list[int]] = {}
        for i, work in enumerate(works):
            groups.setdefault(work.payload.options, []).append(i)
        results: list[list[list[str]]] = [[] for _ in works]
        for options, indices in groups.items():
            group = [works[i] for i in indices]
            texts = [text for work in group for text in work.payload.texts]
            ids = [text_ids for work in group for text_ids in work.payload.source_ids]
            hypotheses = self.translate(group[0].payload.pair, texts, options, StopWhenCancelled(group), ids)
            offset = 0
            for i in indices:
                count = len(works[i].payload.texts)
                results[i] = hypotheses[offset : offset + count]
                offset += count
        return results

    def batch_key(self, job: TranslationJob) -> tuple:
        """The job's batch key; with continuous batching off, greedy requests batch only with identical options
        too, so that a whole-request batch is one generate call and no request waits for another's length."""
        return job.batch_key if self.settings.continuous_batching else (job.pair, job.options)

    # Continuous batching (services.kit.continuous.StepDecoder): greedy requests decode step by step.
    def open_loop(self, key: Hashable, payload: TranslationJob, waiting: int = 1) -> GreedyLoop | None:
        """A decode loop for greedy requests of the payload's pair; None for beam search (and when continuous
        batching is off or the model's generation config samples): those run whole-request."""
        if not self.settings.continuous_batching:
            return None
        options, model = payload.options, self.models[payload.pair]
        beams = options.num_beams or model.generation_config.num_beams or 1
        if beams != 1 or options.num_return_sequences != 1:
            return None
        if greedy_plan(model, options.max_new_tokens) is None:
            return None
        return GreedyLoop(model, self.tokenizers[payload.pair])

    def rows(self, payload: TranslationJob) -> int:
        return len(payload.texts)
