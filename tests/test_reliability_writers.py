"""Two writers on one output folder, killed lock holders, and a full disk.

Every command that writes an --out folder holds a lock on it for the whole run: a second
writer gets one line naming the holder (pid, host, command) and exit 2, whatever it was about
to do, and the first run finishes with only its own data; the lock of a killed run is taken
over. A write that meets a full disk is one line ("no space left on ...") and leaves nothing
half-written that a later run would take for complete."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from halluscope.cli import main
from halluscope.data import ImageWorld, TokenCache, write_token_cache
from halluscope.errors import UserError
from halluscope.io import lock_path, output_lock, read_jsonl
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

HALLUSCOPE = [sys.executable, "-m", "halluscope"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vq") / "vq"
    save_tokenizer(build_tokenizer(tokenizer_preset("image", "tiny", resolution=32)), folder)
    return folder


def world(folder: Path, n: int, seed: int) -> Path:
    w = ImageWorld(size=32, seed=seed)
    for i in range(n):
        w.write(w.example(i)[0], folder / f"{i:04d}.png")
    return folder


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def save_file_half_then_no_space(tensors, filename, metadata=None):
    """safetensors' save_file meeting a full disk half-way through the weights."""
    Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{partial")
    no_space()


def tiny_cache(folder: Path, n: int) -> Path:
    write_token_cache(folder, torch.randint(0, 16, (n, 4, 4)), 16, [f"x{i}" for i in range(n)])
    return folder


# ----------------------------------------------------------------------------- the lock


def test_a_second_writer_is_told_who_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "halluscope tokenize --out run"):
        assert lock_path(out) == tmp_path / ".run.lock" and lock_path(out).is_file()
        with pytest.raises(UserError) as e:
            with output_lock(tmp_path / "." / "run", "halluscope tokenize --out ./run"):  # the same folder, spelt otherwise
                pass
        assert str(e.value).startswith(f"{tmp_path / '.' / 'run'} is in use by another run (pid {os.getpid()} on ")
        assert "`halluscope tokenize --out run`" in str(e.value)
    assert not lock_path(out).exists()  # nothing left beside the folder
    with output_lock(out, "again"):  # and free again
        pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from halluscope.io import output_lock\n"
        f"lock = output_lock({str(out)!r}, 'killed run')\n"
        "lock.__enter__()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")], timeout=120)
    assert holder.returncode == -signal.SIGKILL
    assert json.loads(lock_path(out).read_text())["command"] == "killed run"  # left behind by the dead run
    with output_lock(out, "next run"):
        assert json.loads(lock_path(out).read_text())["command"] == "next run"


def test_only_rank_0_of_a_torchrun_job_locks(tmp_path, monkeypatch):
    with output_lock(tmp_path / "run", "rank 0"):
        monkeypatch.setenv("RANK", "1")
        with output_lock(tmp_path / "run", "rank 1"):  # the same run's other rank: no refusal
            pass


def start_and_stop_holding_the_lock(argv: list[str], out: Path, timeout: float = 120) -> subprocess.Popen:
    """Start `halluscope argv` and SIGSTOP it as soon as it holds the lock on `out`."""
    proc = subprocess.Popen(HALLUSCOPE + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads(lock_path(out).read_text())["pid"] == proc.pid:
                proc.send_signal(signal.SIGSTOP)
                return proc
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, f"the first run ended before it was seen holding the lock: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def second_writer(argv: list[str], first: subprocess.Popen) -> str:
    """Run the second writer while the first is stopped; return its one stderr line."""
    try:
        out = subprocess.run(HALLUSCOPE + argv, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_tokenize_runs_on_one_cache(tmp_path, tokenizer):
    ours, theirs = world(tmp_path / "a", 48, seed=0), world(tmp_path / "b", 8, seed=1)
    cache = tmp_path / "cache"
    common = ["--tokenizer", str(tokenizer), "--out", str(cache), "--batch", "4", "--shard-size", "8"]
    first = start_and_stop_holding_the_lock(["tokenize", "--data", str(ours), *common], cache)
    line = second_writer(["tokenize", "--data", str(theirs), *common, "--resume"], first)
    assert line.startswith(f"halluscope tokenize: error: {cache} is in use by another run (pid {first.pid} on ")
    assert "`halluscope tokenize --data " in line and str(ours) in line
    assert first.wait(120) == 0, first.communicate()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["data"] == str(ours.resolve())
    assert TokenCache(cache).sources == [f"{i:04d}.png" for i in range(48)]  # the first run's data, all of it
    assert not lock_path(cache).exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_train_gpt_runs_on_one_folder(tmp_path):
    tokens, run = tiny_cache(tmp_path / "tokens", 24), tmp_path / "run"
    argv = ["train-gpt", "--tokens", str(tokens), "--out", str(run), "--steps", "20", "--batch", "2",
            "--ckpt-every", "10", "--eval-every", "10", "--no-progress", "--resume"]
    first = start_and_stop_holding_the_lock(argv, run)
    line = second_writer(argv, first)
    assert line.startswith(f"halluscope train-gpt: error: {run} is in use by another run (pid {first.pid} on ")
    assert first.wait(180) == 0, first.communicate()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 21))  # each step once


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_tokenize_leaves_a_lock_the_resume_takes_over(tmp_path, tokenizer):
    data, cache = world(tmp_path / "a", 48, seed=0), tmp_path / "cache"
    argv = ["tokenize", "--tokenizer", str(tokenizer), "--data", str(data), "--out", str(cache), "--batch", "4",
            "--shard-size", "8"]
    first = start_and_stop_holding_the_lock(argv, cache)
    first.kill()
    first.wait(30)
    assert json.loads(lock_path(cache).read_text())["pid"] == first.pid  # the dead run's lock is still there
    assert main(argv + ["--resume"]) == 0
    assert TokenCache(cache).sources == [f"{i:04d}.png" for i in range(48)]


# ----------------------------------------------------------------------------- a full disk


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_while_tokenizing_is_one_line_and_resumes(tmp_path, tokenizer, monkeypatch, capsys):
    data, cache = world(tmp_path / "a", 12, seed=0), tmp_path / "cache"
    argv = ["tokenize", "--tokenizer", str(tokenizer), "--data", str(data), "--out", str(cache),
            "--shard-size", "4", "--batch", "4"]
    real_save, calls = np.save, []

    def save(file, array, *args, **kwargs):  # the second shard meets a full disk half-way
        calls.append(1)
        if len(calls) == 2:
            file.write(b"\x93NUMPY half a shard")
            no_space()
        return real_save(file, array, *args, **kwargs)
    monkeypatch.setattr(np, "save", save)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"halluscope tokenize: error: no space left on the device holding {cache / 'shards'}")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert not manifest["complete"] and [s["file"] for s in manifest["shards"]] == ["shards/shard_00000.npy"]
    assert sorted(p.name for p in (cache / "shards").iterdir()) == ["shard_00000.npy"] and not temp_files(cache)
    with pytest.raises(UserError, match="is unfinished"):  # nothing takes it for complete
        TokenCache(cache)
    monkeypatch.setattr(np, "save", real_save)
    assert main(argv + ["--resume"]) == 0
    assert TokenCache(cache).sources == [f"{i:04d}.png" for i in range(12)]


def test_a_full_disk_while_training_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    import halluscope.io

    tokens, run = tiny_cache(tmp_path / "tokens", 8), tmp_path / "run"
    argv = ["train-gpt", "--tokens", str(tokens), "--out", str(run), "--steps", "4", "--batch", "2",
            "--ckpt-every", "2", "--no-progress"]
    monkeypatch.setattr(halluscope.io, "save_file", save_file_half_then_no_space)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("halluscope train-gpt: error: no space left on the device holding ")
    assert not list((run / "checkpoints").glob("step_*[0-9]")) and not (run / "model").exists()
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0  # the half-written checkpoint is ignored, then removed
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not temp_files(run)


def test_a_full_disk_on_an_appended_log_is_one_line(tmp_path, monkeypatch, capsys):
    from halluscope.gpt import train

    tokens = tiny_cache(tmp_path / "tokens", 8)
    monkeypatch.setattr(train.MetricsLog, "write", no_space)
    assert main(["train-gpt", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--steps", "2",
                 "--batch", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "halluscope train-gpt: error: no space left on the device holding ")
