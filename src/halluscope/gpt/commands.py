"""GPT commands: `halluscope import-gpt`, `halluscope train-gpt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from halluscope.errors import UserError
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import BLOCKS, PRESETS
from halluscope.gpt.mingpt import import_mingpt
from halluscope.gpt.train import TrainConfig, train


def parse_grid(text: str) -> tuple[int, ...]:
    """"16x16" -> (16, 16); "4x16x16" -> (4, 16, 16)."""
    try:
        grid = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        grid = ()
    if len(grid) not in (2, 3) or min(grid) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or TxHxW with positive sizes, got {text!r}")
    return grid


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-gpt", help="convert a minGPT-layout GPT checkpoint (minGPT; taming's "
                                                 "Net2NetTransformer and TATS with --format net2net) into a GPT folder")
    p.add_argument("--ckpt", required=True,
                   help=".pt/.ckpt file: a state dict, bare or under state_dict / model_state_dict")
    p.add_argument("--format", default="mingpt", choices=["mingpt", "net2net"],
                   help="mingpt: minGPT's own layout, grid token 0 at position 0; net2net: a taming Net2NetTransformer "
                        "or TATS GPT (under transformer.), position 0 its start token or class id")
    p.add_argument("--classes", type=int, default=0,
                   help="net2net: class ids ahead of the codes in its vocabulary (0: unconditional, a start token)")
    p.add_argument("--n-layer", type=int, required=True, help="transformer blocks (checked against the checkpoint)")
    p.add_argument("--n-head", type=int, required=True, help="attention heads (the checkpoint does not record them)")
    p.add_argument("--block-size", type=int, help="positions to keep (default: all the checkpoint has)")
    p.add_argument("--tokenizer", help="tokenizer folder whose tokens the GPT reads (recorded in its config)")
    p.add_argument("--grid", type=parse_grid, help="token grid, HxW or TxHxW (recorded in its config)")
    p.add_argument("--out", required=True, help="output GPT folder")
    p.set_defaults(func=import_gpt_command)

    d = TrainConfig.__dataclass_fields__  # defaults live in one place: the dataclass
    p = subparsers.add_parser("train-gpt", help="train a GPT on a token cache (runs unchanged under torchrun)")
    p.add_argument("--tokens", required=True, help="token cache folder written by `halluscope tokenize`")
    p.add_argument("--out", required=True, help="run folder: model/, checkpoints/, metrics.jsonl")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--arch", default="gpt", choices=list(BLOCKS),
                   help="block family: gpt (minGPT: LayerNorm, GELU, position tables) or llama (LlamaGen's: RMSNorm, "
                        "SwiGLU, no biases, rotary positions over the grid's axes)")
    for flag, kind, help_text in (
        ("steps", int, "optimizer steps"), ("batch", int, "sequences per process per micro-step"),
        ("accum", int, "micro-steps per optimizer step"), ("lr", float, "peak learning rate"),
        ("warmup", int, "linear warmup steps"), ("min-lr", float, "learning rate at the end of the cosine"),
        ("weight-decay", float, "AdamW decay of the Linear matrices"), ("grad-clip", float, "0 turns clipping off"),
        ("dropout", float, "dropout probability"), ("eval-every", int, "steps between validation losses"),
        ("ckpt-every", int, "steps between checkpoints"), ("keep", int, "checkpoints kept"),
        ("val-fraction", float, "share of the cache held out for validation"), ("seed", int, "data order and init"),
    ):
        p.add_argument(f"--{flag}", type=kind, default=d[flag.replace("-", "_")].default, help=help_text)
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--factorized-pos", action="store_true",
                   help="one position table per grid axis: a clip's frames share row and column embeddings")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward to save memory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=train_gpt_command)


def import_gpt_command(args: argparse.Namespace) -> int:
    if args.tokenizer and not (Path(args.tokenizer) / "config.json").is_file():
        raise UserError(f"--tokenizer {args.tokenizer} is not a tokenizer folder (no config.json)")
    classes = args.classes if args.format == "net2net" else None
    model = import_mingpt(args.ckpt, args.n_layer, args.n_head, args.block_size, args.tokenizer, args.grid, classes)
    save_gpt(model, args.out)
    c = model.config
    print(f"imported a GPT with {model.num_params() / 1e6:.1f}M parameters ({c.n_layer} layers x {c.n_head} heads x "
          f"{c.n_embd} wide, vocab {c.vocab_size}, block {c.block_size}) into {args.out}")
    return 0


def train_gpt_command(args: argparse.Namespace) -> int:
    for name in ("steps", "batch", "accum", "eval_every", "ckpt_every", "keep"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1 or not 0 < args.val_fraction < 1:
        raise UserError("--dropout must be in [0, 1) and --val-fraction in (0, 1)")
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    metrics = train(cfg).metrics
    if "val_loss" in metrics:
        print(f"train-gpt: step {metrics['step']}, val loss {metrics['val_loss']:.4f}; model in {args.out}/model")
    return 0
