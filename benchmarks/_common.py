"""What every benchmark shares: the machine facts, the clock, side-by-side timing, the
machine's matmul rate (the roofline), the transformers GPT-2 peer, and writing results."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from halluscope.gpt.config import GPTConfig
from halluscope.io import write_json

RESULTS = Path(__file__).parent / "results"
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time: with --threads 1 it is barely inflated by "
                             "other processes on a shared machine")


def setup(args: argparse.Namespace) -> None:
    """Apply --threads and --clock."""
    global clock
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]


def machine() -> dict:
    """The facts a reader needs to compare figures across machines."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": gpu, "clock": "cpu" if clock is CLOCKS["cpu"] else "wall"}


def publish(name: str, argv: list[str] | None, result: dict, table: Callable[[dict], str]) -> int:
    """Print the result's markdown table and write results/NAME.json with the machine and the
    exact command that produced it. Returns main's exit status."""
    print(table(result))
    # GPU figures sit beside the CPU ones instead of replacing them: NAME-gpu.json.
    path = RESULTS / f"{name}{'-gpu' if torch.cuda.is_available() else ''}.json"
    command = " ".join(["python -m benchmarks", name, *(argv or [])])
    write_json(path, {"command": command, "machine": machine(), **result})
    print(f"\nwrote {path}")
    return 0


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Best time of `repeats` calls, in seconds of the chosen clock."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def synced(fn: Callable[[], object]) -> Callable[[], None]:
    """fn without gradients, returning only once a GPU has finished its work, so that a
    timer around it measures the work and not the launch."""
    def run() -> None:
        with torch.no_grad():
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


def side_by_side(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each function over `rounds` rounds that run them in turn, so that a
    change in machine load hits every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul(device: torch.device | str = "cpu", size: int | None = None) -> tuple[Callable[[], object], float]:
    """A large square matmul, fp32 2048² on the CPU and bf16 8192² on a GPU (a smaller one
    would leave a GPU idle between launches), and its FLOPs: timed beside a benchmark, its
    rate is the machine's practical peak (the roofline)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def run() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    return run, 2.0 * size**3


def memory_read(device: torch.device | str = "cpu", mib: int = 512) -> tuple[Callable[[], object], float]:
    """A sum over a tensor far larger than any cache, and the bytes it reads: timed beside a
    benchmark, its rate is the machine's practical memory bandwidth (the other roofline)."""
    big = torch.ones(mib * 2**20 // 4, device=device)

    def run() -> None:
        big.sum()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up: fault the pages in
    return run, float(big.numel() * 4)


def model_flops(c: GPTConfig, tokens: int, context: float, backward: bool = False) -> float:
    """Useful FLOPs of running `tokens` tokens through a GPT, each attending to `context` keys
    on average: 2 per weight of every matmul (blocks and head) plus 4·context·n_embd per layer
    for attention scores and their weighted sum; backward costs twice the forward. The count
    is the same whatever the implementation, so FLOP rates compare like with like."""
    per_token = 2 * (12 * c.n_layer * c.n_embd**2 + c.n_embd * c.vocab_size) + 4 * c.n_layer * context * c.n_embd
    return per_token * tokens * (3 if backward else 1)


def gpt2_classes():
    """transformers' (GPT2Config, GPT2LMHeadModel), or ImportError with the reason.

    transformers imports torchvision whenever it finds it installed, and the torchvision here
    does not match torch (importing it crashes), so it is hidden from transformers' package
    check while its GPT-2 module loads; the check is cached, so it stays hidden."""
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: (
        None if name.split(".")[0] == "torchvision" else real(name, package))
    try:
        from transformers import GPT2Config, GPT2LMHeadModel, logging

        logging.set_verbosity_error()  # its warnings about GPT-2's token ids do not apply here
        return GPT2Config, GPT2LMHeadModel
    except Exception as e:  # missing, or broken: either way the peer column is skipped
        raise ImportError(f"transformers is not usable ({str(e).splitlines()[0]}); "
                          "install the extra: pip install -c constraints.txt -e '.[bench]'") from e
    finally:
        importlib.util.find_spec = real
        assert "torchvision" not in sys.modules, "transformers imported torchvision"


def gpt2_like(c: GPTConfig) -> torch.nn.Module:
    """transformers' GPT-2 with our model's dimensions: same layers, heads, width, vocabulary,
    context and exact-erf GELU, no dropout, and no end-of-sequence token (every sample runs to
    its full length, as ours do)."""
    GPT2Config, GPT2LMHeadModel = gpt2_classes()
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def peer_problem() -> str | None:
    """Why the transformers peer cannot run here, or None when it can."""
    try:
        gpt2_classes()
    except ImportError as e:
        return str(e)
    return None
