"""The project vs LitServe serving the same translation checkpoint, over REST, interleaved in one run.

    .venv/bin/python -m pip install -e '.[peers]'   # or: pip install --no-deps litserve==0.2.19
    .venv/bin/python bench/bench_peers.py [--size medium|tiny] [--rounds 2] [--threads 2]

Both servers run as child processes of this one (so the load generator shares neither's GIL) and load
FSMTForConditionalGeneration from the same directory, on the same device, with the same torch thread count,
max batch size 16, batch timeout 5 ms, greedy decoding and max_new_tokens. The LitServe side is a batching LitAPI
doing what the project's runner does: tokenize the batch with padding, one `generate` call, batch-decode. The
project runs at its defaults (including its few-row linear kernels on CPU; `--stock-kernels` turns them off to
compare the serving stacks alone); its child reads any other TRANSLATION_* setting from the environment (e.g.
TRANSLATION_WAIT_WHEN_IDLE=true). Cells run A B A B per concurrency and report means; while one side is measured
the other's processes are stopped (SIGSTOP), since an idle LitServe worker polls its queue every millisecond.

One torch thread by default: the load generator needs a core of its own, and an OpenMP pool of 2 on 2 busy
cores spins at every barrier (both servers then burned about 15x the CPU per request, and the numbers followed
whatever else ran on the machine).

Targets: the project at >= 1.5x LitServe's throughput at concurrency 16, and a lower p95 at both concurrencies.

`--asr` prints the ASR table instead: real whisper-base through the project's ASR service against faster-whisper
1.2.1 on the same CTranslate2 weights (bench/peers_asr.py says how).
"""

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import litserve as ls
import peers_asr
import psutil
import torch
from bench_translation import MAX_NEW_TOKENS, SENTENCES, TINY, medium_model
from loadgen import percentile, post_load
from transformers import FSMTForConditionalGeneration, FSMTTokenizer

MAX_BATCH_SIZE = 16
BATCH_TIMEOUT_S = 0.005
READY_TIMEOUT_S = 300
SIDES = ("project", "litserve")
THROUGHPUT_TARGET_C16 = 1.5


def request_body(text: str) -> dict:
    return {"text": text, "source_lang": "en", "target_lang": "de", "num_beams": 1, "max_new_tokens": MAX_NEW_TOKENS}


def bodies(requests: int) -> list[dict]:
    return [request_body(SENTENCES[i % len(SENTENCES)]) for i in range(requests)]


# --- servers (each runs in a child process started by main) ---------------------------------------------------


def serve_project(model_dir: str, device: str, threads: int, few_row_linears: bool) -> None:
    """The project's translation service through ServerThread; prints its URL, serves until stdin closes."""
    from services.kit.testing import ServerThread
    from services.translation.service import create_service
    from services.translation.settings import TranslationSettings

    settings = TranslationSettings(
        models={"en-de": model_dir}, device=device, dtype="float32", threads=threads, few_row_linears=few_row_linears,
        max_batch_size=MAX_BATCH_SIZE, max_wait_ms=BATCH_TIMEOUT_S * 1000, max_queue=1024, log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        print(server.rest_url, flush=True)
        sys.stdin.read()


class TranslationAPI(ls.LitAPI):
    """What services.translation's runner does for a batch of greedy requests, as a batching LitAPI."""

    def __init__(self, model_dir: str, threads: int):
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/v1/translate")
        self.model_dir = model_dir
        self.threads = threads

    def setup(self, device):
        torch.set_num_threads(self.threads)
        self.device = device
        self.tokenizer = FSMTTokenizer.from_pretrained(self.model_dir)
        self.model = FSMTForConditionalGeneration.from_pretrained(
            self.model_dir, use_safetensors=True, dtype=torch.float32
        ).to(device).eval()
        self.model.generation_config.max_length = None  # as the runner: max_new_tokens is the only limit
        self.predict(self.batch([self.decode_request({"text": "Hello world.", "max_new_tokens": 8})]))

    def decode_request(self, request):
        return request["text"], int(request["max_new_tokens"])

    def batch(self, inputs):
        # Every request of the benchmark asks for the same max_new_tokens, as the runner's batch key requires.
        return [text for text, _ in inputs], max(tokens for _, tokens in inputs)

    @torch.inference_mode()
    def predict(self, batch):
        texts, max_new_tokens = batch
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        output = self.model.generate(**inputs, num_beams=1, num_return_sequences=1, max_new_tokens=max_new_tokens)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"translations": [output], "model": Path(self.model_dir).name}


def serve_litserve(model_dir: str, device: str, threads: int, port: int) -> None:
    server = ls.LitServer(TranslationAPI(model_dir, threads), accelerator=device, devices=1, timeout=600)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


# --- the benchmark ----------------------------------------------------------------------------------------------


class Child:
    """A server child process in its own process group, so it and every process it starts can be paused,
    resumed and ended together."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        self.url = ""

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and every process it started, so far."""
        total = 0.0
        root = psutil.Process(self.process.pid)
        for process in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def wait_ready(self, probe: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} server exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + probe).status_code == 200:
                        return
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} server not ready after {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()  # the project's server drains and exits on EOF
        self.process.send_signal(signal.SIGINT)  # LitServe's main process shuts its workers down on Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        self.signal(signal.SIGKILL)  # whatever of the group is left
        self.process.wait()


def start_servers(model_dir: Path, args) -> dict[str, Child]:
    from services.kit.testing import free_port

    common = ["--model", str(model_dir), "--device", args.device, "--threads", str(args.threads)]
    project = Child("project", ["--serve", "project", *common, *(["--stock-kernels"] if args.stock_kernels else [])])
    port = free_port()
    litserve = Child("litserve", ["--serve", "litserve", *common, "--port", str(port)])
    try:
        project.url = project.process.stdout.readline().strip()
        if not project.url:
            raise RuntimeError("project server exited before printing its URL")
        project.wait_ready("/readyz")
        litserve.url = f"http://127.0.0.1:{port}"
        litserve.wait_ready("/health")
    except BaseException:
        project.stop()
        litserve.stop()
        raise
    return {"project": project, "litserve": litserve}


def translations(url: str) -> list[str]:
    with httpx.Client(timeout=120) as client:
        return [
            client.post(url + "/v1/translate", json=request_body(text)).raise_for_status().json()["translations"][0]
            for text in SENTENCES
        ]


def measure(child: Child, requests: int, concurrency: int) -> tuple[float, float, float, float]:
    """(req/s, p50 ms, p95 ms, server CPU ms per request) for `requests` requests at `concurrency`."""
    url = child.url + "/v1/translate"
    asyncio.run(post_load(url, bodies(concurrency), concurrency))  # open the connections first
    cpu_before = child.cpu_seconds()
    elapsed, latencies = asyncio.run(post_load(url, bodies(requests), concurrency))
    cpu_ms = (child.cpu_seconds() - cpu_before) * 1000 / requests
    return requests / elapsed, percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000, cpu_ms


def run_benchmark(servers: dict[str, Child], args) -> tuple[dict, int]:
    cells: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    for side in SIDES:
        servers[side].signal(signal.SIGSTOP)
    texts = {}
    for side in SIDES:
        servers[side].signal(signal.SIGCONT)
        texts[side] = translations(servers[side].url)
        servers[side].signal(signal.SIGSTOP)
    identical = sum(a == b for a, b in zip(texts["project"], texts["litserve"], strict=True))
    for concurrency, requests in ((1, args.requests_c1), (16, args.requests_c16)):
        for round_ in range(args.rounds):
            for side in SIDES:
                servers[side].signal(signal.SIGCONT)
                result = measure(servers[side], requests, concurrency)
                servers[side].signal(signal.SIGSTOP)
                cells.setdefault((concurrency, side), []).append(result)
                print(f"  c{concurrency} round {round_ + 1} {side}: {result[0]:.1f} req/s, "
                      f"p50 {result[1]:.0f} ms, p95 {result[2]:.0f} ms, {result[3]:.0f} CPU ms/req",
                      file=sys.stderr, flush=True)
    for side in SIDES:
        servers[side].signal(signal.SIGCONT)
    means = {cell: tuple(statistics.mean(column) for column in zip(*runs, strict=True)) for cell, runs in cells.items()}
    return means, identical


def report(means: dict, identical: int, args) -> None:
    kernels = "stock" if args.stock_kernels else "few-row (project default)"
    print(f"\n### Project vs LitServe: translation ({args.size} FSMT, {args.device}, {args.threads} torch threads, "
          f"max batch {MAX_BATCH_SIZE}, batch timeout {BATCH_TIMEOUT_S * 1000:.0f} ms, greedy, "
          f"max_new_tokens {MAX_NEW_TOKENS}; project linear kernels: {kernels})\n")
    print(f"Means of {args.rounds} interleaved runs per cell; {args.requests_c1} requests per cell at concurrency 1, "
          f"{args.requests_c16} at 16. Identical translations: {identical}/{len(SENTENCES)}.\n")
    print("| concurrency | side | req/s | p50 ms | p95 ms | server CPU ms/req |")
    print("|---:|---|---:|---:|---:|---:|")
    for concurrency in (1, 16):
        for side in SIDES:
            throughput, p50, p95, cpu_ms = means[(concurrency, side)]
            print(f"| {concurrency} | {side} | {throughput:.1f} | {p50:.0f} | {p95:.0f} | {cpu_ms:.0f} |")
    print("\n| concurrency | throughput project / LitServe | p50 project / LitServe | p95 project / LitServe "
          "| CPU per request project / LitServe |")
    print("|---:|---:|---:|---:|---:|")
    for concurrency in (1, 16):
        ours, theirs = means[(concurrency, "project")], means[(concurrency, "litserve")]
        print(f"| {concurrency} | " + " | ".join(f"{a / b:.2f}x" for a, b in zip(ours, theirs, strict=True)) + " |")
    ours, theirs = means[(16, "project")], means[(16, "litserve")]
    met_throughput = ours[0] / theirs[0] >= THROUGHPUT_TARGET_C16
    met_p95 = all(means[(c, "project")][2] < means[(c, "litserve")][2] for c in (1, 16))
    print(f"\nTargets: throughput >= {THROUGHPUT_TARGET_C16}x LitServe's at concurrency 16: "
          f"{'met' if met_throughput else 'NOT met'}; lower p95 at concurrency 1 and 16: "
          f"{'met' if met_p95 else 'NOT met'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "medium"], default="medium")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both servers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs per cell (A B A B ...)")
    parser.add_argument("--requests-c1", type=int, default=32)
    parser.add_argument("--requests-c16", type=int, default=96)
    parser.add_argument("--stock-kernels", action="store_true", help="the project without its few-row linear kernels")
    peers_asr.add_arguments(parser)
    parser.add_argument("--serve", choices=(*SIDES, "asr-project"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "asr-project":
        peers_asr.serve_project_asr(args.asr_threads)
        return
    if args.asr:
        peers_asr.check_installed()
        peers_asr.asr_benchmark(args, lambda argv: Child("project ASR", argv))
        return
    if args.serve == "project":
        serve_project(args.model, args.device, args.threads, not args.stock_kernels)
        return
    if args.serve == "litserve":
        serve_litserve(args.model, args.device, args.threads, args.port)
        return

    with tempfile.TemporaryDirectory() as work:
        model_dir = TINY if args.size == "tiny" else medium_model(Path(work))
        servers = start_servers(model_dir, args)
        try:
            means, identical = run_benchmark(servers, args)
        finally:
            for child in servers.values():
                child.stop()
    report(means, identical, args)


if __name__ == "__main__":
    main()
