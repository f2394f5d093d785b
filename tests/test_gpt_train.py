"""GPT training: exact resume, DDP equivalence, non-finite steps, crash-safe checkpoints."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from halluscope.cli import main
from halluscope.data.token_cache import write_token_cache
from halluscope.errors import UserError
from halluscope.gpt import train as train_module
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.train import TrainConfig, checkpoint_dirs, train

GRID = (4, 4)
VOCAB = 12


@pytest.fixture
def cache(tmp_path):
    """64 sequences from a noisy counter (next token = previous + 1 mod V, sometimes random):
    learnable, so the loss must fall."""
    g = torch.Generator().manual_seed(0)
    seq = torch.zeros(64, 16, dtype=torch.long)
    seq[:, 0] = torch.randint(VOCAB, (64,), generator=g)
    for i in range(1, 16):
        noise = torch.randint(VOCAB, (64,), generator=g)
        seq[:, i] = torch.where(torch.rand(64, generator=g) < 0.1, noise, (seq[:, i - 1] + 1) % VOCAB)
    path = tmp_path / "cache"
    write_token_cache(path, seq.view(64, *GRID), vocab_size=VOCAB, sources=[f"ex{i}" for i in range(64)])
    return path


def config(cache, out, **kw) -> TrainConfig:
    base = dict(tokens=str(cache), out=str(out), preset="tiny", steps=20, batch=4, accum=2, lr=3e-3,
                warmup=3, min_lr=3e-4, dropout=0.1, eval_every=10, ckpt_every=10, progress=False)
    return TrainConfig(**{**base, **kw})


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out):
    return load_gpt(out / "model").state_dict()


def test_loss_falls_and_outputs_are_written(cache, tmp_path):
    out = tmp_path / "run"
    last = train(config(cache, out, steps=40, dropout=0.0)).metrics
    curve = losses(out)
    assert len(curve) == 40 and curve[-1] < 0.6 * curve[0]
    assert "val_loss" in last and last["step"] == 40
    assert load_gpt(out / "model").config.grid == GRID


def test_metrics_are_mirrored_to_tensorboard_when_it_is_installed(cache, tmp_path, monkeypatch):
    class FakeWriter:
        scalars = []

        def add_scalar(self, name, value, step):
            self.scalars.append((name, step))

        def close(self):
            self.closed = True

    writer = FakeWriter()
    monkeypatch.setattr(train_module, "tensorboard_writer", lambda folder: writer)
    train(config(cache, tmp_path / "run", steps=3, eval_every=3))
    assert ("loss", 1) in writer.scalars and ("val_loss", 3) in writer.scalars and writer.closed


def test_resume_is_exact(cache, tmp_path, monkeypatch):
    train(config(cache, tmp_path / "straight"))
    real_save = train_module.save_checkpoint

    def save_then_die(out, model, opt, step, *args):
        real_save(out, model, opt, step, *args)
        if step == 10:
            raise KeyboardInterrupt("killed right after the step-10 checkpoint")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(cache, tmp_path / "split"))
    monkeypatch.undo()
    train(config(cache, tmp_path / "split", resume=True))
    straight, split = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_refuses_to_overwrite_a_run_without_resume(cache, tmp_path):
    train(config(cache, tmp_path / "run", steps=10))
    with pytest.raises(UserError, match="--resume"):
        train(config(cache, tmp_path / "run", steps=10))
    assert train(config(cache, tmp_path / "run", steps=10, resume=True)).losses == []  # already finished


def test_max_minutes_stops_with_a_checkpoint_and_resume_continues(cache, tmp_path):
    out = tmp_path / "run"
    first = train(config(cache, out, steps=1000, max_minutes=0.0))  # out of time after the first step
    assert first.metrics["step"] == 1 and "val_loss" in first.metrics
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000001"]
    assert train(config(cache, out, steps=3, resume=True)).metrics["step"] == 3


def test_keeps_the_last_k_checkpoints(cache, tmp_path):
    train(config(cache, tmp_path / "run", steps=20, ckpt_every=5, keep=2))
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000015", "step_00000020"]


def test_a_crash_between_write_and_rename_leaves_the_last_checkpoint_loadable(cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(config(cache, out, steps=10))
    real_replace = os.replace

    def crash_on_checkpoint(src, dst):
        if str(src).endswith(".tmp") and "step_" in str(src):
            raise KeyboardInterrupt("killed between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(train_module.os, "replace", crash_on_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(config(cache, out, resume=True))
    monkeypatch.undo()
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000010"]
    load_gpt(checkpoint_dirs(out)[0])  # still whole
    assert list((out / "checkpoints").glob("*.tmp"))  # what the crash left behind
    train(config(cache, out, resume=True))  # and the run finishes from it
    assert not list((out / "checkpoints").glob("*.tmp"))
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 20


def test_non_finite_steps_are_skipped_then_stop_the_run(cache, tmp_path, monkeypatch):
    real_loss, real_batch = train_module.next_token_loss, train_module.TokenBatches.batch
    poisoned = {24, 26}  # global batches that give a NaN loss: steps 12 and 12 again (accum 2)
    seen = []

    def batch_recorded(self, k, *args):
        seen.append(k)
        return real_batch(self, k, *args)

    def loss_with_nan(model, seq):
        loss = real_loss(model, seq)
        return loss * float("nan") if model.training and seen[-1] in poisoned else loss

    monkeypatch.setattr(train_module.TokenBatches, "batch", batch_recorded)
    monkeypatch.setattr(train_module, "next_token_loss", loss_with_nan)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="non-finite"):
        last = train(config(cache, out, steps=15)).metrics
    assert last["step"] == 15 and max(seen) == 2 * 15 + 2 * 2 - 1  # two batches skipped
    assert all(torch.isfinite(v).all() for v in weights(out).values())

    poisoned.update(range(20, 100))  # every batch from step 10 on
    with pytest.raises(UserError, match="diverged"), pytest.warns(UserWarning, match="non-finite"):
        train(config(cache, tmp_path / "diverge", steps=15, max_bad_steps=3))
    good = checkpoint_dirs(tmp_path / "diverge")[-1]
    assert good.name == "step_00000010"
    assert all(torch.isfinite(v).all() for v in load_gpt(good).state_dict().values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, result_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(cfg)
    torch.save({"state": result.model.state_dict(), "losses": result.losses}, f"{result_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_over_the_same_global_batch(cache, tmp_path):
    steps = 6
    ddp = config(cache, tmp_path / "ddp", steps=steps, batch=2, dropout=0.0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])

    single = train(config(cache, tmp_path / "single", steps=steps, batch=4, dropout=0.0))
    assert r0["losses"] == pytest.approx(single.losses, rel=1e-4)
    assert all(torch.allclose(r0["state"][k], v, atol=1e-5) for k, v in single.model.state_dict().items())


def test_train_gpt_command(cache, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train-gpt", "--tokens", str(cache), "--out", str(out), "--preset", "tiny", "--steps", "4",
                 "--batch", "4", "--eval-every", "2", "--no-progress", "--factorized-pos"])
    assert code == 0 and (out / "model" / "model.safetensors").is_file()
    assert load_gpt(out / "model").config.factorized_pos  # one position table per grid axis
    assert main(["train-gpt", "--tokens", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "token cache" in capsys.readouterr().err


def test_train_gpt_trains_the_llama_block_family(cache, tmp_path):
    out = tmp_path / "llama"
    assert main(["train-gpt", "--tokens", str(cache), "--out", str(out), "--preset", "tiny", "--arch", "llama",
                 "--steps", "40", "--batch", "4", "--lr", "3e-3", "--eval-every", "40", "--no-progress"]) == 0
    model = load_gpt(out / "model")
    assert type(model).__name__ == "LlamaGPT" and model.config.block == "llama" and model.config.grid == GRID
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    curve = losses(out)
    assert curve[-1] < 0.6 * curve[0]  # it learns the counter: rotary positions and SwiGLU work in training


@pytest.mark.slow
def test_train_gpt_runs_unchanged_under_torchrun(cache, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "halluscope", "train-gpt", "--tokens", str(cache), "--out", str(out), "--steps", "3",
           "--batch", "2", "--eval-every", "3", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert load_gpt(out / "model").config.block_size == 16


def test_schedule_and_weight_decay_groups():
    cfg = TrainConfig(tokens="", out="", steps=110, warmup=10, lr=1.0, min_lr=0.1)
    assert train_module.learning_rate(0, cfg) == pytest.approx(0.1)  # warmup starts at lr / warmup
    assert train_module.learning_rate(9, cfg) == pytest.approx(1.0)
    assert train_module.learning_rate(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert train_module.learning_rate(110, cfg) == pytest.approx(0.1)
    model = GPT(preset("tiny", vocab_size=VOCAB, block_size=16))
    decay, free = train_module.make_optimizer(model, cfg, fused=False).param_groups
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear and decay["weight_decay"] == cfg.weight_decay
    assert free["weight_decay"] == 0.0
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))
