"""Import a TATS 3D VQGAN (a Lightning checkpoint of TATS's `VQGAN`, or the `first_stage_model.`
inside a TATS GPT checkpoint) into a `tats` tokenizer folder. Read without running pickled code;
the discriminators, LPIPS net and codebook EMA statistics are dropped; every other weight must
fit the model the settings describe, or the import stops naming the first key that does not.

Settings come from the weights where they show (n_hiddens, norm_type, n_codes, embedding_dim,
the number of levels), else from `hyper_parameters['args']`, else from a flag. Neither the
per-axis `downsample` (every kernel is 4×4×4 whatever the stride) nor `padding_type` shows in
the weights: a GPT checkpoint, whose args are the GPT's, needs --downsample, and its padding is
TATS's own default for a checkpoint without one, replicate, unless --padding-type says otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from halluscope.errors import UserError
from halluscope.io import checkpoint_setting
from halluscope.tokenizers.config import TATSConfig
from halluscope.tokenizers.load import check_state_dict
from halluscope.tokenizers.tats import TATSVQGAN
from halluscope.validate import ConfigError

TRAINING_ONLY = ("image_discriminator.", "video_discriminator.", "perceptual_model.", "codebook.N", "codebook.z_avg")
# How a missing setting is asked for: the flag and what it holds.
FLAGS = {"downsample": "--downsample T,H,W", "padding_type": "--padding-type", "frames": "--frames",
         "resolution": "--resolution"}
PADDING_DEFAULT = "replicate"  # what TATS itself uses when a checkpoint's args have no padding_type


def from_weights(sd: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The settings a TATS VQGAN's weights determine, and its number of levels."""
    for key in ("encoder.conv_first.conv.weight", "codebook.embeddings"):
        if key not in sd:
            raise UserError(f"{source} holds no TATS VQGAN (no `{key}`)")
    first = sd["encoder.conv_first.conv.weight"]  # (n_hiddens, channels, 3, 3, 3)
    if first.dim() != 5 or first.shape[1] != 3:
        raise UserError(f"{source}: encoder.conv_first.conv.weight is {tuple(first.shape)}; only RGB TATS "
                        "models (n_hiddens, 3, 3, 3, 3) are supported")
    codes = sd["codebook.embeddings"]
    if codes.dim() != 2:
        raise UserError(f"{source}: codebook.embeddings is {tuple(codes.shape)}, not (n_codes, embedding_dim)")
    levels = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))}
    return {"n_hiddens": first.shape[0], "n_codes": codes.shape[0], "embedding_dim": codes.shape[1],
            "norm_type": "batch" if "encoder.final_block.0.running_mean" in sd else "group", "levels": len(levels)}


def tats_config(sd: dict[str, torch.Tensor], args: dict[str, Any], flags: dict[str, Any], source: str) -> TATSConfig:
    """The TATSConfig of a TATS VQGAN's weights `sd`, its (or its GPT's) hyper-parameters `args`
    and the user's `flags` (downsample, padding_type, frames, resolution: None where not given)."""
    shown = from_weights(sd, source)
    levels = shown.pop("levels")
    for name, value in shown.items():  # a checkpoint whose args contradict its own weights is damaged
        if args.get(name) is not None and args[name] != value:
            raise UserError(f"{source}: its args say {name} {args[name]}, its weights {value}")
    length, every = args.get("sequence_length"), args.get("sample_every_n_frames") or 1
    # TATS's clips: every n-th frame of sequence_length frames
    frames = length // every if isinstance(length, int) and isinstance(every, int) and every > 0 else None
    recorded = {"downsample": args.get("downsample"), "padding_type": args.get("padding_type"), "frames": frames,
                "resolution": args.get("resolution")}
    settings = {name: checkpoint_setting(name, recorded[name], flags.get(name), flag,
                                         PADDING_DEFAULT if name == "padding_type" else None)
                for name, flag in FLAGS.items()}
    try:
        config = TATSConfig(**shown, **settings)
    except ConfigError as e:
        raise UserError(f"{source}: {e.detail}") from None
    if config.levels != levels:  # the one check of downsample the weights allow
        raise UserError(f"downsample {list(config.downsample)} means {config.levels} strided levels, but the "
                        f"encoder in {source} has {levels} (encoder.conv_blocks.*): the downsample is wrong")
    return config


def tats_from_state_dict(sd: dict[str, torch.Tensor], args: dict[str, Any], flags: dict[str, Any],
                         source: str) -> TATSVQGAN:
    """The TATS tokenizer holding the weights `sd` (TATS's own key names, training-only ones
    included or not), in eval mode."""
    sd = {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY)}
    config = tats_config(sd, args, flags, source)
    with torch.device("meta"):  # the settings are checked against the weights before they cost memory
        check_state_dict(TATSVQGAN(config), sd, f"{source} does not fit its TATS settings")
    model = TATSVQGAN(config)
    model.load_state_dict(sd)
    return model.eval()
