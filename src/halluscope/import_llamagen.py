"""`halluscope import-llamagen`: LlamaGen's VQ tokenizer (--vq) to a tokenizer folder, its
class-conditional GPT (--gpt) to a GPT folder, or both at once (the GPT in DIR, its tokenizer
in DIR/tokenizer).

It sits on top, beside cli.py, because one command produces both parts and the parts never
import each other (docs/design.md, "Import direction"). Checkpoints are read memory-mapped and
without running pickled code: their optimizer state is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from halluscope.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-llamagen", help="convert a LlamaGen VQ tokenizer (--vq) and / or class-"
                                                      "conditional GPT (--gpt) to halluscope folders")
    p.add_argument("--vq", help="LlamaGen VQ checkpoint (vq_ds16_c2i.pt, vq_ds8_c2i.pt)")
    p.add_argument("--gpt", help="LlamaGen c2i GPT checkpoint (c2i_B_256.pt, ...)")
    p.add_argument("--out", required=True, help="folder to write: the tokenizer (--vq alone), or the GPT with its "
                                                "tokenizer in DIR/tokenizer (--vq and --gpt)")
    p.add_argument("--tokenizer", help="--gpt alone: the tokenizer folder the GPT reads (an earlier --vq import)")
    p.add_argument("--resolution", type=int,
                   help="--vq: image side in pixels the tokenizer reads (LlamaGen's image_size: 256 or 384; default: "
                        "what the GPT's or the VQ's args record)")
    p.add_argument("--n-head", type=int, help="--gpt: attention heads, for a width outside LlamaGen's sizes")
    p.set_defaults(func=import_llamagen_command)


def import_llamagen_command(args: argparse.Namespace) -> int:
    from halluscope.gpt.checkpoint import save_gpt
    from halluscope.gpt.llamagen import import_llamagen_gpt
    from halluscope.io import load_untrusted_checkpoint, script_args
    from halluscope.tokenizers.llamagen_import import convert_llamagen_vq
    from halluscope.tokenizers.load import load_tokenizer, save_tokenizer

    if not (args.vq or args.gpt):
        raise UserError("give --vq VQ.pt, --gpt GPT.pt, or both")
    if args.tokenizer and args.vq:
        raise UserError("--tokenizer replaces --vq; give one of them")
    if args.gpt and not (args.vq or args.tokenizer):
        raise UserError("--gpt needs its tokenizer: --vq VQ.pt, or --tokenizer DIR")
    if args.n_head is not None and not args.gpt:
        raise UserError("--n-head is for --gpt")
    gpt_ckpt = load_untrusted_checkpoint(args.gpt) if args.gpt else None
    gpt_args = script_args(gpt_ckpt)
    resolution = args.resolution or gpt_args.get("image_size")
    if args.tokenizer:
        tokenizer, tokenizer_dir = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        tokenizer = convert_llamagen_vq(args.vq, resolution)
        tokenizer_dir = str(Path(args.out) / "tokenizer") if args.gpt else args.out
    if not args.gpt:
        save_tokenizer(tokenizer, tokenizer_dir)
        print(f"wrote {tokenizer_dir}: LlamaGen VQ, {tokenizer.resolution}² pixels -> grid {tuple(tokenizer.grid)}, "
              f"vocabulary {tokenizer.vocab_size}")
        return 0
    if tokenizer.kind != "image":
        raise UserError(f"--tokenizer {args.tokenizer} is a clip tokenizer; a LlamaGen GPT reads image tokens")
    if args.tokenizer and args.resolution not in (None, tokenizer.resolution):
        raise UserError(f"--resolution {args.resolution} contradicts the tokenizer's {tokenizer.resolution}")
    flags = {"n_head": args.n_head} if args.n_head is not None else {}
    gpt = import_llamagen_gpt(gpt_ckpt, gpt_args, flags, tokenizer_dir, tuple(tokenizer.grid), f"checkpoint {args.gpt}")
    c = gpt.config
    if c.vocab_size != tokenizer.vocab_size:
        raise UserError(f"the GPT reads {c.vocab_size} codes, the tokenizer has {tokenizer.vocab_size}")
    if args.vq:  # both converted and checked before either is written
        save_tokenizer(tokenizer, tokenizer_dir)
    save_gpt(gpt, args.out)
    guidance = f", null class {c.null_cond} (guidance)" if c.null_cond is not None else ", no null class"
    print(f"wrote {args.out}: LlamaGen GPT, {gpt.num_params() / 1e6:.1f}M parameters ({c.n_layer} layers x "
          f"{c.n_head} heads x {c.n_embd} wide), {c.cond_vocab_size} classes{guidance}, grid {tuple(c.grid)}, "
          f"tokenizer {tokenizer_dir}")
    return 0
