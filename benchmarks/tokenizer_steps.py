"""Clip tokenizer variants at equal training steps: how many steps the `tiny` clip preset (and
a few changes to it) needs to reach issue 3's 24 dB on the video world.

`python -m benchmarks tokenizer_steps [--runs "A base@750" "A base@3000" ...]`: each run
trains one variant (a change to the tiny preset's model config, or to the training recipe)
for a fixed number of steps at batch 4 on the 300-clip video world, with `train-tokenizer`'s
own loop, and measures held-out PSNR and codebook usage on 50 unseen clips as
`tokenizer_quality` does. On a GPU each run takes seconds, so step counts can be compared that
a 2-core CPU cannot reach in minutes; `--cpu-seconds` also times a few CPU training steps of
each variant, the price of a step where the 5-minute target is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import publish
from benchmarks.tokenizer_quality import TARGETS, evaluate
from halluscope.data import VideoWorld, write_world
from halluscope.tokenizers import train as tokenizer_train
from halluscope.tokenizers.config import preset
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.load import build_tokenizer, load_tokenizer
from halluscope.tokenizers.losses import TokenizerLoss
from halluscope.tokenizers.train import TrainConfig, train

# name: (model config overrides of the tiny clip preset, training recipe overrides)
VARIANTS = {
    "A base": ({}, {}),
    "B ch64": (dict(ch=64), {}),
    "C patch222": (dict(patch=(2, 2, 2)), {}),
    "D patch122 m122": (dict(patch=(1, 2, 2), ch_mult=(1, 2, 2)), {}),
    "E rb2": (dict(num_res_blocks=2), {}),
    "F e16 n1024": (dict(embed_dim=16, n_embed=1024), {}),
    "G lr2e-3": ({}, dict(lr=2e-3)),
    "H patch144 m122": (dict(patch=(1, 4, 4), ch_mult=(1, 2, 2)), {}),
    "J l2x4": ({}, dict(l2_weight=4.0)),
    "K patch222 ch48": (dict(patch=(2, 2, 2), ch=48), {}),
    "L e16n1024 lr2e-3 l2x4": (dict(embed_dim=16, n_embed=1024), dict(lr=2e-3, l2_weight=4.0)),
    "M lr2e-3 l2x4": ({}, dict(lr=2e-3, l2_weight=4.0)),
}
BATCH = 4


def cpu_seconds_per_step(name: str, threads: int = 2, steps: int = 5) -> float:
    """Wall seconds of a training step (forward, loss, backward, Adam) of one variant on the
    CPU, on random clips: the lower median of the steps after the first (a warm-up), the price
    of a step within the 5-minute CPU budget."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_tokenizer(preset("video", "tiny", **VARIANTS[name][0])).train()
    loss = TokenizerLoss(l2_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(BATCH, 3, 16, 64, 64) * 2 - 1
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        xrec, codebook_loss, _, _ = model(x)
        total, _ = loss.generator_loss(x, xrec, codebook_loss, 0, model.decoder.conv_out.weight)
        opt.zero_grad()
        total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times) // 2 - 1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tokenizer_steps", description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["A base@750", "J l2x4@750", "A base@3000"],
                   help=f"NAME@STEPS, NAME one of: {', '.join(VARIANTS)}")
    p.add_argument("--cpu-seconds", action="store_true", help="also time CPU steps of each variant (2 threads)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = Path(tempfile.mkdtemp())
    world = VideoWorld(size=64, frames=16, seed=0)
    write_world(world, root / "train", 300)
    write_world(dataclasses.replace(world, seed=1), root / "held", 50)
    # Decoded once and kept on the device: a GPU step would otherwise wait on the video decoder.
    clips = [x.to(device) for _, x in open_dataset(root / "train", preset("video", "tiny")).iter_valid()]
    tokenizer_train.open_dataset = lambda path, config: clips
    rows = []
    for spec in args.runs:
        name, _, steps = spec.partition("@")
        model_extra, recipe = VARIANTS[name]
        out = root / f"run{len(rows)}"
        t0 = time.perf_counter()
        train(TrainConfig(kind="video", data=str(root / "train"), out=str(out), steps=int(steps), batch=BATCH,
                          sample_every=10**9, ckpt_every=10**9, progress=False, extra=model_extra, device=device,
                          **recipe))
        tok = load_tokenizer(out / "model")
        row = {"variant": name, "steps": int(steps), "model": model_extra, "recipe": recipe,
               "params": sum(q.numel() for q in tok.parameters()), "seconds": time.perf_counter() - t0,
               **evaluate(tok, open_dataset(root / "held", tok))}
        if args.cpu_seconds:
            row["cpu_seconds_per_step"] = cpu_seconds_per_step(name)
        print(f"{spec}: {row['psnr']:.2f} dB, usage {row['usage']:.2f}", flush=True)
        rows.append(row)
    result = {"setting": {"batch": BATCH, "train_clips": 300, "held_out": 50, "device": device},
              "target_psnr": TARGETS["video"]["psnr"], "rows": rows}
    return publish("tokenizer_steps", argv, result, table)


def table(r: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = [f"Clip tokenizer variants (4×16×16 grid), batch {r['setting']['batch']}, on {r['setting']['device']}; "
           f"target {r['target_psnr']:g} dB\n",
           "| variant | changes to the tiny preset | steps | held-out PSNR (dB) | grid-average reference (dB) "
           "| codebook usage | CPU s/step |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        changes = ", ".join(f"{k}={v}" for k, v in {**row["model"], **row["recipe"]}.items()) or "none"
        cpu = f"{row['cpu_seconds_per_step']:.2f}" if "cpu_seconds_per_step" in row else "–"
        out.append(f"| {row['variant']} | {changes} | {row['steps']} | {row['psnr']:.2f} | {row['reference_psnr']:.2f} "
                   f"| {row['usage']:.0%} | {cpu} |")
    if r.get("note"):
        out.append(f"\n{r['note']}")
    return "\n".join(out)
