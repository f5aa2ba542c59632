"""Random-weight checkpoints of the real serving architectures, built offline with fixed seeds.

`python -m tools.tiny_models [--out models] [--only translation,asr,...] [--force]` writes safetensors
checkpoints in the same on-disk layout as the Hub ones, so `from_pretrained(dir)` runs the same code path as
a hub id. A model directory with a `.complete` marker is kept unless --force.
"""

import argparse
import importlib
import os
import shutil
import time
from pathlib import Path

from services.registry import entries

# The directories services read, per capability (relative to --out), and the module that builds them: from
# each service's registry entry, so that checking what is already built does not import torch.
SERVICES = {entry.name: entry for entry in entries().values() if entry.tiny_models}
LAYOUT = {name: entry.tiny_models for name, entry in SERVICES.items()}
MARKER = ".complete"


def build_all(out_dir: Path, only: tuple[str, ...] = tuple(LAYOUT), force: bool = False) -> list[Path]:
    """Build the missing (or, with force, all) models of the given capabilities; print one line per model."""
    done = []
    for capability in only:
        model_dirs = [out_dir / name for name in LAYOUT[capability]]
        if not force and all((d / MARKER).exists() for d in model_dirs):
            for d in model_dirs:
                print(f"kept  {d}", flush=True)
            done += model_dirs
            continue
        for d in model_dirs:  # also clears what an interrupted run left behind
            shutil.rmtree(d, ignore_errors=True)
        start = time.perf_counter()
        built = importlib.import_module(SERVICES[capability].tiny_builder_module).build(out_dir)
        elapsed = time.perf_counter() - start
        for d in built:
            (d / MARKER).touch()
            print(f"built {d} ({capability}: {elapsed:.1f} s)", flush=True)
        done += built
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny_models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="models root (default: models)")
    parser.add_argument(
        "--only", default=",".join(LAYOUT), help=f"comma-separated subset of {','.join(LAYOUT)}"
    )
    parser.add_argument("--force", action="store_true", help="rebuild models that are already complete")
    args = parser.parse_args(argv)
    only = tuple(c.strip() for c in args.only.split(",") if c.strip())
    if unknown := set(only) - set(LAYOUT):
        parser.error(f"unknown capabilities: {', '.join(sorted(unknown))}")
    _quiet_libraries()
    build_all(args.out, only, args.force)
    return 0


def _quiet_libraries() -> None:
    """One line per model: no save progress bars or library chatter (set before the libraries load)."""
    for var, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(var, value)
