"""Peak memory (and time) of causal attention, forward + backward, for each backend as the
sequence grows.

`python -m benchmarks attention_memory [--lengths 1024 2048 4096] [--threads 1 --clock cpu]`:
one attention call of the `small` preset's shape (batch 1, 8 heads of 32 dims), fp32 on the
CPU, through `halluscope.gpt.attention.attend` with each backend: "math" (the T×T score
matrix written out, what minGPT-style code does) and "sdpa" (torch's fused kernel; on the CPU
its flash-attention kernel, which never holds the T×T matrix), and "xformers" on a GPU.

Method: each (backend, length) runs in a fresh subprocess, so no allocator cache or earlier
peak carries over. It allocates q, k, v and the output gradient, runs a short warm-up
(kernels, thread pools), reads its peak resident set size (getrusage ru_maxrss), runs the
forward and backward once, and reads the peak again: the difference is the memory the
attention itself needed at its peak (activations, saved tensors, gradients, workspace). On a
GPU the same is read from torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from benchmarks._common import add_machine_args, publish, setup, timed
from halluscope.gpt.attention import attend, xformers_problem

HEADS, HEAD_DIM = 8, 32
TARGETS = {"peak_ratio_at_max": 0.40}


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(backend: str, length: int) -> dict:
    """Measure one (backend, length) in this process: peak bytes above the inputs, seconds."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device=device, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, HEADS, length, HEAD_DIM, device=device)
    small = [t[:, :, :64].detach().requires_grad_() for t in (q, k, v)]
    attend(*small, causal=True, backend=backend).sum().backward()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes(device)

    def forward_backward() -> None:
        attend(q, k, v, causal=True, backend=backend).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = timed(forward_backward)
    return {"backend": backend, "length": length, "peak_bytes": peak_bytes(device) - base, "seconds": seconds,
            "score_matrix_bytes": HEADS * length * length * 4}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks attention_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "LENGTH"), help=argparse.SUPPRESS)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    backends = ["math", "sdpa"]
    gpu = torch.cuda.is_available()
    if gpu and xformers_problem("cuda") is None:
        backends.append("xformers")
    rows = []
    for length in args.lengths:
        for backend in backends:
            out = subprocess.run([sys.executable, "-m", "benchmarks", "attention_memory", "--child", backend,
                                  str(length), "--threads", str(args.threads), "--clock", args.clock],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{backend} T={length}: {rows[-1]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    by = {(r["backend"], r["length"]): r for r in rows}
    first, last = min(args.lengths), max(args.lengths)
    summary = {b: {"peak_vs_math_at_max": by[b, last]["peak_bytes"] / by["math", last]["peak_bytes"],
                   "growth": by[b, last]["peak_bytes"] / by[b, first]["peak_bytes"],
                   "time_vs_math_at_max": by[b, last]["seconds"] / by["math", last]["seconds"]} for b in backends}
    result = {"setting": {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "float32",
                          "device": "cuda" if gpu else "cpu", "method": "cuda max_memory_allocated" if gpu else
                          "ru_maxrss delta in a fresh subprocess", "lengths": args.lengths,
                          "length_growth": last / first},
              "rows": rows, "summary": summary, "targets": TARGETS}
    return publish("attention_memory", argv, result, table)


def table(r: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = []
    s = r["setting"]
    out.append(f"\nCausal attention forward + backward, batch 1 x {s['heads']} heads x {s['head_dim']} dims, "
               f"{s['dtype']} on {s['device']} (peak memory: {s['method']})\n")
    out.append("| backend | T | peak MiB | T×T scores MiB | seconds |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for row in r["rows"]:
        out.append(f"| {row['backend']} | {row['length']} | {row['peak_bytes'] / 2**20:.1f} | "
                   f"{row['score_matrix_bytes'] / 2**20:.0f} | {row['seconds']:.3f} |")
    out.append(f"\n| backend | peak / math at T = {max(s['lengths'])} | growth {min(s['lengths'])} → {max(s['lengths'])} "
               f"(length x{s['length_growth']:g}) | time / math |")
    out.append("| --- | ---: | ---: | ---: |")
    for backend, v in r["summary"].items():
        out.append(f"| {backend} | {v['peak_vs_math_at_max']:.1%} | x{v['growth']:.1f} | {v['time_vs_math_at_max']:.2f} |")
    return "\n".join(out)
