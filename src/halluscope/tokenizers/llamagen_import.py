"""Import a LlamaGen VQ tokenizer (FoundationVision/LlamaGen's `VQModel`: VQ-16, VQ-8) into an
image VQGAN tokenizer folder. LlamaGen's Encoder / Decoder are taming's under other names, with
attention at the deepest level and in the middle only; its quantizer L2-normalises z and the
codes (`quantizer: "l2"`). Read without running pickled code; the EMA weights are taken where
saved (as LlamaGen's own demo does); the discriminator, optimizer states and the codebook usage
buffer are dropped; every other weight must fill the model the weights describe, or the import
stops naming the first key (in LlamaGen's names) that does not.

Everything but the image side is read from the weights. The side comes from `resolution`, else
the training args' `image_size`: the VQ is convolutional, so any multiple of the downsampling
runs (LlamaGen encodes 384² images with its 256²-trained VQ-16 for its 384 GPTs), and a given
`resolution` overrides the recorded training size rather than contradicting it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from halluscope.errors import UserError
from halluscope.io import check_shapes, load_untrusted_checkpoint, model_shapes, script_args, tensor_shapes
from halluscope.tokenizers.config import VQGANConfig
from halluscope.tokenizers.load import save_tokenizer
from halluscope.tokenizers.vqgan import VQGAN
from halluscope.validate import ConfigError, whole

WEIGHT_KEYS = ("ema", "model", "state_dict", "module")  # where a LlamaGen file keeps its weights, preferred first
TRAINING_ONLY = ("quantize.codebook_used",)  # a ring buffer of recent tokens, for its usage log
MID_NAMES = {"block_1": "0", "attn_1": "1", "block_2": "2"}  # ours -> LlamaGen's mid.{i}
LEVEL_PARTS = {"block": "res", "attn": "attn", "downsample": "downsample", "upsample": "upsample"}


def llamagen_weights(ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    """The model tensors of a loaded LlamaGen checkpoint: its EMA, else its model, else a bare
    (FSDP) state dict, training-only buffers dropped."""
    if isinstance(ckpt, dict):
        ckpt = next((ckpt[k] for k in WEIGHT_KEYS if isinstance(ckpt.get(k), dict)), ckpt)
    sd = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)} if isinstance(ckpt, dict) else {}
    if not sd:
        raise UserError(f"{source} holds no state dict (no tensors at the top level or under "
                        f"{' / '.join(f'`{k}`' for k in WEIGHT_KEYS)})")
    return {k: v for k, v in sd.items() if k not in TRAINING_ONLY}


def llamagen_name(key: str, levels: int) -> str:
    """LlamaGen's name for our VQGAN's weight `key` (the renaming, read backwards): levels are
    `conv_blocks.i` (the decoder's deepest first), res blocks `res.j`, the middle `mid.0/1/2`."""
    part, _, rest = key.partition(".")
    level = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn|downsample|upsample)(.*)", rest)
    if level:
        direction, i, kind, tail = level.groups()
        i = int(i) if direction == "down" else levels - 1 - int(i)
        return f"{part}.conv_blocks.{i}.{LEVEL_PARTS[kind]}{tail}"
    mid = re.fullmatch(r"mid\.(block_1|attn_1|block_2)(.*)", rest)
    return f"{part}.mid.{MID_NAMES[mid[1]]}{mid[2]}" if mid else key


def weight(sd: dict[str, torch.Tensor], key: str, dims: int, source: str) -> torch.Tensor:
    """sd[key], which the settings are read from: present, with `dims` dimensions."""
    if key not in sd:
        raise UserError(f"{source} holds no LlamaGen VQ model (no `{key}`)")
    if sd[key].dim() != dims:
        raise UserError(f"{source}: `{key}` is {tuple(sd[key].shape)}, expected {dims} dimensions")
    return sd[key]


def llamagen_config(sd: dict[str, torch.Tensor], args: dict[str, Any], resolution: int | None,
                    source: str) -> VQGANConfig:
    """The VQGANConfig of a LlamaGen VQ's weights `sd` (LlamaGen's names), its training `args`
    and the image side `resolution` (None: the args' image_size)."""
    if any(k.endswith(".running_mean") for k in sd):
        raise UserError(f"{source}: a LlamaGen VQ with batch norm (norm_type batch) is not supported, only group norm")
    conv_in = weight(sd, "encoder.conv_in.weight", 4, source)  # (ch, 3, 3, 3)
    ch = conv_in.shape[0]
    levels = 1 + max((int(m[1]) for k in sd if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))), default=-1)
    if levels == 0:
        raise UserError(f"{source} holds no LlamaGen VQ model (no `encoder.conv_blocks.*`)")
    widths = [weight(sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight", 4, source).shape[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise UserError(f"{source}: the encoder's level widths {widths} are not multiples of conv_in's {ch} channels")
    num_res_blocks = len({m[1] for k in sd if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    codes = weight(sd, "quantize.embedding.weight", 2, source)  # (codebook_size, codebook_embed_dim)
    for name, value in (("codebook_size", codes.shape[0]), ("codebook_embed_dim", codes.shape[1])):
        if args.get(name) is not None and args[name] != value:  # args that contradict the weights: damaged
            raise UserError(f"{source}: its args say {name} {args[name]}, its weights {value}")
    side = resolution if resolution is not None else args.get("image_size")
    if side is None:
        raise UserError(f"{source} does not record its image size (args.image_size); pass --resolution")
    try:
        side = whole("LlamaGen VQ", "resolution", side, 1, 8192)
        if side % 2 ** (levels - 1):
            raise ConfigError("LlamaGen VQ", f"resolution {side} is not a multiple of the {2 ** (levels - 1)} "
                                             f"pixels one token covers")
        return VQGANConfig(resolution=side, in_channels=conv_in.shape[1],
                           out_ch=weight(sd, "decoder.conv_out.weight", 4, source).shape[0], ch=ch,
                           ch_mult=tuple(w // ch for w in widths), num_res_blocks=num_res_blocks,
                           attn_resolutions=(side // 2 ** (levels - 1),),  # the deepest level's side
                           z_channels=weight(sd, "encoder.conv_out.weight", 4, source).shape[0],
                           embed_dim=codes.shape[1], n_embed=codes.shape[0], quantizer="l2")
    except ConfigError as e:
        raise UserError(f"{source}: {e.detail}") from None


def convert_llamagen_vq(path: str | os.PathLike, resolution: int | None = None) -> VQGAN:
    """The tokenizer holding the LlamaGen VQ checkpoint at `path`, in eval mode. `resolution`:
    the image side (default: the checkpoint's args.image_size)."""
    source = f"checkpoint {path}"
    ckpt = load_untrusted_checkpoint(path)  # memory-mapped: the optimizer states are never read
    sd = llamagen_weights(ckpt, source)
    config = llamagen_config(sd, script_args(ckpt), resolution, source)
    if config.in_channels != 3 or config.out_ch != 3:
        raise UserError(f"{source}: only RGB models are supported (in {config.in_channels}, out {config.out_ch} channels)")
    levels = len(config.ch_mult)
    with torch.device("meta"):  # the inferred sizes are checked against every weight before they cost memory
        expected = {llamagen_name(k, levels): v for k, v in model_shapes(VQGAN(config)).items()}
    check_shapes(expected, tensor_shapes(sd), f"{source} does not fit a LlamaGen VQ")
    model = VQGAN(config)
    model.load_state_dict({k: sd[llamagen_name(k, levels)] for k in model.state_dict()})
    return model.eval()


def import_llamagen_vq(path: str | os.PathLike, out: str | os.PathLike, resolution: int | None = None) -> VQGAN:
    """Convert the LlamaGen VQ checkpoint at `path` and write it as a tokenizer folder `out`;
    return the model."""
    model = convert_llamagen_vq(path, resolution)
    save_tokenizer(model, out)
    return model
