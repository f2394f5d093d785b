"""Tiny tokenizers trained for real (a few dozen steps on a world) for known-answer tests: the
ideal patch tokenizer of probe_helpers.py is causal and local by construction and so hides
what trained tokenizers do (their context tokens leak the hidden pixels)."""

from pathlib import Path

import torch

from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.tokenizers.load import load_tokenizer
from halluscope.tokenizers.train import TrainConfig, train

IMAGE = dict(resolution=32, ch=32, ch_mult=(1, 2), z_channels=8, embed_dim=8, n_embed=32)
VIDEO = dict(resolution=16, frames=8, ch=8, ch_mult=(1, 2), downsample=(2, 4, 4), patch=(1, 2, 2),
             z_channels=8, embed_dim=8, n_embed=32)
WORLDS = {"image": ImageWorld(size=32, seed=0), "video": VideoWorld(size=16, frames=8, seed=0)}


def train_tokenizer(kind: str, root: Path, steps: int = 60, **extra) -> torch.nn.Module:
    """A tokenizer of `kind` trained for `steps` on 16 world examples under root; extra config
    fields (e.g. causal=True) override the tiny defaults."""
    data = root / f"{kind}-world"
    if not data.is_dir():
        write_world(WORLDS[kind], data, 16)
    out = root / f"{kind}-tokenizer-{steps}-{'-'.join(f'{k}={v}' for k, v in sorted(extra.items()))}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only fight each other (10x slower on a busy CPU)
    try:
        train(TrainConfig(kind=kind, data=str(data), out=str(out), steps=steps, batch=4, ckpt_every=steps,
                          sample_every=steps, progress=False, extra={**(IMAGE if kind == "image" else VIDEO), **extra}))
    finally:
        torch.set_num_threads(threads)
    return load_tokenizer(out / "model").eval()
