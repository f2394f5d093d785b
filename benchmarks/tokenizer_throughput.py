"""Tokenizer throughput: images/s and clips/s through encode and decode, and the FLOP rate
that reaches as a fraction of the machine's matmul rate measured in the same rounds.

`python -m benchmarks tokenizer_throughput [--threads 1 --clock cpu] [--rounds 3]`: the
`tiny` image tokenizer on batches of 8 images of 64², and the `tiny` clip tokenizer (3D
VQGAN) on batches of 2 clips of 16 frames of 64², untrained (speed does not depend on the
weights), fp32 on the CPU; on a GPU the same in fp32 with 8 times the batch (a batch of 8
would leave it idle). FLOPs are counted once per call by torch's FlopCounterMode
(convolutions and matmuls).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import add_machine_args, matmul, publish, setup, side_by_side, synced
from halluscope.tokenizers import build_tokenizer, preset

CASES = {"image": {"batch": 8, "unit": "images"}, "video": {"batch": 2, "unit": "clips"}}


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks tokenizer_throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scale = 8 if device.type == "cuda" else 1
    fns, counts, settings = {}, {}, {}
    for kind, case in CASES.items():
        tok = build_tokenizer(preset(kind, "tiny")).to(device).eval()
        frames = (tok.frames,) if kind == "video" else ()
        x = torch.rand(case["batch"] * scale, 3, *frames, tok.resolution, tok.resolution, device=device) * 2 - 1
        with torch.no_grad():
            tokens = tok.encode(x)
        fns[f"{kind} encode"] = synced(lambda tok=tok, x=x: tok.encode(x))
        fns[f"{kind} decode"] = synced(lambda tok=tok, t=tokens: tok.decode(t))
        settings[kind] = {"batch": case["batch"] * scale, "unit": case["unit"], "grid": list(tok.grid),
                          "shape": list(x.shape[1:]), "params": sum(p.numel() for p in tok.parameters()),
                          "device": device.type}
    counts = {name: flops(fn) for name, fn in fns.items()}
    fns["matmul"], counts["matmul"] = matmul(device)
    print(f"timing {len(fns)} runs x {args.rounds} rounds ...", flush=True)
    seconds = side_by_side(fns, args.rounds)
    peak = counts["matmul"] / seconds["matmul"]
    rows = []
    for name in fns:
        if name == "matmul":
            continue
        kind, op = name.split()
        rows.append({"kind": kind, "op": op, "unit": CASES[kind]["unit"], "seconds": seconds[name],
                     "per_s": settings[kind]["batch"] / seconds[name], "flop_s": counts[name] / seconds[name],
                     "roofline_fraction": counts[name] / seconds[name] / peak})
    result = {"settings": settings, "matmul_flop_s": peak, "rows": rows}
    return publish("tokenizer_throughput", argv, result, table)


def table(result: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = ["| tokenizer | op | batch | throughput | GFLOP/s | of matmul rate |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        out.append(f"| tiny {r['kind']} | {r['op']} | {result['settings'][r['kind']]['batch']} | {r['per_s']:.1f} "
                   f"{r['unit']}/s | {r['flop_s'] / 1e9:.1f} | {r['roofline_fraction']:.0%} |")
    out.append(f"\nmatmul rate: {result['matmul_flop_s'] / 1e9:.1f} GFLOP/s")
    return "\n".join(out)
