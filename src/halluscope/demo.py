"""`halluscope demo`: the main job, end to end on a laptop CPU with nothing to download.

Today it runs the image half of the pipeline: write a synthetic image world, train a tiny
VQGAN on it, tokenize it, train a tiny GPT on the tokens, and draw continuations of the top
half of held-out images. Every stage resumes, so a second run reuses what the first trained
(`--retrain` starts over). The clip half, the probes and the report arrive with their issues.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from halluscope.data import ImageWorld, load_image, write_world
from halluscope.data.token_cache import TokenCache
from halluscope.gpt import train as gpt_train
from halluscope.gpt.checkpoint import load_gpt
from halluscope.io import read_jsonl
from halluscope.probes.sample import continue_example, write_continuations
from halluscope.tokenizers import cache as token_cache
from halluscope.tokenizers import train as tokenizer_train
from halluscope.tokenizers.load import load_tokenizer


@dataclass
class DemoSize:
    train_images: int
    heldout_images: int
    tokenizer_steps: int
    gpt_steps: int
    samples: int


FULL = DemoSize(train_images=1000, heldout_images=4, tokenizer_steps=400, gpt_steps=300, samples=8)
QUICK = DemoSize(train_images=32, heldout_images=2, tokenizer_steps=8, gpt_steps=12, samples=4)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job: world → tokenizer → GPT → continuations, on the CPU")
    p.add_argument("--out", default="runs/demo", help="run folder (reused by a second run)")
    p.add_argument("--quick", action="store_true", help="a much smaller version (tests, a first look)")
    p.add_argument("--retrain", action="store_true", help="delete --out and start over")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.retrain:
        shutil.rmtree(out, ignore_errors=True)
    summary = run_demo(out, QUICK if args.quick else FULL)
    print("\n".join(f"{k:>28}: {v}" for k, v in summary.items()))
    print(f"\nTry the models interactively: halluscope app --models {out}")
    return 0


def ensure_world(folder: Path, n: int, seed: int) -> Path:
    """The world in `folder`, written unless a complete one (with world.json) is there."""
    if not (folder / "world.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_world(ImageWorld(size=64, seed=seed), folder, n)
    return folder


def last_logged(run: Path, key: str) -> float:
    """The last value of `key` in a run's metrics.jsonl (also after a resumed, finished run)."""
    values = [r.get(key) for r in read_jsonl(run / "metrics.jsonl")]
    return next((v for v in reversed(values) if v is not None), math.nan)


def run_demo(out: Path, size: DemoSize) -> dict:
    train_dir = ensure_world(out / "worlds" / "images-train", size.train_images, seed=0)
    heldout_dir = ensure_world(out / "worlds" / "images-heldout", size.heldout_images, seed=1)

    tok_run = out / "tokenizer"
    tokenizer_train.train(tokenizer_train.TrainConfig(
        kind="image", data=str(train_dir), out=str(tok_run), preset="tiny", steps=size.tokenizer_steps,
        batch=8, resume=True))
    token_cache.tokenize(tok_run / "model", train_dir, out / "tokens", resume=True)
    cache = TokenCache(out / "tokens")

    gpt_run = out / "gpt"
    gpt_train.train(gpt_train.TrainConfig(
        tokens=str(out / "tokens"), out=str(gpt_run), preset="tiny", steps=size.gpt_steps, batch=32,
        lr=3e-3, warmup=min(50, size.gpt_steps // 4), min_lr=3e-4, eval_every=max(1, size.gpt_steps // 4),
        ckpt_every=max(1, size.gpt_steps // 4), resume=True))

    gpt, tokenizer = load_gpt(gpt_run / "model"), load_tokenizer(tok_run / "model")
    grids = []
    for i, image in enumerate(sorted((heldout_dir / "images").glob("*.png"))):
        x = load_image(image, tokenizer.resolution)
        result = continue_example(gpt, tokenizer, x, context=0.5, samples=size.samples,
                                  generator=torch.Generator().manual_seed(i))
        grids += [p for p in write_continuations(result, out / "samples" / image.stem) if p.suffix == ".png"]
    return {
        "tokenizer PSNR (train, dB)": f"{last_logged(tok_run, 'psnr'):.1f}",
        "codebook usage": f"{last_logged(tok_run, 'usage'):.0%}",
        "GPT val loss (nats/token)": f"{last_logged(gpt_run, 'val_loss'):.3f}",
        "unigram entropy (nats/token)": f"{cache.unigram_entropy():.3f}",
        "continuation grids": ", ".join(str(p) for p in grids) or "none",
        "uniform baseline (nats/token)": f"{math.log(cache.vocab_size):.3f}",
    }
