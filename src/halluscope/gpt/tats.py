"""Import the GPT of a TATS checkpoint (its Net2NetTransformer: the minGPT under `transformer.`,
beside its VQGAN under `first_stage_model.`). Its sizes and condition come from
`hyper_parameters['args']` (n_layer, n_head; unconditional / class_cond_dim), or flags where a
checkpoint lacks them; the conversion is the net2net one in mingpt.py (start or class token
at position 0 -> the condition slot).

TATS trains its GPT with block_size = the latent grid's size (a 4×16×16 grid: 1024 positions:
the condition, then all tokens but the last), so the grid must fill the position table exactly:
this catches most wrong --downsample values of a GPT checkpoint, which does not record its
VQGAN's downsample. Models TATS trains for other tasks are refused: frame-subsampled latents
(sample_every_n_latent_frames), audio (stft) or text conditions, per-box positions (vtokens_pos).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from halluscope.errors import UserError
from halluscope.gpt.mingpt import gpt_from_mingpt
from halluscope.gpt.model import GPT
from halluscope.io import checkpoint_setting


def tats_sizes(args: dict[str, Any], flags: dict[str, Any]) -> tuple[int, int, int]:
    """(n_layer, n_head, classes) of a TATS GPT from its args and the user's flags; classes 0 for
    an unconditional model (position 0 holds the start token)."""
    if args.get("vtokens_pos"):
        raise UserError("this TATS GPT adds per-box position tables (vtokens_pos), which are not supported")
    if (args.get("sample_every_n_latent_frames") or 0) > 0:
        raise UserError("this TATS GPT reads every n-th latent frame only (sample_every_n_latent_frames), "
                        "which is not supported")
    unconditional = args.get("unconditional")
    if unconditional is False and args.get("cond_stage_key", "label") != "label":
        raise UserError(f"this TATS GPT is conditioned on `{args['cond_stage_key']}`; only unconditional and "
                        "class-conditional (label) models are supported")
    recorded_classes = None if unconditional is None else 0 if unconditional else args.get("class_cond_dim")
    n_layer = checkpoint_setting("n_layer", args.get("n_layer"), flags.get("n_layer"), "--n-layer")
    n_head = checkpoint_setting("n_head", args.get("n_head"), flags.get("n_head"), "--n-head")
    classes = checkpoint_setting("classes", recorded_classes, flags.get("classes"), "--classes N (0: unconditional)")
    return n_layer, n_head, classes


def import_tats_gpt(sd: dict[str, torch.Tensor], args: dict[str, Any], flags: dict[str, Any],
                    grid: tuple[int, int, int], tokenizer: str, source: str) -> GPT:
    """The GPT in a TATS checkpoint's state dict `sd` (keys under `transformer.`), reading the
    tokens of `grid` made by the tokenizer folder `tokenizer`."""
    n_layer, n_head, classes = tats_sizes(args, flags)
    model = gpt_from_mingpt(sd, n_layer, n_head, None, tokenizer, grid, classes, source)
    if model.config.block_size != math.prod(grid) - 1:
        raise UserError(f"the TATS GPT has {model.config.block_size + 1} positions, but the {'x'.join(map(str, grid))} "
                        f"token grid fills {math.prod(grid)} (TATS's block_size is its grid's size): "
                        "check --downsample, --frames and --resolution")
    return model
