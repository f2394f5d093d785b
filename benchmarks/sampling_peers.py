"""Sampling throughput against the samplers a user would pick instead, prefix sharing, and
decoding's share of the machine's matmul rate.

`python -m benchmarks sampling_peers [--threads 1 --clock cpu] [--rounds 3]`. One GPT (the
`small` preset, vocabulary 1024, untrained: speed does not depend on the weights) continues a
512-token context by 512 tokens with top-k sampling (k = 100), fp32 on the CPU (bf16 on a GPU).

1. Peers, N = 8 samples of one context, in tokens/s (sampled tokens / seconds, prefill
   included): ours (`GPT.generate`: the context is run once and its KV cache shared by the N
   samples); `transformers` GPT-2 with the same layers, heads, width, vocabulary and context,
   `generate(do_sample=True, top_k=100, num_return_sequences=8, use_cache=True)`; and the
   naive sampler of VQGAN-GPT / minGPT, the same model re-running the whole sequence for
   every new token (`generate(use_cache=False)`). The naive run would take many minutes, so it
   is estimated: timed for a few steps at several lengths, interpolated and summed (see
   `sampling_cache`, which checks the estimate against a full run).
2. Prefix sharing: N = 1, 4, 16 continuations of one context against N independent contexts.
3. Roofline: the useful FLOP rate of decoding N = 16 samples (see `_common.model_flops`)
   against a large matmul timed in the same rounds.

Ours, the peer and the matmul run in turn, `--rounds` times; each figure is the median.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import (
    add_machine_args,
    gpt2_like,
    matmul,
    memory_read,
    model_flops,
    peer_problem,
    publish,
    setup,
    side_by_side,
    synced,
)
from benchmarks.sampling_cache import uncached_estimate
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings

TARGETS = {"vs_naive": 20.0, "vs_transformers": 1.3, "decode_roofline": 0.30}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sampling_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new", type=int, default=512, help="tokens sampled after the context")
    parser.add_argument("--samples", type=int, default=8, help="N for the comparison with the peers")
    parser.add_argument("--sharing", type=int, nargs="+", default=[1, 4, 16], help="N for prefix sharing")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", type=int, default=4, help="lengths probed for the naive estimate")
    parser.add_argument("--probe-steps", type=int, default=2, help="naive steps timed at each probed length")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    config = preset(args.preset, vocab_size=args.vocab, block_size=args.context + args.new)
    model = GPT(config).to(device, dtype).eval()
    contexts = torch.randint(0, args.vocab, (max(args.sharing), args.context), device=device)
    prefix = contexts[:1]
    n, new, k = args.samples, args.new, args.top_k

    def ours(prompts: torch.Tensor, samples: int):
        return synced(lambda: model.generate(prompts, new, samples, SamplingSettings(top_k=k)))

    fns = {"ours": ours(prefix, n)}
    problem = peer_problem()
    if problem is None:
        peer = gpt2_like(config).to(device, dtype).eval()
        fns["transformers"] = synced(lambda: peer.generate(prefix, do_sample=True, top_k=k, max_new_tokens=new,
                                                           num_return_sequences=n, use_cache=True))
        peer.generate(prefix, do_sample=True, top_k=k, max_new_tokens=4, num_return_sequences=n)  # warm-up
    else:
        print(f"skipping the transformers column: {problem}")
    model.generate(prefix, 4, n, SamplingSettings(top_k=k))  # warm-up
    for s in args.sharing:
        fns[f"shared {s}"], fns[f"independent {s}"] = ours(prefix, s), ours(contexts[:s], 1)
    fns["matmul"], matmul_flops = matmul(device)
    fns["memory read"], read_bytes = memory_read(device)
    # The shape decoding actually multiplies: N rows through the widest weight (the MLP's).
    rows_in = torch.randn(max(args.sharing), config.n_embd, device=device, dtype=dtype)
    weight = torch.randn(config.n_embd, 4 * config.n_embd, device=device, dtype=dtype)
    fns["decode-shaped matmul"] = synced(lambda: [rows_in @ weight for _ in range(100)])
    print(f"timing {len(fns)} runs x {args.rounds} rounds ...", flush=True)
    seconds = side_by_side(fns, args.rounds)
    naive = uncached_estimate(model, prefix, new, n, args.points, args.probe_steps, SamplingSettings(top_k=k))

    peak = matmul_flops / seconds["matmul"]
    peers = {"ours_tok_s": n * new / seconds["ours"], "naive_tok_s": n * new / naive,
             "naive_method": f"estimated from {args.points} lengths x {args.probe_steps} steps"}
    peers["vs_naive"] = naive / seconds["ours"]
    if problem is None:
        peers["transformers_tok_s"] = n * new / seconds["transformers"]
        peers["vs_transformers"] = seconds["transformers"] / seconds["ours"]
    sharing = []
    for s in args.sharing:
        sharing.append({"samples": s, "shared_tok_s": s * new / seconds[f"shared {s}"],
                        "independent_tok_s": s * new / seconds[f"independent {s}"],
                        "speedup": seconds[f"independent {s}"] / seconds[f"shared {s}"]})
    # Decoding roofline at the largest N: the prefill once, then N rows of `new` steps whose
    # context grows from `context` to context + new.
    s = max(args.sharing)
    flops = model_flops(config, args.context, args.context / 2) + model_flops(config, s * new,
                                                                              args.context + new / 2)
    small_rate = 100 * 2 * rows_in.shape[0] * weight.numel() / seconds["decode-shaped matmul"]
    bandwidth = read_bytes / seconds["memory read"]
    floor = decode_bytes(model, s, args.context, new, dtype.itemsize) / bandwidth
    roofline = {"samples": s, "seconds": seconds[f"shared {s}"], "flop_s": flops / seconds[f"shared {s}"], "matmul_flop_s": peak,
                "fraction": flops / seconds[f"shared {s}"] / peak, "decode_matmul_flop_s": small_rate,
                "decode_matmul_fraction": small_rate / peak, "bandwidth_bytes_s": bandwidth,
                "memory_floor_s": floor, "of_memory_roofline": floor / seconds[f"shared {s}"]}
    result = {"setting": {"preset": args.preset, "params": model.num_params(), "n_layer": config.n_layer,
                          "n_head": config.n_head, "n_embd": config.n_embd, "vocab": args.vocab,
                          "context": args.context, "new": new, "samples": n, "top_k": k, "rounds": args.rounds,
                          "device": device.type, "dtype": str(dtype).removeprefix("torch.")},
              "transformers_skipped": problem, "seconds": seconds, "peers": peers, "sharing": sharing,
              "roofline": roofline, "targets": TARGETS}
    return publish("sampling_peers", argv, result, table)


def decode_bytes(model: GPT, samples: int, context: int, new: int, itemsize: int) -> float:
    """Bytes decoding `new` tokens for `samples` rows must read from memory at the least: every
    weight once per step, and at every step each layer's cached keys and values, those of the
    shared context once and each row's own ones per row."""
    c = model.config
    per_position = c.n_layer * 2 * c.n_embd * itemsize  # keys and values of one position, all layers
    own_positions = samples * new * (new - 1) / 2  # row-specific positions read, summed over the steps
    return new * model.num_params() * itemsize + per_position * (new * context + own_positions)


def table(r: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = []
    s, p = r["setting"], r["peers"]
    out.append(f"\n{s['preset']} GPT ({s['n_layer']}x{s['n_head']}x{s['n_embd']}, vocab {s['vocab']}), {s['context']} "
               f"context + {s['new']} new tokens, N = {s['samples']}, top-k {s['top_k']}, {s['dtype']} on {s['device']}\n")
    out.append("| sampler | tokens/s | ours is ... x faster | target |")
    out.append("| --- | ---: | ---: | ---: |")
    out.append(f"| ours (KV cache, shared prefix) | {p['ours_tok_s']:.0f} | 1.00 | |")
    if "transformers_tok_s" in p:
        out.append(f"| transformers GPT-2 generate(use_cache=True) | {p['transformers_tok_s']:.0f} | "
                   f"{p['vs_transformers']:.2f} | ≥ {r['targets']['vs_transformers']} |")
    else:
        out.append(f"| transformers GPT-2 | not measured: {r['transformers_skipped']} | | |")
    out.append(f"| naive re-forward ({p['naive_method']}) | {p['naive_tok_s']:.1f} | {p['vs_naive']:.1f} | "
               f"≥ {r['targets']['vs_naive']:g} |")
    out.append("\n| N | one context, shared (tok/s) | N independent contexts (tok/s) | sharing speedup |")
    out.append("| ---: | ---: | ---: | ---: |")
    for row in r["sharing"]:
        out.append(f"| {row['samples']} | {row['shared_tok_s']:.0f} | {row['independent_tok_s']:.0f} | "
                   f"{row['speedup']:.2f} |")
    f = r["roofline"]
    out.append(f"\ndecoding N = {f['samples']}: {f['flop_s'] / 1e9:.1f} GFLOP/s = {f['fraction']:.0%} of the "
               f"{f['matmul_flop_s'] / 1e9:.1f} GFLOP/s matmul (target ≥ {r['targets']['decode_roofline']:.0%}); "
               f"a matmul of decoding's own shape ({f['samples']} rows x the MLP weight) runs at "
               f"{f['decode_matmul_flop_s'] / 1e9:.1f} GFLOP/s = {f['decode_matmul_fraction']:.0%}.")
    if "bandwidth_bytes_s" in f:
        out.append(f"\nMemory roofline: decoding must read every weight and its KV cache at every step; at the "
                   f"{f['bandwidth_bytes_s'] / 1e9:.1f} GB/s measured in the same rounds that takes at least "
                   f"{f['memory_floor_s']:.2f} s against the {f['seconds']:.2f} s measured: "
                   f"{f['of_memory_roofline']:.0%} of the memory roofline.")
    return "\n".join(out)
