"""Continuation-probe throughput: the whole probe (sampling, decoding and every metric) on
the tiny presets, against the sampling and decoding alone as the reference measured in the
same run, so the table shows both examples/s and what the metrics cost on top.

`python -m benchmarks probe_throughput [--examples 100 --samples 8 --batch 8 --threads 1]`: an image
world of 64² examples, the tiny image tokenizer and tiny GPT (untrained: speed does not
depend on the weights), contexts 0.25, 0.5, 0.75, N samples each, fp32 on the CPU.
examples/s counts examples finished with all their contexts.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import publish
from halluscope.data import ImageWorld, write_world
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.probes.context import context_split
from halluscope.probes.probe import ProbeConfig, prepare, run_probe
from halluscope.probes.samplers import GPTSampler, load_examples
from halluscope.tokenizers import build_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

CONTEXTS = [0.25, 0.5, 0.75]


@torch.no_grad()
def sample_only(examples, tokenizer, sampler, samples: int, batch: int) -> float:
    """Seconds to draw and decode the same continuations, batched the same way, with no
    metrics: the reference."""
    start = time.perf_counter()
    truths = prepare(examples, tokenizer, batch)
    grid = tuple(truths[0].tokens.shape)
    for b in range(0, len(examples), batch):
        tokens = torch.stack([t.tokens for t in truths[b:b + batch]])  # (B, *grid)
        for context in CONTEXTS:
            units, n_ctx = context_split(grid, context)
            new = sampler.sample(examples[b:b + batch], tokens, units, n_ctx, samples, torch.Generator().manual_seed(b))
            for seq, drawn in zip(tokens.flatten(1), new):
                full = torch.cat([seq[None, :n_ctx].expand(samples, -1), drawn], 1)
                tokenizer.decode(full.view(samples, *grid))
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks probe_throughput", description=__doc__)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="examples per GPT call (default 8)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tokenizer_preset("image", "tiny")).eval()
    grid = tuple(tokenizer.grid)
    gpt = GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid)).eval()
    sampler = GPTSampler(gpt, "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        write_world(ImageWorld(size=tokenizer.resolution), Path(tmp) / "world", args.examples)
        examples, _ = load_examples(Path(tmp) / "world", tokenizer)
        reference = sample_only(examples, tokenizer, sampler, args.samples, args.batch)
        start = time.perf_counter()
        records = run_probe(examples, tokenizer, [sampler], ProbeConfig(CONTEXTS, samples=args.samples, batch=args.batch),
                            Path(tmp) / "run")
        probe = time.perf_counter() - start
    row = {"examples": args.examples, "samples": args.samples, "batch": args.batch, "contexts": len(CONTEXTS), "records": len(records),
           "grid": list(grid), "gpt_params": gpt.num_params(), "probe_s": probe, "sample_only_s": reference,
           "examples_per_s": args.examples / probe, "sample_only_examples_per_s": args.examples / reference,
           "metric_overhead": probe / reference}
    meta = {"threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "contexts": CONTEXTS}
    result = {"meta": meta, "rows": [row]}
    return publish("probe_throughput", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    row, threads = result["rows"][0], result["meta"]["threads"]
    grid = row["grid"]
    return "\n".join([
        f"Continuation probe, tiny presets, {row['examples']} examples x {row['contexts']} contexts x {row['samples']} "
        f"samples, batch {row['batch']}, {grid[0]}x{grid[1]} tokens per image, fp32 CPU, {threads} thread(s)\n",
        "| run | seconds | examples/s | ratio to sampling only |",
        "| --- | ---: | ---: | ---: |",
        f"| sampling + decoding only (reference) | {row['sample_only_s']:.1f} | "
        f"{row['sample_only_examples_per_s']:.2f} | 1.00 |",
        f"| full probe (all metrics, records, summary) | {row['probe_s']:.1f} | {row['examples_per_s']:.2f} | "
        f"{row['metric_overhead']:.2f} |"])
