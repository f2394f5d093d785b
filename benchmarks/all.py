"""The default suite (what `make bench` runs), then docs/benchmarks.md regenerated.

`python -m benchmarks all [--threads N --clock cpu]`: each benchmark runs in its own
subprocess (a fresh allocator and thread pool), with the given threads and clock. Left out,
because they train models for minutes and measure quality rather than speed: gpt_training,
tokenizer_quality, tokenizer_steps (meant for a GPU), tokenizer_causal; sampling_cache (issue
4's length sweep) is superseded by sampling_peers. Their JSON, when present, is still rendered. About 10 minutes
on 2 cores (9 min 21 s measured, the bench extra's install included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks import docs

# name: its arguments beyond --threads/--clock, sized to keep the suite within 15 minutes on 2 cores.
SUITE = {
    "sampling_peers": [],
    "decode_attention": ["--rounds", "2", "--new", "256"],
    "training_peers": [],
    "attention_memory": [],
    "tokenizer_throughput": [],
    "probe_throughput": [],
    "app_load": [],
}
TAKES_CLOCK = {"sampling_peers", "decode_attention", "training_peers", "attention_memory", "tokenizer_throughput"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks all", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: each benchmark's own)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--only", nargs="+", choices=sorted(SUITE), help="run only these")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or SUITE:
        extra = SUITE[name] + (["--threads", str(args.threads)] if args.threads else [])
        extra += ["--clock", args.clock] if name in TAKES_CLOCK else []
        print(f"\n=== python -m benchmarks {name} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        if subprocess.run([sys.executable, "-m", "benchmarks", name, *extra]).returncode:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    docs.main([])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
