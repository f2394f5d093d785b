"""KV-cached vs uncached sampling speed: N continuations of the first half of a sequence.

`python -m benchmarks sampling_cache [--quick] [--threads 1 --clock cpu]`. For each preset
(tiny, small) and total length (256, 1024 tokens), both paths of `GPT.generate` draw N=8
samples of the second half after the first half, fp32, on the CPU, with untrained weights
(speed does not depend on them).

The cached path is timed over the whole generation. Re-running the whole sequence at every
step costs more the longer the sequence, and the full run takes many minutes for the larger
cases, so it is estimated: `generate(use_cache=False)` is timed for a few steps starting at
several lengths spread over the range, and the per-step time is interpolated linearly between
those lengths and summed over every step. The cheapest case is also run in full, and the table
shows how far the estimate was from the measurement.

On a machine shared with other jobs, `--threads 1 --clock cpu` times this process's own CPU
seconds, which the other jobs barely disturb; wall time with several threads swings by
several times there.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import add_machine_args, publish, setup, synced, timed
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings

VOCAB, SAMPLES = 1024, 8


def uncached_estimate(model: GPT, prefix: torch.Tensor, steps: int, samples: int, points: int, probe_steps: int,
                      settings: SamplingSettings = SamplingSettings()) -> float:
    """Seconds a full uncached generation of `steps` tokens after `prefix` (1, L) would take,
    interpolated from `points` probes of `probe_steps` steps each (see the module docstring)."""
    length = prefix.shape[1]
    starts = np.linspace(length, length + steps - probe_steps, points).round().astype(int)
    per_step = []
    for start in starts:
        longer = torch.randint(0, model.config.vocab_size, (1, int(start)), device=prefix.device)
        run = synced(lambda: model.generate(longer, probe_steps, samples, settings, use_cache=False))
        per_step.append(timed(run, repeats=2) / probe_steps)
    # Step i runs on a sequence of length+i tokens.
    return float(np.interp(np.arange(length, length + steps), starts, per_step).sum())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sampling_cache",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 256 tokens (a smoke run)")
    parser.add_argument("--points", type=int, default=6, help="sequence lengths probed for the uncached estimate")
    parser.add_argument("--probe-steps", type=int, default=3, help="uncached steps timed at each probed length")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)

    rows = []
    for name in ("tiny", "small"):
        for total in (256,) if args.quick else (256, 1024):
            torch.manual_seed(0)
            model = GPT(preset(name, vocab_size=VOCAB, block_size=total)).eval()
            context = total // 2
            steps = total - context
            prefix = torch.randint(0, VOCAB, (1, context))
            model.generate(prefix, 4, SAMPLES)  # warm-up: allocator, kernels
            cached = timed(lambda: model.generate(prefix, steps, SAMPLES), repeats=3)
            row = {"preset": name, "params": model.num_params(), "total_tokens": total, "context_tokens": context,
                   "new_tokens": steps, "samples": SAMPLES, "cached_s": cached,
                   "uncached_s": uncached_estimate(model, prefix, steps, SAMPLES, args.points, args.probe_steps),
                   "uncached_method": f"estimated from {args.points} lengths x {args.probe_steps} steps"}
            if name == "tiny" and total == 256:  # cheap enough to also measure in full
                row["uncached_measured_s"] = timed(lambda: model.generate(prefix, steps, SAMPLES, use_cache=False),
                                                   repeats=2)
            # The static-shape path (what CUDA runs, graph-captured): on the CPU it only adds the masked reads.
            model.generate(prefix, 4, SAMPLES, static=True)
            row["static_s"] = timed(lambda: model.generate(prefix, steps, SAMPLES, static=True), repeats=3)
            row["cached_tok_s"] = SAMPLES * steps / cached
            row["uncached_tok_s"] = SAMPLES * steps / row["uncached_s"]
            row["speedup"] = row["uncached_s"] / cached
            rows.append(row)
            print(f"{name} {total}: cached {row['cached_tok_s']:.0f} tok/s, uncached ~{row['uncached_tok_s']:.0f} tok/s",
                  flush=True)

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock, "dtype": "float32",
            "device": "cpu", "vocab_size": VOCAB, "samples": SAMPLES}
    result = {"meta": meta, "rows": rows}
    return publish("sampling_cache", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    meta, rows = result["meta"], result["rows"]
    out = [f"KV-cached vs uncached sampling, N={meta['samples']} samples of the second half, fp32, CPU "
           f"({meta['threads']} threads, {meta['clock']} time, torch {meta['torch']})\n",
           "| preset | params | total tokens | cached tok/s | uncached tok/s | speedup | static-shape / cached time |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        static = f"{r['static_s'] / r['cached_s']:.2f}" if "static_s" in r else "–"
        out.append(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['total_tokens']} | {r['cached_tok_s']:.0f} | "
                   f"{r['uncached_tok_s']:.0f} | {r['speedup']:.1f}x | {static} |")
    for r in rows:
        if "uncached_measured_s" in r:
            error = r["uncached_s"] / r["uncached_measured_s"] - 1
            out.append(f"\nUncached times are estimates ({r['uncached_method']}); for {r['preset']} at "
                       f"{r['total_tokens']} tokens the full run took {r['uncached_measured_s']:.2f} s against "
                       f"{r['uncached_s']:.2f} s estimated ({error:+.0%}).")
    return "\n".join(out)
