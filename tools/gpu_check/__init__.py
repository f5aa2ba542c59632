"""One-command check of the torch services on a GPU: `make gpu-check` (README.md, "GPU check").

`python -m tools.gpu_check [--device cuda] [--dtype float16] [--sizes real|small|tiny] [--out DIR]`:

1. builds random-weight models at the production sizes from configs written in code (models.py: Whisper
   large-v2 with a distil-large-v2-shaped 2-layer assistant, FSMT wmt19 "big", SpeechT5 + HiFi-GAN, Stable
   Diffusion 1.5 at 512x512) into a temp dir as safetensors; `--sizes tiny` uses `make models`' checkpoints;
2. starts every torch service as its own process (`python -m services.<name>`, as its container does) with
   `<P>DEVICE`/`<P>DTYPE`, and waits until each is ready;
3. sends each one real requests over REST (one at a time, then all at once so that they batch) and gRPC, and
   compares: batched == one at a time, assisted == plain Whisper decoding, gRPC == REST. Mismatches are
   reported, never hidden; in float16 they can be legitimate (batched kernels round differently);
4. writes the throughput table (requests/s, images/s, real-time factor) to OUT/results.md and results.json,
   and each server's log to OUT/logs/.

The exit code is 0 when every service started, served and answered over REST and gRPC. bootstrap.py (stdlib
only) is the entry point on a GPU machine without the project's packages: it installs them offline from the
wheels `make gpu-wheels` downloads.
"""
