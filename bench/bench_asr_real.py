"""Assisted decoding on real whisper-base weights (`make real-asr`): does a cheap draft make it pay on CPU?

    python bench/bench_asr_real.py [--reps 2] [--threads 2] [--num-tokens 6] [--vocab-sizes 16384]
                                   [--confidence 0.5] [--precision int8] [--full-head-loop] [--server]

1. Per-token cost: a cached one-token step of the main decoder, of the 2-layer assistant with its full
   51,865-row head and with the restricted head, and the main model verifying k tokens in one pass; with
   torch's stock linear kernels and with the kit's `FewRowLinear` (what the service runs on CPU).
2. Batch 1 over the 30 held-out English clips, greedy: plain decoding with stock and with few-row kernels;
   assisted with the full head and transformers' default candidate generator (an inner `generate()` per
   round, stock kernels: what transformers does out of the box); assisted with the restricted head and
   `services.asr.drafting`'s draft loop, with both kernels. Speed-ups are given against plain decoding with
   stock kernels (transformers as shipped) and against plain decoding with few-row kernels (the service's own
   plain path, the stricter baseline). The decoding phase is timed apart from the encoder: each clip is
   encoded once per repetition (timed) and every variant decodes from those `encoder_outputs`; end to end =
   encoder + decoding. Variants run interleaved clip by clip, in rotating order; times are medians over
   repetitions. Also: main-decoder passes, drafted/accepted tokens, and whether every clip's token ids equal
   plain (stock) decoding's.

3. With `--server --skip-batch1`: through the real server (the service's settings), throughput and p95 latency
   at concurrency 1/4/8/16 for always-assisted, never-assisted and adaptive requests (bench/bench_asr.py's load
   generator: the three modes in rotating order per level). Run it alone in its process: torch work in the main
   thread first would leave a second OpenMP pool beside the server's model thread and slow it (see the kit's
   `Service.model_thread`).

Comma-separated `--num-tokens`, `--vocab-sizes`, `--confidence`, `--precision` compare several draft settings in
one run. Default run (batch 1 part): about 3 minutes on 2 free cores. On a busy shared machine two OpenMP
threads spend their time waiting for each other: use `--threads 1` there. Timings are noisy: compare ratios
within one run.
"""

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
import transformers
from transformers import AutoModelForCausalLM, WhisperProcessor
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation import candidate_generator as hf_candidates
from transformers.modeling_outputs import BaseModelOutput

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

transformers.logging.set_verbosity_error()  # the transformers loop warns about max_new_tokens every round

from services.asr.drafting import (  # noqa: E402
    DraftConfig,
    Drafter,
    DraftSteps,
    WhisperWithDraftLoop,
    cross_attention_kv,
)
from services.asr.service import create_service  # noqa: E402
from services.asr.settings import ASRSettings  # noqa: E402
from services.kit.testing import ServerThread  # noqa: E402
from services.kit.torch_models import use_few_row_linears  # noqa: E402

REAL = REPO / "models" / "real"


@dataclass
class Tally:
    drafted: int = 0
    accepted: int = 0


HF_TALLY = Tally()
_hf_update = hf_candidates.AssistedCandidateGenerator.update_candidate_strategy


def _counting_update(self, input_ids, scores, num_matches):
    HF_TALLY.drafted += scores.shape[1] - 1
    HF_TALLY.accepted += int(num_matches)
    return _hf_update(self, input_ids, scores, num_matches)


# Counts what transformers' default generator drafts and the main model accepts (benchmark only).
hf_candidates.AssistedCandidateGenerator.update_candidate_strategy = _counting_update


@dataclass
class Variant:
    name: str
    drafter: Drafter | None = None  # the draft loop's drafter; None with assisted=True = transformers' loop
    assisted: bool = False
    few_row: bool = False  # FewRowLinear kernels instead of torch's stock nn.Linear
    times: list[float] = field(default_factory=list)  # decoding seconds per repetition
    outputs: list[list[int]] = field(default_factory=list)
    main_passes: int = 0
    drafted: int = 0
    accepted: int = 0


def set_kernels(modules: list[torch.nn.Module], few_row: bool) -> None:
    """Switch every linear layer in `modules` between torch's stock kernel and `FewRowLinear`."""
    for module in modules:
        use_few_row_linears(module, enabled=few_row)


def load_clips(speech: Path, processor, lang: str = "en", limit: int | None = None):
    clips = []
    for line in (speech / "refs.tsv").read_text(encoding="utf-8").splitlines():
        clip_id, clip_lang, _voice, _text = line.split("\t")
        if clip_lang == lang:
            audio, rate = sf.read(speech / f"{clip_id}.wav", dtype="float32")
            clips.append(processor(audio, sampling_rate=rate, return_tensors="pt").input_features)
    return clips[:limit]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def per_token_costs(
    main, assistant, drafters: dict[str, Drafter], encoder_hidden, repeats: int
) -> list[tuple]:
    """Median ms of cached decoder steps after a 12-token context, interleaved across what is measured."""
    context = torch.tensor([[50258, 50259, 50359, 50363] + [440] * 8])
    token = torch.tensor([[440]])

    def cached(decoder):
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        decoder(input_ids=context, encoder_hidden_states=encoder_hidden, cache=cache, use_cache=True)
        return cache

    def step(decoder, head, cache, ids):
        def run():
            hidden = decoder(input_ids=ids, encoder_hidden_states=encoder_hidden, cache=cache, use_cache=True)
            head(hidden.last_hidden_state[:, -1:]).argmax(-1)
            cache.crop(-ids.shape[1])

        return run

    main_cache, assistant_cache = cached(main.model.decoder), cached(assistant.model.decoder)

    def draft_step(drafter: Drafter):
        """A step of the draft loop's own decoder code (`DraftSteps`), after the same context."""
        cross = [cross_attention_kv(layer.encoder_attn, encoder_hidden) for layer in drafter.decoder.layers]
        steps = DraftSteps(drafter.decoder, cross, 448)
        steps(context)

        def run():
            drafter.logits(steps(token)).argmax(-1)
            steps.crop(steps.length - 1)

        return run

    steps = {"main decoder, 1 token (full head)": step(main.model.decoder, main.proj_out, main_cache, token)}
    for k in (2, 4, 6, 8):
        ids = torch.full((1, k), 440)
        steps[f"main decoder, verify {k} tokens"] = step(
            main.model.decoder, lambda h: main.proj_out(h), main_cache, ids
        )
    steps["assistant, 1 token, full head (51,865 rows)"] = step(
        assistant.model.decoder, assistant.proj_out, assistant_cache, token
    )
    steps["assistant, 1 token, no head (decoder layers only)"] = step(
        assistant.model.decoder, lambda h: h, assistant_cache, token
    )
    for name, drafter in drafters.items():
        steps[f"draft step: {name}"] = draft_step(drafter)
    modules = [main, assistant] + [d.head for d in drafters.values()]
    samples = {(name, few_row): [] for name in steps for few_row in (False, True)}
    for _ in range(repeats):
        for few_row in (False, True):
            set_kernels(modules, few_row)
            for name, run in steps.items():
                samples[name, few_row].append(median_ms(run, 1))
    set_kernels(modules, False)
    main_step = statistics.median(samples["main decoder, 1 token (full head)", False])
    return [
        (name, *(statistics.median(samples[name, few_row]) for few_row in (False, True)), main_step)
        for name in steps
    ]


def run_batch1(main, assistant, variants: list[Variant], clips, reps: int) -> list[float]:
    """Decode every clip with every variant, interleaved; returns encoder seconds per repetition."""
    counter = {"passes": 0}
    hook = main.model.decoder.register_forward_hook(
        lambda *_: counter.__setitem__("passes", counter["passes"] + 1)
    )
    kernel_modules = [main, assistant] + [v.drafter.head for v in variants if v.drafter]
    encoder_times = []
    order = itertools.cycle(range(len(variants)))
    try:
        for rep in range(reps):
            for variant in variants:
                variant.times.append(0.0)
            encoder_total = 0.0
            for features in clips:
                started = time.perf_counter()
                hidden = main.model.encoder(features).last_hidden_state
                encoder_total += time.perf_counter() - started
                first = next(order)
                for variant in variants[first:] + variants[:first]:
                    main.drafter = variant.drafter
                    set_kernels(kernel_modules, variant.few_row)
                    kwargs = {"assistant_model": assistant} if variant.assisted else {}
                    passes, hf = counter["passes"], (HF_TALLY.drafted, HF_TALLY.accepted)
                    drafts = variant.drafter.counters() if variant.drafter else (0, 0, 0)
                    started = time.perf_counter()
                    ids = main.generate(
                        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                        language="en",
                        task="transcribe",
                        **kwargs,
                    )[0].tolist()
                    variant.times[-1] += time.perf_counter() - started
                    if rep == 0:
                        variant.outputs.append(ids)
                        variant.main_passes += counter["passes"] - passes
                        if variant.drafter:
                            now = variant.drafter.counters()
                            variant.drafted += now[0] - drafts[0]
                            variant.accepted += now[1] - drafts[1]
                        elif variant.assisted:
                            variant.drafted += HF_TALLY.drafted - hf[0]
                            variant.accepted += HF_TALLY.accepted - hf[1]
            encoder_times.append(encoder_total)
            print(
                f"  repetition {rep + 1}/{reps}: encoder {encoder_total:.1f} s, "
                + ", ".join(f"{v.name} {v.times[-1]:.1f} s" for v in variants),
                file=sys.stderr,
                flush=True,
            )
    finally:
        hook.remove()
        main.drafter = None
        set_kernels(kernel_modules, False)
    return encoder_times


def batch1(args: argparse.Namespace) -> None:
    processor = WhisperProcessor.from_pretrained(args.models / "whisper-base")
    main_model = WhisperWithDraftLoop.from_pretrained(
        args.models / "whisper-base", dtype=torch.float32
    ).eval()
    assistant = AutoModelForCausalLM.from_pretrained(
        args.models / "whisper-base-assistant-2l", dtype=torch.float32
    ).eval()
    clips = load_clips(args.models / "speech", processor, limit=args.clips)
    num_tokens = [int(n) for n in args.num_tokens.split(",")]
    sizes = [int(n) for n in args.vocab_sizes.split(",")]
    precisions = args.precision.split(",")
    thresholds = [None if c == "none" else float(c) for c in args.confidence.split(",")]

    def drafter(size: int, n: int, precision: str, threshold: float | None = None) -> Drafter:
        config = DraftConfig(
            num_tokens=n,
            vocab_size=size,
            schedule=args.schedule,
            counts_file=args.counts_file,
            quantize=precision == "int8",
            confidence_threshold=threshold,
        )
        return Drafter.build(main_model, assistant, processor.tokenizer, config)

    def head(size: int) -> str:
        return f"{size:,}-row head" if size else "full head"

    variants = [
        Variant("plain, stock kernels"),
        Variant("plain, few-row kernels", few_row=True),
        Variant("assisted, full head, transformers loop, stock kernels", assisted=True),
    ]
    for p in precisions:
        for size in ([0] if args.full_head_loop else []) + sizes:
            for n in num_tokens:
                for c in thresholds:
                    draft = drafter(size, n, p, c)
                    settings = f"{p} draft, {head(size)}, draft loop k={n}" + (
                        f", confidence {c}" if c is not None else ""
                    )
                    variants += [
                        Variant(f"assisted, {settings}, {kernels} kernels", draft, True, few_row)
                        for few_row, kernels in ((False, "stock"), (True, "few-row"))
                        if few_row or args.stock_draft_loop
                    ]
    print(
        f"# whisper-base on {len(clips)} English clips, batch 1, greedy, fp32, {args.threads} threads; "
        f"transformers loop: the assistant's generation config (num_assistant_tokens="
        f"{assistant.generation_config.num_assistant_tokens}, "
        f"{assistant.generation_config.num_assistant_tokens_schedule}); draft loop schedule {args.schedule}\n"
    )

    with torch.inference_mode():
        for variant in variants:  # warm-up
            main_model.drafter = variant.drafter
            set_kernels(
                [main_model, assistant] + ([variant.drafter.head] if variant.drafter else []), variant.few_row
            )
            kwargs = {"assistant_model": assistant} if variant.assisted else {}
            main_model.generate(clips[0], language="en", task="transcribe", **kwargs)
        main_model.drafter = None
        set_kernels([main_model, assistant] + [v.drafter.head for v in variants if v.drafter], False)
        encoder_hidden = main_model.model.encoder(clips[0]).last_hidden_state
        setup_ms = cross_attention_setup_ms(main_model, encoder_hidden, args.cost_repeats // 4 + 1)
        cost_drafters = {f"{p} draft, {head(s)}": drafter(s, 1, p) for p in precisions for s in [0] + sizes}
        costs = per_token_costs(main_model, assistant, cost_drafters, encoder_hidden, args.cost_repeats)
        print("## Per-token cost (cached steps, median)\n")
        print(
            "| step | stock kernels ms | few-row kernels ms | stock vs main 1-token step (stock) "
            "| few-row vs main 1-token step (few-row) |\n|---|---:|---:|---:|---:|"
        )
        main_few_row = costs[0][2]
        for name, stock_ms, few_row_ms, main_ms in costs:
            print(
                f"| {name} | {stock_ms:.2f} | {few_row_ms:.2f} | {stock_ms / main_ms:.2f}x "
                f"| {few_row_ms / main_few_row:.2f}x |"
            )
        print(
            f"\nOnce per 30 s window, before any token: the main decoder's cross-attention keys and values over "
            f"1,500 encoder frames, {setup_ms:.0f} ms (plain and assisted alike).\n"
        )
        encoder_times = run_batch1(main_model, assistant, variants, clips, args.reps)

    encoder = statistics.median(encoder_times)
    setup = setup_ms / 1000 * len(clips)
    plain_stock, plain_few_row = variants[0], variants[1]
    stock_decode, few_row_decode = (statistics.median(v.times) for v in (plain_stock, plain_few_row))
    n_tokens = sum(len(o) for o in plain_stock.outputs)
    print(
        f"## Batch 1, {len(clips)} clips ({n_tokens} output tokens), median of {args.reps} repetitions; "
        f"encoder {encoder:.2f} s, cross-attention setup about {setup:.2f} s with stock kernels (both the same "
        "for every variant)\n"
    )
    print(
        "| variant | decoding s | decoding speed-up vs plain stock | vs plain few-row | end to end s "
        "| end-to-end speed-up vs plain stock | vs plain few-row | main passes | drafted / accepted "
        "| acceptance | identical ids |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        decode = statistics.median(v.times)
        same = sum(a == b for a, b in zip(v.outputs, plain_stock.outputs, strict=True))
        acceptance = f"{v.accepted / v.drafted:.2f}" if v.drafted else "-"
        drafted = f"{v.drafted} / {v.accepted}" if v.assisted else "-"
        print(
            f"| {v.name} | {decode:.2f} | {stock_decode / decode:.2f}x | {few_row_decode / decode:.2f}x "
            f"| {encoder + decode:.2f} | {(encoder + stock_decode) / (encoder + decode):.2f}x "
            f"| {(encoder + few_row_decode) / (encoder + decode):.2f}x | {v.main_passes} | {drafted} "
            f"| {acceptance} | {same}/{len(clips)} |"
        )


def cross_attention_setup_ms(main, encoder_hidden, repeats: int) -> float:
    """The main decoder's first pass (4 prompt tokens) minus a cached one-token step: the cross-attention K/V."""
    prompt = torch.tensor([[50258, 50259, 50359, 50363]])
    first, step = [], []
    for _ in range(repeats):
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for ids, times in ((prompt, first), (prompt[:, -1:], step)):
            started = time.perf_counter()
            main.model.decoder(
                input_ids=ids, encoder_hidden_states=encoder_hidden, cache=cache, use_cache=True
            )
            times.append(time.perf_counter() - started)
    return (statistics.median(first) - statistics.median(step)) * 1000


def server(args: argparse.Namespace) -> None:
    """Through the real server: always-assisted, never-assisted and adaptive requests at each concurrency."""
    from bench.bench_asr import load_level, print_load_row  # the ASR bench's load generator and row format

    levels = [int(n) for n in args.levels.split(",")]
    tuning = {"adaptive_threshold": args.threshold} if args.threshold is not None else {}
    # The draft rounds of the batch-1 part's first setting (the cpu overlay's).
    confidence = args.confidence.split(",")[0]
    settings = ASRSettings(
        **tuning,
        draft_tokens=int(args.num_tokens.split(",")[0]),
        draft_confidence=0 if confidence == "none" else float(confidence),
        model=str(args.models / "whisper-base"),
        assistant_model=str(args.models / "whisper-base-assistant-2l"),
        threads=args.threads,
        max_batch_size=max(levels),
        max_queue=4 * max(levels),
        request_timeout_s=600,
        log_level="warning",
    )
    speech = args.models / "speech"
    clips = [
        (speech / f"{line.split(chr(9))[0]}.wav").read_bytes()
        for line in (speech / "refs.tsv").read_text(encoding="utf-8").splitlines()
        if line.split("\t")[1] == "en"
    ]
    print(
        f"\n## Through the server, real whisper-base + 2-layer assistant, English clips: throughput (req/s) and "
        f"p95 latency (s); {args.threads} threads, adaptive threshold {settings.adaptive_threshold}, batching "
        f"window {settings.max_wait_ms:g} ms, draft head {settings.draft_vocab_size} rows, int8 "
        f"{settings.draft_quantize}, {settings.draft_tokens} tokens per round, confidence {settings.draft_confidence}\n"
    )
    print(
        "| concurrency | always-assisted req/s | p95 | never-assisted req/s | p95 | adaptive req/s | p95 "
        "| adaptive assisted share | adaptive vs best fixed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        for concurrency in levels:
            row = load_level(running.rest_url, concurrency, args.rounds, clips)
            print_load_row({"concurrency": concurrency, **row}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, default=REAL, help="folder made by `make real-asr`")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy shared machine)")
    parser.add_argument("--clips", type=int, default=None, help="first N English clips (default all 30)")
    parser.add_argument(
        "--num-tokens", default="5", help="draft tokens per round, comma-separated to compare"
    )
    parser.add_argument("--vocab-sizes", default="16384", help="restricted head sizes, comma-separated")
    parser.add_argument("--schedule", choices=["constant", "heuristic"], default="constant")
    parser.add_argument(
        "--confidence",
        default="0.8",
        help="draft confidence thresholds (stop a round below it), comma-separated; none = off",
    )
    parser.add_argument(
        "--counts-file", type=Path, default=None, help="token frequencies for the draft vocab"
    )
    parser.add_argument("--full-head-loop", action="store_true", help="also: full head with the draft loop")
    parser.add_argument(
        "--stock-draft-loop", action="store_true", help="also: the draft loop with stock linear kernels"
    )
    parser.add_argument("--precision", default="int8", help="draft precision(s): int8, fp32 or int8,fp32")
    parser.add_argument("--cost-repeats", type=int, default=40)
    parser.add_argument("--skip-batch1", action="store_true", help="only the server part")
    parser.add_argument("--server", action="store_true", help="also: concurrency through the real server")
    parser.add_argument("--levels", default="1,4,8,16", help="server concurrency levels")
    parser.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="ASR_ADAPTIVE_THRESHOLD for the server (default: the service's)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="server rounds per level (each user sends max(1, 4 / level))"
    )
    args = parser.parse_args()
    if not (args.models / "whisper-base" / "model.safetensors").is_file():
        sys.exit(f"{args.models} has no whisper-base: run `make real-asr` first")
    torch.set_num_threads(args.threads)
    if not args.skip_batch1:
        batch1(args)
    if args.server:
        server(args)


if __name__ == "__main__":
    main()
