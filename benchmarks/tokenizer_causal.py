"""What a causal encoder costs: the demo's tokenizers (its worlds, its `train-tokenizer` flags:
replicate padding, 64 codes, no restarts, its batches) trained with and without `--causal` for
the same fixed number of steps, then held-out PSNR (with its grid-average reference) and
codebook usage as `tokenizer_quality` measures them, and the leak that causality removes: the
share of the context tokens (the first half of the token rows / latent frames) that change
when the rest of the example is replaced by another held-out example's.

    python -m benchmarks tokenizer_causal [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import publish
from benchmarks.tokenizer_quality import evaluate
from halluscope.cli import main as halluscope
from halluscope.data import write_world
from halluscope.demo import CLIP, IMAGE, Modality
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.load import load_tokenizer

HELD_OUT = {"image": 200, "clip": 50}
TRAIN = {"image": 1000, "clip": 300}  # the demo trains on 1000 of each; 300 clips are plenty for 300 steps


@torch.no_grad()
def context_leak(tok, xs: torch.Tensor, batch: int = 16) -> float:
    """Share of the tokens of the first half of the grid's rows (latent frames) that change when
    everything after their pixels is replaced by the next example's."""
    u = tok.grid[0] // 2
    start = u * xs.shape[2] // tok.grid[0]
    swapped = xs.clone()
    swapped[:, :, start:] = xs.roll(1, 0)[:, :, start:]
    changed = [(tok.encode(a)[:, :u] != tok.encode(b)[:, :u]).float().flatten()
               for a, b in zip(xs.split(batch), swapped.split(batch))]
    return torch.cat(changed).mean().item()


def run(m: Modality, causal: bool, steps: int, root: Path) -> dict:
    """Train the demo's tokenizer for `steps` steps (causal or not) and evaluate it held out."""
    out = root / f"{m.name}-{'causal' if causal else 'full'}"
    t0 = time.perf_counter()
    code = halluscope(["train-tokenizer", *m.tokenizer_flags, "--data", str(root / f"{m.name}-train"),
                       "--out", str(out), "--preset", "tiny", "--steps", str(steps), "--batch", str(m.tokenizer_batch),
                       "--sample-every", str(steps), *(["--causal"] if causal else [])])
    if code:
        raise SystemExit(f"train-tokenizer failed for {m.name}")
    seconds = time.perf_counter() - t0
    tok = load_tokenizer(out / "model")
    held_out = open_dataset(root / f"{m.name}-held-out", tok)
    xs = torch.stack([x for _, x in held_out.iter_valid()])
    return {"kind": m.name, "causal": causal, "steps": steps, "batch": m.tokenizer_batch, "grid": list(tok.grid),
            "train_seconds": round(seconds, 1), **evaluate(tok, held_out), "context_leak": context_leak(tok, xs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tokenizer_causal", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of every tokenizer (the same for all)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared machine: oversubscribed threads spin)")
    p.add_argument("--kinds", nargs="+", choices=["image", "clip"], default=["image", "clip"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for m in (IMAGE, CLIP):
            if m.name not in args.kinds:
                continue
            write_world(m.world, root / f"{m.name}-train", TRAIN[m.name])
            # held out: world indices the training split never saw, as the demo's (seed 1)
            write_world(dataclasses.replace(m.world, seed=1), root / f"{m.name}-held-out", HELD_OUT[m.name])
            rows += [run(m, causal, args.steps, root) for causal in (False, True)]
    result = {"steps": args.steps, "threads": args.threads, "minutes": round((time.perf_counter() - t0) / 60, 1),
              "results": rows}
    return publish("tokenizer_causal", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = [f"The demo's tokenizers, {result['steps']} training steps each ({result['threads']} thread(s), "
           f"{result['minutes']:g} minutes in all)\n",
           "| tokenizer | encoder | grid | train s | held-out PSNR (dB) | Δ causal (dB) | grid-average reference (dB) "
           "| codebook usage | context leak |",
           "|---|---|---|---|---|---|---|---|---|"]
    full = {r["kind"]: r for r in result["results"] if not r["causal"]}
    for r in result["results"]:
        delta = f"{r['psnr'] - full[r['kind']]['psnr']:+.2f}" if r["causal"] and r["kind"] in full else ""
        out.append(f"| {r['kind']} (batch {r['batch']}) | {'causal' if r['causal'] else 'non-causal'} "
                   f"| {'×'.join(map(str, r['grid']))} | {r['train_seconds']} | {r['psnr']:.2f} | {delta} "
                   f"| {r['reference_psnr']:.2f} | {r['usage']:.1%} | {r['context_leak']:.1%} |")
    return "\n".join(out)
