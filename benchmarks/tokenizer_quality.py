"""Tokenizer quality on the synthetic worlds: train the `tiny` image preset on the 64×64 image
world and the `tiny` clip preset on the 16-frame video world, each for a few CPU minutes,
then measure held-out PSNR and codebook usage.

Reference, measured in the same run: the PSNR of shrinking each held-out example to its
token grid's size (area average) and blowing it back up (bilinear / trilinear), i.e. what a
"tokenizer" that keeps one RGB value per token would reach. Targets (issue 3): images
≥ 26 dB with ≥ 30% codebook usage, clips ≥ 24 dB.

    python -m benchmarks tokenizer_quality [--minutes 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import publish
from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.load import load_tokenizer
from halluscope.tokenizers.losses import psnr
from halluscope.tokenizers.train import TrainConfig, train

TARGETS = {"image": {"psnr": 26.0, "usage": 0.30}, "video": {"psnr": 24.0}}


@torch.no_grad()
def evaluate(tok, held_out, batch: int = 16) -> dict:
    """Mean held-out PSNR of the tokenizer and of the grid-sized reference; codebook usage
    (fraction of codes appearing in the held-out tokens)."""
    ours, reference, used = [], [], torch.zeros(tok.vocab_size, dtype=torch.bool)
    xs = torch.stack([x for _, x in held_out.iter_valid()])
    for x in xs.split(batch):
        tokens = tok.encode(x)
        used[tokens.unique()] = True
        ours.append(psnr(x, tok.decode(tokens)))
        small = F.adaptive_avg_pool3d(x, tok.grid) if x.dim() == 5 else F.adaptive_avg_pool2d(x, tok.grid)
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        reference.append(psnr(x, F.interpolate(small, size=x.shape[2:], mode=mode, align_corners=False)))
    return {"psnr": torch.cat(ours).mean().item(), "reference_psnr": torch.cat(reference).mean().item(),
            "usage": used.float().mean().item(), "held_out": len(xs)}


def run(kind: str, world, n_train: int, n_held_out: int, minutes: float, batch: int, root: Path,
        l2_weight: float = 1.0) -> dict:
    """Write the world, train the tiny preset for `minutes`, evaluate on unseen examples."""
    write_world(world, root / f"{kind}_train", n_train)
    # Held-out examples: world indices the training set never saw, through the same files.
    held = dataclasses.replace(world, seed=world.seed + 1)
    write_world(held, root / f"{kind}_held_out", n_held_out)
    cfg = TrainConfig(kind=kind, data=str(root / f"{kind}_train"), out=str(root / f"{kind}_run"), preset="tiny",
                      steps=10**9, batch=batch, max_minutes=minutes, sample_every=10**9, ckpt_every=10**9,
                      progress=False, l2_weight=l2_weight)
    t0 = time.perf_counter()
    last = train(cfg)
    seconds = time.perf_counter() - t0
    tok = load_tokenizer(root / f"{kind}_run" / "model")
    result = evaluate(tok, open_dataset(root / f"{kind}_held_out", tok))
    return {"kind": kind, "steps": last["step"], "train_seconds": round(seconds, 1), "batch": batch, "l2_weight": l2_weight,
            "grid": list(tok.grid), "vocab_size": tok.vocab_size, "train_psnr": last["psnr"], **result,
            "psnr_vs_reference_db": result["psnr"] - result["reference_psnr"],
            "targets": TARGETS[kind], "meets_targets": all(result[k] >= v for k, v in TARGETS[kind].items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tokenizer_quality", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training time per tokenizer")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared machine: oversubscribed threads spin)")
    p.add_argument("--kinds", nargs="+", choices=["image", "video"], default=["image", "video"])
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--video-batch", type=int, default=4)
    p.add_argument("--l2-weight", type=float, default=1.0, help="squared-error weight of the training loss")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    worlds = {"image": (ImageWorld(size=64, seed=0), 2000, 200, args.image_batch),
              "video": (VideoWorld(size=64, frames=16, seed=0), 300, 50, args.video_batch)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            world, n_train, n_held, batch = worlds[kind]
            rows.append(run(kind, world, n_train, n_held, args.minutes, batch, Path(tmp), l2_weight=args.l2_weight))
    result = {"minutes": args.minutes, "threads": args.threads, "results": rows}
    return publish("tokenizer_quality", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = [f"Tiny tokenizers trained for {result['minutes']:g} minutes each ({result['threads']} threads)\n",
           "| tokenizer | grid | steps | train s | held-out PSNR (dB) | grid-average reference (dB) | Δ (dB) "
           "| codebook usage | target | met |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        target = ", ".join(f"{k} ≥ {v:g}" for k, v in r["targets"].items())
        recipe = f"batch {r['batch']}" + (f", L2 weight {r['l2_weight']:g}" if r.get("l2_weight", 1) != 1 else "")
        out.append(f"| tiny {r['kind']} ({recipe}) | {'×'.join(map(str, r['grid']))} | {r['steps']} "
                   f"| {r['train_seconds']} | {r['psnr']:.2f} | {r['reference_psnr']:.2f} "
                   f"| {r['psnr_vs_reference_db']:+.2f} | {r['usage']:.1%} | {target} "
                   f"| {'yes' if r['meets_targets'] else '**no**'} |")
    if result.get("note"):
        out.append(f"\n{result['note']}")
    return "\n".join(out)
