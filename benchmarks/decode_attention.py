"""Decode attention before and after the shared-prefix change: one new query per row against
the KV cache, and whole generations with each decode attention swapped in.

`python -m benchmarks decode_attention [--threads 1 --clock cpu] [--rounds 5]`: N = 16
samples of one 512-token context, `small` preset shapes (8 heads of 32 dims), fp32 on the CPU.
Contenders, run in turn `--rounds` times (medians):

- "fused sdpa" (before): torch's scaled_dot_product_attention over each row's whole cache;
  on the CPU that is its flash-attention kernel, built for long query blocks;
- "math": the same written out as two matmuls and a softmax, still reading the shared
  context once per row;
- "shared prefix" (after, `attention.attend_decode`): the context's keys and values read once
  for the N rows.

The attention alone is timed at cache lengths 512 (first new token) and 1024 (last); the
generation (512 new tokens) with each contender as the model's decode attention.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from benchmarks._common import add_machine_args, publish, setup, side_by_side
from halluscope.gpt import model as model_module
from halluscope.gpt.attention import attend, attend_decode
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings

CONTENDERS = {
    "fused sdpa": lambda q, k, v, shared, group: F.scaled_dot_product_attention(q, k, v),
    "math": lambda q, k, v, shared, group: attend(q, k, v, causal=False, backend="math"),
    "shared prefix": attend_decode,
}


@contextlib.contextmanager
def decode_with(fn):
    """The model's decode attention replaced by `fn` for the duration."""
    original = model_module.attend_decode
    model_module.attend_decode = fn
    try:
        yield
    finally:
        model_module.attend_decode = original


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks decode_attention", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    torch.manual_seed(0)
    config = preset("small", vocab_size=1024, block_size=args.context + args.new)
    n, h, d = args.samples, config.n_head, config.head_dim
    kv = torch.randn(2, n, h, args.context + args.new, d)
    kv[:, 1:, :, :args.context] = kv[:, :1, :, :args.context]  # the shared context, as the cache holds it
    q = torch.randn(n, h, 1, d)
    fns = {}
    for length in (args.context, args.context + args.new):
        k, v = kv[0, :, :, :length], kv[1, :, :, :length]
        for name, fn in CONTENDERS.items():
            fns[f"{name} @ {length}"] = lambda fn=fn, k=k, v=v: fn(q, k, v, args.context, n)
    model = GPT(config).eval()
    prefix = torch.randint(0, config.vocab_size, (1, args.context))

    def generation(fn):
        def run():
            with decode_with(fn):
                model.generate(prefix, args.new, n, SamplingSettings(top_k=100))
        return run

    for name, fn in CONTENDERS.items():
        fns[f"{name} generate"] = generation(fn)
    print(f"timing {len(fns)} runs x {args.rounds} rounds ...", flush=True)
    seconds = side_by_side(fns, args.rounds)
    rows = []
    for what in [f"@ {args.context}", f"@ {args.context + args.new}", "generate"]:
        before = seconds[f"fused sdpa {what}"]
        rows.append({"what": what, **{name: seconds[f"{name} {what}"] for name in CONTENDERS},
                     "speedup": before / seconds[f"shared prefix {what}"]})
    result = {"setting": {"samples": n, "heads": h, "head_dim": d, "context": args.context, "new": args.new,
                          "rounds": args.rounds}, "rows": rows}
    return publish("decode_attention", argv, result, table)


def table(r: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    s = r["setting"]
    out = [f"Decode attention, N = {s['samples']} rows sharing a {s['context']}-token context, {s['heads']} heads x "
           f"{s['head_dim']} dims, fp32 CPU; generation = {s['new']} new tokens with the small GPT\n",
           "| measured | fused sdpa (before) | math | shared prefix (after) | after vs before |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for row in r["rows"]:
        call = row["what"].startswith("@")
        what = f"one attention call, cache of {row['what'][2:]}" if call else f"whole generation of {s['new']} tokens"
        unit, scale = ("ms", 1e3) if call else ("s", 1)
        times = " | ".join(f"{row[name] * scale:.2f} {unit}" for name in ("fused sdpa", "math", "shared prefix"))
        out.append(f"| {what} | {times} | {row['speedup']:.2f}x |")
    return "\n".join(out)
