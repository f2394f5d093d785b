"""Probe commands: `halluscope sample` (one example, N continuations)."""

from __future__ import annotations

import argparse

import torch

from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.sampling import check_sampling
from halluscope.probes.sample import continue_example, write_continuations
from halluscope.tokenizers import load_tokenizer


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="continue the first part of an image or clip with a GPT, N times")
    p.add_argument("--gpt", required=True, help="GPT folder (its config names its tokenizer)")
    p.add_argument("--input", required=True, help="an image file, or a video file for a clip tokenizer")
    p.add_argument("--context", type=float, default=0.5,
                   help="fraction of leading token rows (images) or latent frames (clips) given (default 0.5)")
    p.add_argument("--samples", type=int, default=8, help="continuations to draw (default 8)")
    p.add_argument("--out", required=True, help="output folder: samples.png / .gif / .mp4 and samples.json")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample only among the most likely tokens holding this probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond", type=parse_ints, help="condition tokens of a class-conditional GPT, e.g. 3 or 3,7")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the GPT config names)")
    p.add_argument("--video-format", choices=["gif", "mp4"], default="gif", help="sample grid format for clips")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=sample_command)


def sample_command(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise UserError(f"--samples must be at least 1, got {args.samples}")
    check_sampling(args.temperature, args.top_k, args.top_p)  # before minutes of loading and encoding
    gpt = load_gpt(args.gpt, device=args.device)
    tokenizer_dir = args.tokenizer or gpt.config.tokenizer
    if tokenizer_dir is None:
        raise UserError(f"the GPT config in {args.gpt} names no tokenizer; pass --tokenizer DIR")
    tokenizer = load_tokenizer(tokenizer_dir).to(args.device)
    if tokenizer.kind == "image":
        x = load_image(args.input, tokenizer.resolution)
    else:
        x = load_clip(args.input, tokenizer.resolution, tokenizer.frames)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    result = continue_example(gpt, tokenizer, x, args.context, args.samples, args.temperature, args.top_k,
                              args.top_p, generator, cond=args.cond, progress=True)
    info = {"gpt": str(args.gpt), "tokenizer": str(tokenizer_dir), "input": str(args.input), "context": args.context,
            "samples": args.samples, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "seed": args.seed, "cond": args.cond}
    paths = write_continuations(result, args.out, args.video_format, info)
    print(f"{args.samples} continuations of {result.context_units}/{result.grid[0]} "
          f"{'token rows' if len(result.grid) == 2 else 'latent frames'} "
          f"({result.context_tokens} tokens) -> {', '.join(str(p) for p in paths)}")
    return 0
