"""GPT training on token caches, from one CPU process to `torchrun` on many GPUs.

One loop, nanoGPT-style: AdamW (no decay on norms, embeddings and biases), linear warmup then
cosine decay, gradient accumulation and clipping, bf16 autocast on CUDA. Under `torchrun` the
same code wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on CPU); every rank
reads a disjoint slice of each global batch, and only rank 0 writes.

Exact resume: the order of examples is a pure function of (seed, epoch), so a checkpoint
needs only the weights, the optimizer, the step, the data position (micro-batches consumed;
it runs ahead of the step when a non-finite step is skipped) and the torch RNG state
(dropout) to continue bit for bit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from halluscope.data.token_cache import TokenCache
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt, save_gpt
from halluscope.gpt.config import preset
from halluscope.gpt.base import TokenModel
from halluscope.gpt.build import build_gpt
from halluscope.io import atomic_path, drop_records_after, write_json

# Peak dense bf16 FLOP/s of common training GPUs, for MFU; other devices report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainConfig:
    tokens: str
    out: str
    preset: str = "tiny"
    steps: int = 1000
    batch: int = 16  # sequences per rank per micro-step
    accum: int = 1  # micro-steps per optimizer step
    lr: float = 6e-4
    warmup: int = 100
    min_lr: float = 6e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    factorized_pos: bool = False  # one position table per grid axis (see GPTConfig)
    arch: str = "gpt"  # the block family: gpt (minGPT-style) | llama (RMSNorm, SwiGLU, rotary positions)
    compile: bool = False
    grad_checkpoint: bool = False
    dtype: str = "auto"  # auto | fp32 | bf16
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 200
    keep: int = 3  # checkpoints kept on disk
    val_fraction: float = 0.05
    max_bad_steps: int = 5  # non-finite steps in a row before the run stops
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    seed: int = 0
    resume: bool = False
    progress: bool = True


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group `torchrun` describes in the environment, or run alone."""
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return Dist(rank, world, torch.device("cuda", local))
    dist.init_process_group("gloo")
    return Dist(rank, world, torch.device("cpu"))


# ----------------------------------------------------------------------------- data


class TokenBatches:
    """Sequences of a token cache split into train / validation, served as global batches.

    The k-th global batch covers examples [k*G, (k+1)*G) of an endless stream made of
    seeded permutations of the training set, epoch after epoch; rank r takes its B rows.
    """

    def __init__(self, cache: TokenCache, val_fraction: float, seed: int):
        flat = torch.as_tensor(np.asarray(cache.sequences()), dtype=torch.long)  # (N, L)
        n_val = max(1, round(len(flat) * val_fraction)) if len(flat) > 1 else 0
        if len(flat) - n_val < 1:
            raise UserError(f"token cache {cache.path} has {len(flat)} examples: too few to train on")
        # A damaged shard, or one from another tokenizer: the embedding would fail mid-training.
        outside = [int(t) for t in (flat.min(), flat.max()) if not 0 <= t < cache.vocab_size] if len(flat) else []
        if outside:
            raise UserError(f"token cache {cache.path} holds token {outside[0]}, outside its vocabulary of "
                            f"{cache.vocab_size}")
        # The held-out split is the last examples, so it never depends on the seed.
        self.train, self.val = flat[: len(flat) - n_val], flat[len(flat) - n_val:]
        self.seed = seed

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train), generator=g)

    def batch(self, k: int, rows: int, rank: int, world: int) -> torch.Tensor:
        """Rows [rank*rows, (rank+1)*rows) of global batch k; (rows, L)."""
        start = (k * world + rank) * rows
        idx = [self._order(i // len(self.train))[i % len(self.train)] for i in range(start, start + rows)]
        return self.train[torch.stack(idx)]

    def val_batches(self, rows: int, count: int) -> list[torch.Tensor]:
        return [b for b in self.val.split(rows)][:count]


# ----------------------------------------------------------------------------- optimization


def make_optimizer(model: TokenModel, cfg: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW that decays only matrices of Linear layers; norms, embeddings and biases are free."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, torch.nn.Linear) and name == "weight" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "fp32" or (cfg.dtype == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise UserError("--dtype bf16 needs a CUDA device; use --dtype fp32 on the CPU")
    return torch.bfloat16


def mfu(model: TokenModel, tokens_per_s: float, device: torch.device) -> float | None:
    """Model FLOP utilization: 6·params + attention FLOPs per token over the GPU's bf16 peak."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    c = model.config
    flops_per_token = 6 * model.num_params() + 12 * c.n_layer * c.n_embd * c.block_size
    return flops_per_token * tokens_per_s / peak


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Folders still named *.tmp were cut off mid-write."""
    return sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def save_checkpoint(out: Path, model: TokenModel, opt: torch.optim.Optimizer, step: int, cursor: int,
                    cfg: TrainConfig) -> Path:
    """Write checkpoints/step_N as a whole: into step_N.tmp, then one rename."""
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_gpt(model, tmp)
    state = {
        "step": step,
        "cursor": cursor,
        "optimizer": opt.state_dict(),
        # Only torch draws random numbers here (dropout); the data order is seeded separately.
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "train_config": json.dumps(asdict(cfg)),
    }
    with atomic_path(tmp / "train_state.pt") as f:
        torch.save(state, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(out)[: -cfg.keep]:
        # Renamed first (one atomic step), so a kill mid-delete leaves a *.tmp folder, never a
        # half-deleted checkpoint that still looks complete.
        trash = old.with_name(old.name + ".tmp")
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model: TokenModel, opt: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore weights, optimizer and RNG states from a checkpoint folder; return its step
    and data position."""
    loaded = load_gpt(ckpt)
    model.load_state_dict(loaded.state_dict())
    state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["cursor"])


def tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter into `folder` when the tensorboard package is installed, else None."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


class MetricsLog:
    """One JSON line per step in metrics.jsonl, mirrored to TensorBoard when it is installed."""

    def __init__(self, out: Path):
        self.file = open(out / "metrics.jsonl", "a")
        self.tensorboard = tensorboard_writer(out / "tensorboard")

    def write(self, metrics: dict) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in metrics.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, metrics["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


# ----------------------------------------------------------------------------- the loop


def build_model(cfg: TrainConfig, cache: TokenCache) -> TokenModel:
    """The preset in the chosen block family, sized to the cache: its vocabulary, sequence
    length and grid."""
    model_cfg = preset(cfg.preset, vocab_size=cache.vocab_size, block_size=cache.seq_len,
                       grid=tuple(cache.grid), dropout=cfg.dropout, factorized_pos=cfg.factorized_pos,
                       tokenizer=cache.tokenizer, block=cfg.arch)
    return build_gpt(model_cfg)


def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, amp: torch.dtype | None) -> float:
    model.eval()
    losses = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for x in batches:
            losses.append(next_token_loss(model, x.to(device)).item())
    model.train()
    return sum(losses) / max(1, len(losses))


def next_token_loss(model: torch.nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each token given the ones before it; seq (B, L)."""
    logits = model(seq[:, :-1])  # (B, L-1, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), seq[:, 1:].flatten())


@dataclass
class TrainResult:
    model: TokenModel  # the trained weights (unwrapped from DDP)
    metrics: dict  # the last step's logged metrics
    losses: list[float]  # training loss of each step this call ran


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) a training run. Rank 0 writes everything."""
    env = init_distributed()
    try:
        return _train(cfg, env)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: Dist) -> TrainResult:
    out = Path(cfg.out)
    cache = TokenCache(cfg.tokens)
    data = TokenBatches(cache, cfg.val_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, cache).to(env.device)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing = True
    opt = make_optimizer(model, cfg, fused=env.device.type == "cuda")

    step, cursor = 0, 0
    done = checkpoint_dirs(out)
    if cfg.resume and done:
        step, cursor = load_checkpoint(done[-1], model, opt)
    elif done and not cfg.resume:
        raise UserError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    if step >= cfg.steps:
        return TrainResult(model, {"step": step}, [])

    net = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    amp = autocast_dtype(cfg, env.device)
    val = data.val_batches(cfg.batch, cfg.eval_batches)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", asdict(cfg))
        drop_records_after(out / "metrics.jsonl", step)
        for stale in (out / "checkpoints").glob("*.tmp"):  # cut off mid-write by an earlier kill
            shutil.rmtree(stale)
    log = MetricsLog(out) if env.main else None
    bar = tqdm(total=cfg.steps, initial=step, disable=not (env.main and cfg.progress), desc="train-gpt")
    tokens_per_step = cfg.batch * cfg.accum * env.world * (cache.seq_len - 1)
    bad_in_a_row, last, losses = 0, {}, []
    t0 = time.perf_counter()
    deadline = None if cfg.max_minutes is None else time.perf_counter() + 60 * cfg.max_minutes
    while step < cfg.steps:
        loss, norm = train_step(net, opt, data, step, cursor, cfg, env, amp)
        cursor += cfg.accum
        if not math.isfinite(norm):
            bad_in_a_row += 1
            warnings.warn(f"step {step}: non-finite loss or gradient ({loss:.4g}); step skipped", stacklevel=1)
            if bad_in_a_row >= cfg.max_bad_steps:
                raise UserError(f"training diverged: {bad_in_a_row} non-finite steps in a row at step {step}; "
                                f"the last good checkpoint is {checkpoint_dirs(out)[-1] if checkpoint_dirs(out) else 'none'}")
            continue  # the weights were not touched; the next batch gets the same step
        bad_in_a_row = 0
        step += 1
        losses.append(loss)
        dt, t0 = time.perf_counter() - t0, time.perf_counter()
        last = {"step": step, "loss": loss, "lr": learning_rate(step - 1, cfg), "grad_norm": norm,
                "tokens_per_s": tokens_per_step / dt}
        util = mfu(model, last["tokens_per_s"], env.device)
        if util is not None:
            last["mfu"] = util
        out_of_time = deadline is not None and agreed(time.perf_counter() > deadline, env)
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            last["val_loss"] = evaluate(net, val, env.device, amp) if val else float("nan")
        if env.main:
            log.write(last)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{last['tokens_per_s']:.0f}",
                            **({"mfu": f"{util:.1%}"} if util is not None else {}))
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
                save_checkpoint(out, model, opt, step, cursor, cfg)
                save_gpt(model, out / "model")  # the latest weights, for sampling
        if out_of_time:
            break
    bar.close()
    if log:
        log.close()
    return TrainResult(model, last, losses)


def agreed(flag: bool, env: Dist) -> bool:
    """True on every rank when it is true on rank 0 (time limits differ slightly per rank)."""
    if env.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, data: TokenBatches, step: int, cursor: int,
               cfg: TrainConfig, env: Dist, amp: torch.dtype | None) -> tuple[float, float]:
    """One optimizer step over the `accum` micro-batches from global batch `cursor` on;
    returns (mean loss, gradient norm). A non-finite norm means the optimizer did not step."""
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, cfg)
    total = 0.0
    for micro in range(cfg.accum):
        x = data.batch(cursor + micro, cfg.batch, env.rank, env.world).to(env.device)
        # DDP all-reduces gradients only on the last micro-batch.
        sync = micro == cfg.accum - 1 or not isinstance(net, DistributedDataParallel)
        with (contextlib.nullcontext() if sync else net.no_sync()), torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
            loss = next_token_loss(net, x) / cfg.accum
            loss.backward()
        total += loss.item()
    # With clipping off the norm is still computed: it is how a non-finite step is caught.
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf).item()
    if math.isfinite(norm):
        opt.step()
    opt.zero_grad(set_to_none=True)
    if env.world > 1:
        mean = torch.tensor([total], device=env.device)
        dist.all_reduce(mean)
        total = mean.item() / env.world
    return total, norm
