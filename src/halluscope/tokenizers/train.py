"""Tokenizer training: one loop for image VQGANs and 3D clip VQGANs.

Exact resume: the examples of step k are a pure function of (seed, k) (seeded permutations,
epoch after epoch), dead-code restarts draw from a generator seeded by (seed, step), and one
atomically written `train_state.pt` holds everything else (weights, optimizers, codebook
tracker, RNG), so N steps in one go and N/2 + resume + N/2 end with the same weights.

Outputs in --out: model/ (the latest weights, a tokenizer folder), train_state.pt,
train_config.json, metrics.jsonl (one line per step), samples/step_XXXXXX.png (.gif for clips:
inputs on top, reconstructions below).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from halluscope.data import write_clip_grid, write_image_grid
from halluscope.device import pick_device
from halluscope.errors import UserError
from halluscope.io import atomic_path, drop_records_after, write_json
from halluscope.tokenizers.codebook import CodebookTracker
from halluscope.tokenizers.config import config_from_dict, config_to_dict, preset
from halluscope.tokenizers.datasets import open_dataset
from halluscope.tokenizers.load import Tokenizer, build_tokenizer, save_tokenizer
from halluscope.tokenizers.losses import TokenizerLoss, psnr
from halluscope.tokenizers.perceptual import Perceptual

STATE_NAME = "train_state.pt"


@dataclass
class TrainConfig:
    kind: str  # image | video
    data: str
    out: str
    preset: str = "tiny"
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    resolution: int | None = None  # default: the preset's
    frames: int | None = None  # clips only; default: the preset's
    gan_start: int | None = None  # step at which the PatchGAN switches on; None = no GAN
    disc_weight: float = 0.5
    l2_weight: float = 1.0  # squared error added to the L1 reconstruction loss
    perceptual: list[str] = field(default_factory=list)  # local VGG16 / LPIPS weight files
    perceptual_weight: float = 1.0
    usage_window: int = 50  # steps over which codebook usage is measured
    restart_every: int = 25  # steps between dead-code restarts; 0 = never
    sample_every: int = 250
    ckpt_every: int = 250
    max_minutes: float | None = None  # stop (and checkpoint) after this much training time
    seed: int = 0
    resume: bool = False
    progress: bool = True
    device: str | None = None  # None: cuda when available, else cpu
    extra: dict = field(default_factory=dict)  # model config overrides (tests, tuning)


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Dataset indices of step `step`: positions [step*B, (step+1)*B) of an endless stream of
    seeded permutations of range(n), one per epoch."""
    out = []
    for pos in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[i]))
    return out


def write_samples(model: Tokenizer, x: torch.Tensor, path: Path) -> None:
    """Inputs in the first row, their reconstructions in the second."""
    model.eval()
    with torch.no_grad():
        xrec = model(x)[0].clamp(-1, 1)
    model.train()
    grid = torch.cat([x, xrec])
    if x.dim() == 5:
        write_clip_grid(grid, path.with_suffix(".gif"), nrow=len(x))
    else:
        write_image_grid(grid, path.with_suffix(".png"), nrow=len(x))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        state_path = self.out / STATE_NAME
        state = None
        if state_path.exists():
            if not cfg.resume:
                raise UserError(f"{self.out} already holds a training run; pass --resume to continue or choose another --out")
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as e:  # our own file, damaged (a disk error): say which
                raise UserError(f"cannot resume: {state_path} is unreadable ({str(e).splitlines()[0]})") from None
        sizes = {"resolution": cfg.resolution, **({"frames": cfg.frames} if cfg.kind == "video" else {})}
        if state is not None:
            model_config = config_from_dict(state["model_config"])
            # A resumed run keeps its model; one asked for a different one (say --causal on a
            # run that was not) is refused rather than silently trained as it was.
            for key, value in {**sizes, **cfg.extra}.items():
                if value is not None and getattr(model_config, key) != value:
                    raise UserError(f"{self.out} was trained with {key}={getattr(model_config, key)!r}, not "
                                    f"{value!r}; resume without changing it, or choose another --out")
        else:
            model_config = preset(cfg.kind, cfg.preset, **{**sizes, **cfg.extra})
        self.data = open_dataset(cfg.data, model_config)
        self.device = pick_device(cfg.device)

        torch.manual_seed(cfg.seed)
        self.model = build_tokenizer(model_config).to(self.device).train()
        perceptual = None
        if cfg.perceptual:
            perceptual = Perceptual.from_files(cfg.perceptual)
        self.loss = TokenizerLoss(cfg.gan_start, cfg.disc_weight, perceptual=perceptual,
                                  perceptual_weight=cfg.perceptual_weight, resolution=model_config.resolution,
                                  l2_weight=cfg.l2_weight).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.opt_d = None
        if self.loss.discriminator is not None:
            self.opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.tracker = CodebookTracker(model_config.n_embed, model_config.embed_dim, cfg.usage_window)
        self.step = 0
        if state is not None:
            self.load_state(state)
        self.show = self.batch(range(min(8, len(self.data))))

    def batch(self, indices) -> torch.Tensor:
        # A file that fails to decode is warned about by the data layer, which hands over
        # the next usable example instead.
        return torch.stack([self.data[i] for i in indices]).to(self.device)

    # ------------------------------------------------------------------ checkpoints

    def save_state(self) -> None:
        state = {
            "step": self.step,
            "model_config": config_to_dict(self.model.config),
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "tracker": self.tracker.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if self.opt_d is not None:
            state |= {"disc": self.loss.discriminator.state_dict(), "opt_d": self.opt_d.state_dict()}
        with atomic_path(self.out / STATE_NAME) as tmp:
            torch.save(state, tmp)
        save_tokenizer(self.model, self.out / "model")

    def load_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.tracker.load_state_dict(state["tracker"])
        torch.set_rng_state(state["rng"])
        if self.opt_d is not None:
            if "disc" not in state:
                raise UserError(f"{self.out / STATE_NAME} was trained without a GAN; resume without --gan-start")
            self.loss.discriminator.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])

    # ------------------------------------------------------------------ the loop

    def train_step(self) -> dict:
        cfg = self.cfg
        x = self.batch(batch_indices(len(self.data), cfg.batch, self.step, cfg.seed))
        xrec, codebook_loss, tokens, z = self.model(x)
        last_layer = self.model.decoder.conv_out.weight
        loss, logs = self.loss.generator_loss(x, xrec, codebook_loss, self.step, last_layer)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.loss.gan_on(self.step):
            d_loss, d_logs = self.loss.discriminator_loss(x, xrec)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs |= d_logs
        self.tracker.update(tokens, z)
        self.step += 1
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.step)
        if self.step == 1:
            # Codes start on the first batch's encoder outputs, not at taming's tiny uniform
            # init that few latents are near: the codebook is in use from the first steps.
            logs["restarted"] = self.tracker.reseed(self.model.codebook.data, self.opt, gen)
        elif cfg.restart_every and self.step % cfg.restart_every == 0:
            logs["restarted"] = self.tracker.restart_dead(self.model.codebook.data, self.opt, gen)
        return {"step": self.step, **logs, "psnr": psnr(x, xrec.detach()).mean().item(),
                "usage": self.tracker.usage(), "perplexity": self.tracker.perplexity()}

    def run(self) -> dict:
        cfg = self.cfg
        if self.step >= cfg.steps:
            return {"step": self.step, "resumed_finished": True}
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "train_config.json", asdict(cfg))
        drop_records_after(self.out / "metrics.jsonl", self.step)  # lines a killed run wrote past its checkpoint
        if not cfg.perceptual:
            print("train-tokenizer: perceptual loss off (pass --perceptual with local VGG16/LPIPS weights to use it)")
        last = {}
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, desc="train-tokenizer")
        with open(self.out / "metrics.jsonl", "a") as log:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                last = self.train_step()
                last["sec_per_step"] = time.perf_counter() - t0
                if not math.isfinite(last["loss"]):
                    raise UserError(f"training diverged at step {self.step} (loss {last['loss']}); try a lower --lr")
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.3f}", psnr=f"{last['psnr']:.1f}", usage=f"{last['usage']:.2f}")
                bar.update(1)
                final = self.step == cfg.steps or time.monotonic() > deadline
                if self.step % cfg.sample_every == 0 or final:
                    write_samples(self.model, self.show, self.out / "samples" / f"step_{self.step:06d}")
                if self.step % cfg.ckpt_every == 0 or final:
                    self.save_state()
                if final:
                    break
        bar.close()
        return last


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a tokenizer; return the last step's metrics."""
    return Trainer(cfg).run()
