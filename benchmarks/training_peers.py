"""Training throughput against transformers GPT-2 of the same dimensions, and training's
share of the machine's matmul rate.

`python -m benchmarks training_peers [--threads 1 --clock cpu] [--rounds 5]`: the `small`
preset (vocabulary 1024, 1024-token context) and transformers' GPT-2 with the same layers,
heads, width, vocabulary and context, each taking optimizer steps (forward, backward, AdamW)
on batches of 4 random sequences of 1024 tokens, fp32 on the CPU (bf16 autocast on a GPU,
where the roofline fraction is the MFU). Ours is trained exactly as `halluscope train-gpt`
does (its loss and its AdamW); the peer gets the same loss and AdamW settings. The two and a
large matmul run in turn `--rounds` times; each figure is the median.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import (
    add_machine_args,
    gpt2_like,
    matmul,
    model_flops,
    peer_problem,
    publish,
    setup,
    side_by_side,
)
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.train import TrainConfig, make_optimizer, next_token_loss

TARGETS = {"vs_transformers": 1.0}


def trainer(model: torch.nn.Module, batch: torch.Tensor, device: torch.device):
    """One optimizer step on `batch` (B, L) as a function of no arguments."""
    model.train()
    if isinstance(model, GPT):
        opt = make_optimizer(model, TrainConfig(tokens="", out=""), fused=device.type == "cuda")
        forward = model
    else:  # transformers returns an output object; the loss sees only the logits, as for ours
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=device.type == "cuda")

        def forward(idx: torch.Tensor) -> torch.Tensor:
            return model(idx).logits

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = next_token_loss(forward, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks training_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = preset(args.preset, vocab_size=args.vocab, block_size=args.length)
    # next_token_loss reads L + 1 tokens to predict L of them.
    batch = torch.randint(0, args.vocab, (args.batch, args.length + 1), device=device)
    models = {"ours": GPT(config).to(device)}
    problem = peer_problem()
    if problem is None:
        models["transformers"] = gpt2_like(config).to(device)
    else:
        print(f"skipping the transformers column: {problem}")
    fns = {name: trainer(m, batch, device) for name, m in models.items()}
    for fn in fns.values():
        fn()  # warm-up: optimizer state, allocator
    fns["matmul"], matmul_flops = matmul(device)
    print(f"timing {len(fns)} runs x {args.rounds} rounds ...", flush=True)
    seconds = side_by_side(fns, args.rounds)

    tokens = args.batch * args.length
    flops = model_flops(config, tokens, args.length / 2, backward=True)
    peak = matmul_flops / seconds["matmul"]
    rows = [{"model": name, "params": sum(p.numel() for p in m.parameters()), "step_s": seconds[name],
             "tokens_per_s": tokens / seconds[name], "flop_s": flops / seconds[name],
             "roofline_fraction": flops / seconds[name] / peak} for name, m in models.items()]
    result = {"setting": {"preset": args.preset, "n_layer": config.n_layer, "n_head": config.n_head,
                          "n_embd": config.n_embd, "vocab": args.vocab, "length": args.length, "batch": args.batch,
                          "rounds": args.rounds, "device": device.type,
                          "dtype": "bf16 autocast" if device.type == "cuda" else "float32"},
              "transformers_skipped": problem, "matmul_flop_s": peak, "rows": rows, "targets": TARGETS}
    if problem is None:
        result["vs_transformers"] = seconds["transformers"] / seconds["ours"]
    return publish("training_peers", argv, result, table)


def table(r: dict) -> str:
    """The result as markdown (printed by main, and rendered into docs/benchmarks.md)."""
    out = []
    s = r["setting"]
    out.append(f"\nTraining step (forward + backward + AdamW), {s['preset']} dims ({s['n_layer']}x{s['n_head']}x"
               f"{s['n_embd']}, vocab {s['vocab']}), batch {s['batch']} x {s['length']} tokens, {s['dtype']} on "
               f"{s['device']}\n")
    out.append("| model | params | tokens/s | GFLOP/s | of matmul rate |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for row in r["rows"]:
        out.append(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {row['tokens_per_s']:.0f} | {row['flop_s'] / 1e9:.1f} "
                   f"| {row['roofline_fraction']:.0%} |")
    if "vs_transformers" in r:
        out.append(f"\nours / transformers: {r['vs_transformers']:.2f}x (target ≥ {r['targets']['vs_transformers']})")
    else:
        out.append(f"\ntransformers not measured: {r['transformers_skipped']}")
    out.append(f"\nmatmul rate: {r['matmul_flop_s'] / 1e9:.1f} GFLOP/s")
    return "\n".join(out)
