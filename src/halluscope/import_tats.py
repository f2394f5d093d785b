"""`halluscope import-tats`: a TATS VQGAN checkpoint to a tokenizer folder, or a TATS GPT
checkpoint to a GPT folder with its tokenizer (the VQGAN inside it, `first_stage_model.*`,
written to DIR/tokenizer, or a tokenizer folder given with --tokenizer).

It sits on top, beside cli.py, because the GPT route produces both parts and the parts never
import each other (docs/design.md, "Import direction"). The checkpoint is read once, memory-
mapped and without running pickled code: its optimizer state is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from halluscope.errors import UserError
from halluscope.tokenizers.commands import parse_downsample
from halluscope.tokenizers.config import TATS_PADDINGS

FIRST_STAGE = "first_stage_model."
TOKENIZER_FLAGS = ("downsample", "padding_type", "frames", "resolution")
GPT_FLAGS = ("n_layer", "n_head", "classes")
DATA_ARGS = ("sequence_length", "sample_every_n_frames", "resolution")  # what a GPT's args say of its clips


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-tats", help="convert a TATS VQGAN (--ckpt) to a tokenizer folder, or a TATS GPT "
                                                  "(--gpt-ckpt) to a GPT folder with its tokenizer")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="TATS VQGAN Lightning checkpoint (.ckpt)")
    source.add_argument("--gpt-ckpt", help="TATS GPT (Net2NetTransformer) Lightning checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="folder to write: the tokenizer (--ckpt), or the GPT with its "
                                                "tokenizer in DIR/tokenizer (--gpt-ckpt)")
    p.add_argument("--tokenizer", help="--gpt-ckpt: this tokenizer folder instead of the checkpoint's first stage")
    p.add_argument("--downsample", type=parse_downsample, metavar="T,H,W",
                   help="TATS's downsample, where the checkpoint does not record it (a GPT's does not)")
    p.add_argument("--padding-type", choices=TATS_PADDINGS,
                   help="TATS's padding_type where the checkpoint does not record it (default: replicate, as TATS)")
    p.add_argument("--frames", type=int, help="frames per clip, where the checkpoint does not record sequence_length")
    p.add_argument("--resolution", type=int, help="clip side in pixels, where the checkpoint does not record it")
    p.add_argument("--n-layer", type=int, help="--gpt-ckpt: transformer blocks, where the args do not record them")
    p.add_argument("--n-head", type=int, help="--gpt-ckpt: attention heads, where the args do not record them")
    p.add_argument("--classes", type=int, help="--gpt-ckpt: class ids ahead of the codes (0: unconditional), where "
                                               "the args do not record them")
    p.set_defaults(func=import_tats_command)


def given(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def import_tats_command(args: argparse.Namespace) -> int:
    from halluscope.gpt.checkpoint import save_gpt
    from halluscope.gpt.tats import import_tats_gpt
    from halluscope.io import checkpoint_args, find_state_dict, load_untrusted_checkpoint
    from halluscope.tokenizers.load import load_tokenizer, save_tokenizer
    from halluscope.tokenizers.tats_import import tats_from_state_dict

    tokenizer_flags, gpt_flags = given(args, TOKENIZER_FLAGS), given(args, GPT_FLAGS)
    if args.ckpt and (gpt_flags or args.tokenizer):
        raise UserError(f"--{next(iter(gpt_flags), 'tokenizer').replace('_', '-')} is for --gpt-ckpt")
    if args.tokenizer and tokenizer_flags:
        raise UserError(f"--{next(iter(tokenizer_flags)).replace('_', '-')} describes the checkpoint's own VQGAN; "
                        "with --tokenizer it is not used")
    path = args.ckpt or args.gpt_ckpt
    ckpt = load_untrusted_checkpoint(path)
    sd, hparams = find_state_dict(ckpt, path), checkpoint_args(ckpt)
    if args.ckpt:
        model = tats_from_state_dict(sd, hparams, tokenizer_flags, f"checkpoint {path}")
        save_tokenizer(model, args.out)
        c = model.config
        print(f"wrote {args.out}: TATS VQGAN, {c.frames} frames at {c.resolution}², grid {model.grid}, "
              f"vocabulary {model.vocab_size}, norm {c.norm_type}, padding {c.padding_type}")
        return 0

    if args.tokenizer:
        tokenizer, tokenizer_dir = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        first = {k[len(FIRST_STAGE):]: v for k, v in sd.items() if k.startswith(FIRST_STAGE)}
        if not first:
            raise UserError(f"{path} holds no first_stage_model.* (a GPT trained on stored tokens); pass --tokenizer "
                            "DIR (a folder written by `halluscope import-tats --ckpt VQGAN.ckpt`)")
        data = {k: hparams[k] for k in DATA_ARGS if k in hparams}
        tokenizer = tats_from_state_dict(first, data, tokenizer_flags, f"first_stage_model in {path}")
        tokenizer_dir = str(Path(args.out) / "tokenizer")
    if tokenizer.kind != "video" or len(tokenizer.grid) != 3:
        raise UserError(f"--tokenizer {args.tokenizer} is an image tokenizer; a TATS GPT reads clip tokens")
    gpt = import_tats_gpt(sd, hparams, gpt_flags, tuple(tokenizer.grid), tokenizer_dir, f"checkpoint {path}")
    if gpt.config.vocab_size != tokenizer.vocab_size:
        raise UserError(f"the GPT reads {gpt.config.vocab_size} codes, the tokenizer has {tokenizer.vocab_size}")
    if not args.tokenizer:  # both converted and checked before either is written
        save_tokenizer(tokenizer, tokenizer_dir)
    save_gpt(gpt, args.out)
    c = gpt.config
    condition = f"{c.cond_vocab_size} classes" if c.cond_vocab_size > 1 else "unconditional (start token)"
    print(f"wrote {args.out}: TATS GPT, {gpt.num_params() / 1e6:.1f}M parameters ({c.n_layer} layers x {c.n_head} "
          f"heads x {c.n_embd} wide), {condition}, grid {tuple(c.grid)}, tokenizer {tokenizer_dir}")
    return 0
