"""GPT training on the image world: does the tiny preset learn more than token frequencies
within a few CPU minutes?

Writes the 64×64 image world, trains the tiny image tokenizer for `--tokenizer-minutes`
(or takes `--tokenizer DIR`), tokenizes the world, trains the tiny GPT preset for
`--minutes`, and reports the validation-loss curve against the reference measured on the
same tokens: the unigram entropy (the loss of a model that ignores all context). Also
reports training tokens/s.

    python -m benchmarks gpt_training [--minutes 5] [--tokenizer-minutes 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from benchmarks._common import RESULTS, publish
from halluscope.data import ImageWorld, write_world
from halluscope.data.token_cache import TokenCache
from halluscope.gpt import train as gpt_train
from halluscope.tokenizers import train as tokenizer_train
from halluscope.tokenizers.cache import tokenize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpt_training", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="GPT training time")
    p.add_argument("--tokenizer", help="a trained image tokenizer folder (default: train the tiny preset)")
    p.add_argument("--tokenizer-minutes", type=float, default=3.0)
    p.add_argument("--images", type=int, default=2000, help="world images (5%% held out for validation)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_world(ImageWorld(size=64, seed=0), root / "world", args.images)
        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer_train.train(tokenizer_train.TrainConfig(
                kind="image", data=str(root / "world"), out=str(root / "tok"), preset="tiny", steps=10**9,
                max_minutes=args.tokenizer_minutes, sample_every=10**9, ckpt_every=10**9, progress=False))
            tokenizer = root / "tok" / "model"
        tokenize(tokenizer, root / "world", root / "tokens", progress=False)
        cache = TokenCache(root / "tokens")
        t0 = time.perf_counter()
        gpt_train.train(gpt_train.TrainConfig(
            tokens=str(root / "tokens"), out=str(root / "gpt"), preset="tiny", steps=10**6, batch=args.batch,
            lr=3e-3, warmup=100, min_lr=3e-4, eval_every=50, ckpt_every=10**6, max_minutes=args.minutes,
            progress=False))
        seconds = time.perf_counter() - t0
        log = [json.loads(line) for line in (root / "gpt" / "metrics.jsonl").read_text().splitlines()]

    unigram = cache.unigram_entropy()
    curve = [{"step": r["step"], "val_loss": r["val_loss"]} for r in log if "val_loss" in r]
    tokens_per_s = sorted(r["tokens_per_s"] for r in log)[len(log) // 2]  # median: robust to noise
    result = {"minutes": args.minutes, "threads": args.threads, "batch": args.batch, "steps": log[-1]["step"],
              "train_seconds": round(seconds, 1), "grid": list(cache.grid), "vocab_size": cache.vocab_size,
              "examples": len(cache), "unigram_entropy": unigram, "final_val_loss": curve[-1]["val_loss"],
              "val_loss_over_unigram": curve[-1]["val_loss"] / unigram, "median_tokens_per_s": tokens_per_s,
              "curve": curve}
    plot(curve, unigram, RESULTS / "gpt_training.png")
    return publish("gpt_training", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    curve, unigram = result["curve"], result["unigram_entropy"]
    out = [f"tiny GPT on {result['examples']} world images ({'×'.join(map(str, result['grid']))} tokens, vocab "
           f"{result['vocab_size']}), {result['steps']} steps in {result['train_seconds']:.0f} s, batch "
           f"{result['batch']}, {result['threads']} threads, median {result['median_tokens_per_s']:.0f} tokens/s\n",
           "| step | val loss (nats/token) | / unigram entropy |", "|---|---|---|"]
    shown = curve[:: max(1, len(curve) // 10)]
    for point in shown + ([curve[-1]] if shown[-1] is not curve[-1] else []):
        out.append(f"| {point['step']} | {point['val_loss']:.3f} | {point['val_loss'] / unigram:.2f} |")
    out.append(f"\nunigram entropy (reference): {unigram:.3f} nats/token")
    return "\n".join(out)


def plot(curve: list[dict], unigram: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot([c["step"] for c in curve], [c["val_loss"] for c in curve], label="tiny GPT, validation")
    ax.axhline(unigram, color="grey", linestyle="--", label="unigram entropy")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="GPT training on the image world (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
