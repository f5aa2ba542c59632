"""Continuous (iteration-level) greedy decoding: texts that join a running decode, mid-way and with other
lengths, get exactly the translation they get alone."""

import pytest
import torch
from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer, GenerationConfig

from services.kit.testing import standalone_work
from services.translation.runner import GenerationOptions, TranslationJob, TranslationRunner
from services.translation.settings import TranslationSettings

PAIR = "en-de"
TEXTS = [
    "Hello world.",
    "How are you today?",
    "The weather is nice",
    "Good night",
    "a",
    "Machine learning is great, isn't it?",
    "zzz qqq xxx 123 456",
    "The quick brown fox jumps over the lazy dog again and again and again, and then it jumps once more.",
]


@pytest.fixture(scope="module")
def sharp_model_dir(models_dir, tmp_path_factory):
    """The tiny en-de architecture and tokenizer with larger random weights: the shipped tiny model gives
    nearly the same tokens whatever the source (so rows mixed up between slots could go unnoticed) and never
    ends before max_new_tokens. Here outputs depend on the source and some end with EOS on their own."""
    source = models_dir / "translation" / "wmt19-en-de"
    config = FSMTConfig.from_pretrained(source)
    config.init_std = 0.1
    torch.manual_seed(0)
    model = FSMTForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(source)
    with torch.no_grad():
        model.model.decoder.output_projection.weight[config.eos_token_id] *= 3
    target = tmp_path_factory.mktemp("sharp-fsmt")
    model.save_pretrained(target)
    FSMTTokenizer.from_pretrained(source).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def runner(sharp_model_dir):
    runner = TranslationRunner(TranslationSettings(models={PAIR: str(sharp_model_dir)}, threads=1))
    runner.load()
    return runner


def greedy(texts, max_new_tokens: int) -> TranslationJob:
    return TranslationJob(PAIR, tuple(texts), GenerationOptions(num_beams=1, max_new_tokens=max_new_tokens))


def alone(runner: TranslationRunner, text: str, max_new_tokens: int) -> list[str]:
    return runner.translate(PAIR, [text], GenerationOptions(num_beams=1, max_new_tokens=max_new_tokens))[0]


def drive(loop, joins: dict[int, list]) -> tuple[dict, dict]:
    """Join `joins[step]` before that step, step until the loop is empty; (work -> result, work -> the step
    that returned it)."""
    results, finished_at, step = {}, {}, 0
    while step <= max(joins) or loop.running:
        if step in joins:
            loop.join(joins[step])
        for work, result in loop.step():
            assert work not in results, "a work finished twice"
            results[work], finished_at[work] = result, step
        step += 1
    return results, finished_at


def test_the_sharp_model_tells_sources_apart(runner):
    outputs = [alone(runner, text, 100)[0] for text in TEXTS]
    assert len(set(outputs)) == len(TEXTS)
    tokenizer, model = runner.tokenizers[PAIR], runner.models[PAIR]
    lengths = [
        model.generate(**tokenizer([t], return_tensors="pt"), num_beams=1, max_new_tokens=100).shape[1] - 1
        for t in TEXTS
    ]
    assert min(lengths) < 100, "no text ends with EOS before max_new_tokens: the stop at EOS goes untested"


def test_works_joining_mid_decode_get_what_they_get_alone(runner):
    jobs = [
        greedy([TEXTS[7]], 100),
        greedy([TEXTS[0]], 5),
        greedy([TEXTS[5]], 40),
        greedy([TEXTS[1]], 17),
        greedy([TEXTS[6]], 100),
        greedy([TEXTS[4]], 64),
    ]
    works = [standalone_work(job, key=job.batch_key) for job in jobs]
    loop = runner.open_loop(jobs[0].batch_key, jobs[0])
    assert loop is not None
    results, finished_at = drive(loop, {0: works[:1], 3: works[1:3], 9: works[3:5], 30: works[5:]})
    for work, job in zip(works, jobs, strict=True):
        assert results[work] == [alone(runner, job.texts[0], job.options.max_new_tokens)]
    # The 5-token job joined at step 3 and did not wait for the 100-token one.
    assert finished_at[works[1]] <= 3 + 5
    assert loop.running == 0 and loop.step() == []


def test_multi_text_jobs_with_texts_of_different_lengths(runner):
    first, second = greedy([TEXTS[4], TEXTS[7], TEXTS[2]], 30), greedy([TEXTS[3], TEXTS[5]], 60)
    works = [standalone_work(first), standalone_work(second)]
    loop = runner.open_loop(first.batch_key, first)
    results, _ = drive(loop, {0: works[:1], 2: works[1:]})
    for work, job in zip(works, (first, second), strict=True):
        assert results[work] == [alone(runner, text, job.options.max_new_tokens) for text in job.texts]


def test_leave_mid_decode_frees_the_rows_and_the_others_finish_the_same(runner):
    kept, dropped, late = (
        greedy([TEXTS[1], TEXTS[6]], 50),
        greedy([TEXTS[7], TEXTS[0]], 100),
        greedy([TEXTS[2]], 20),
    )
    works = [standalone_work(job) for job in (kept, dropped, late)]
    loop = runner.open_loop(kept.batch_key, kept)
    loop.join(works[:2])
    for _ in range(4):
        assert loop.step() == []
    assert loop.running == 4
    loop.leave(works[1])
    assert loop.running == 2
    results, _ = drive(loop, {0: works[2:]})
    assert works[1] not in results
    assert results[works[0]] == [alone(runner, text, 50) for text in kept.texts]
    assert results[works[2]] == [alone(runner, TEXTS[2], 20)]


def test_greedy_keys_ignore_max_new_tokens_and_beam_search_stays_whole_request(runner):
    short, long = greedy(["a"], 5), greedy(["b", "c"], 100)
    assert short.batch_key == long.batch_key
    assert runner.rows(long) == 2
    beams = [TranslationJob(PAIR, ("a",), GenerationOptions(num_beams=3, max_new_tokens=n)) for n in (5, 100)]
    assert beams[0].batch_key != beams[1].batch_key
    assert runner.open_loop(beams[0].batch_key, beams[0]) is None
    # The checkpoint's generation config asks for 2 beams: a request that sets none is beam search.
    default = TranslationJob(PAIR, ("a",), GenerationOptions(max_new_tokens=5))
    assert runner.open_loop(default.batch_key, default) is None


def test_switched_off_greedy_requests_of_mixed_lengths_batch_whole_request(sharp_model_dir):
    settings = TranslationSettings(models={PAIR: str(sharp_model_dir)}, threads=1, continuous_batching=False)
    runner = TranslationRunner(settings)
    runner.load()
    jobs = [greedy([TEXTS[0]], 5), greedy([TEXTS[5], TEXTS[2]], 30)]
    assert runner.open_loop(jobs[0].batch_key, jobs[0]) is None
    # Whole-request batches share one generate call: only identical options batch together.
    assert runner.batch_key(jobs[0]) != runner.batch_key(jobs[1])
    assert runner.batch_key(jobs[0]) == runner.batch_key(greedy([TEXTS[1]], 5))
    results = runner.predict_batch([standalone_work(job) for job in jobs])
    assert results[0] == [alone(runner, TEXTS[0], 5)]
    assert [len(hypotheses) for hypotheses in results[1]] == [1, 1]


def test_concurrent_greedy_requests_over_rest_get_their_alone_answers_and_short_ones_return_first(
    sharp_model_dir, runner
):
    import concurrent.futures
    import time

    import httpx

    from services.kit.testing import ServerThread
    from services.translation.service import create_service

    settings = TranslationSettings(models={PAIR: str(sharp_model_dir)}, threads=1, log_level="warning")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        url = server.rest_url + "/v1/translate"

        def translate(text: str, max_new_tokens: int) -> tuple[str, float]:
            body = {
                "text": text,
                "source_lang": "en",
                "target_lang": "de",
                "num_beams": 1,
                "max_new_tokens": max_new_tokens,
            }
            response = httpx.post(url, json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()["translations"][0], time.monotonic()

        # The long request: a text the sharp model does not end early (it may stop at EOS on its own).
        tokenizer, model = runner.tokenizers[PAIR], runner.models[PAIR]

        def generated(text: str) -> int:
            inputs = tokenizer([text], return_tensors="pt")
            return model.generate(**inputs, num_beams=1, max_new_tokens=200).shape[1] - 1

        long_text = max(TEXTS, key=generated)
        assert generated(long_text) >= 150
        short_texts = [text for text in TEXTS if text != long_text]
        requests = [(long_text, 200), *((text, 3 + 7 * i) for i, text in enumerate(short_texts, start=1))]
        sequential = [translate(text, n)[0] for text, n in requests]
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            long_request = pool.submit(translate, *requests[0])
            time.sleep(0.05)
            others = [pool.submit(translate, text, n) for text, n in requests[1:]]
            concurrent_answers = [long_request.result(), *(future.result() for future in others)]
        assert [text for text, _ in concurrent_answers] == sequential
        long_done = concurrent_answers[0][1]
        short_done = concurrent_answers[1][1]  # 10 new tokens at most, joined while the 200-token one ran
        assert short_done < long_done, "the short request did not wait for the long one"
        batcher = server.services[0].batchers[0]
        assert type(batcher).__name__ == "ContinuousBatcher"


def test_leaving_a_work_whose_rows_are_not_the_last_moves_the_others_rows_and_they_finish_the_same(runner):
    first, second = greedy([TEXTS[1], TEXTS[7]], 50), greedy([TEXTS[6], TEXTS[0]], 60)
    works = [standalone_work(first), standalone_work(second)]
    loop = runner.open_loop(first.batch_key, first)
    loop.join(works)
    for _ in range(3):
        assert loop.step() == []
    loop.leave(works[0])  # its rows 0 and 1 take the last rows' keys, values and ids
    assert loop.running == 2
    results = {}
    while loop.running:
        results.update(loop.step())
    assert results == {works[1]: [alone(runner, text, 60) for text in second.texts]}


def test_the_runner_decodes_as_the_stock_model_does_greedy_and_beam_search(runner, sharp_model_dir):
    """The runner's models store their linear weights column-major on a CPU (faster few-row products) and
    the decode loop runs its own encoder and decoder code: tokens still equal those of the checkpoint loaded
    as transformers loads it, through generate."""
    model = runner.models[PAIR]
    assert model.model.encoder.layers[0].fc1.weight.t().is_contiguous()
    tokenizer = runner.tokenizers[PAIR]
    stock = FSMTForConditionalGeneration.from_pretrained(sharp_model_dir).eval()
    assert stock.model.encoder.layers[0].fc1.weight.is_contiguous()

    def generated(text: str, num_beams: int) -> str:
        inputs = tokenizer([text], return_tensors="pt")
        output = stock.generate(**inputs, num_beams=num_beams, max_new_tokens=40, max_length=None)
        return tokenizer.decode(output[0], skip_special_tokens=True)

    jobs = [greedy([text], 40) for text in TEXTS]
    works = [standalone_work(job) for job in jobs]
    loop = runner.open_loop(jobs[0].batch_key, jobs[0])
    results, _ = drive(loop, {0: works[:3], 2: works[3:]})
    for work, text in zip(works, TEXTS, strict=True):
        assert results[work] == [[generated(text, 1)]]
    beams = runner.translate(PAIR, TEXTS, GenerationOptions(num_beams=3, max_new_tokens=40))
    assert beams == [[generated(text, 3)] for text in TEXTS]
