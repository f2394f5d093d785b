"""Import a taming-transformers VQGAN (its YAML config and Lightning checkpoint) into our model
folder format. The checkpoint is read without running any pickled code; its loss weights
(discriminator, LPIPS) are dropped; every other weight must match the model the YAML
describes, or the import stops naming the first key that does not."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from halluscope.errors import UserError
from halluscope.io import MAX_CONFIG_BYTES, find_state_dict, load_untrusted_checkpoint, read_bytes
from halluscope.tokenizers.config import VQGANConfig
from halluscope.tokenizers.load import check_state_dict, save_tokenizer
from halluscope.tokenizers.vqgan import VQGAN
from halluscope.validate import ConfigError

DROPPED_PREFIXES = ("loss.",)  # training-only modules: discriminator, perceptual net
SUPPORTED_TARGETS = {"VQModel": "vq", "GumbelVQ": "gumbel"}
DDCONFIG_KEYS = ("resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                 "z_channels", "dropout")


def read_taming_config(path: str | os.PathLike) -> VQGANConfig:
    """The VQGANConfig a taming YAML (`model.target`, `model.params`) describes."""
    path = Path(path)
    try:
        doc = yaml.safe_load(read_bytes(path, "taming config", MAX_CONFIG_BYTES))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"taming config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise UserError(f"taming config {path} has no `model.params.ddconfig`")
    target = str(model.get("target", "taming.models.vqgan.VQModel")).rsplit(".", 1)[-1]
    if target not in SUPPORTED_TARGETS:
        raise UserError(f"taming config {path}: model.target `{model.get('target')}` is not supported "
                        f"(supported: {', '.join(SUPPORTED_TARGETS)})")
    dd = params["ddconfig"]
    missing = [k for k in (*DDCONFIG_KEYS[:-1], "n_embed", "embed_dim") if k not in dd and k not in params]
    if missing:
        raise UserError(f"taming config {path}: missing `{missing[0]}` in model.params / ddconfig")
    if dd.get("double_z", True):  # taming's Encoder default, meant for KL autoencoders
        raise UserError(f"taming config {path}: ddconfig.double_z must be false for a VQGAN")
    if dd["in_channels"] != 3 or dd["out_ch"] != 3:  # (a value of any type compares)
        raise UserError(f"taming config {path}: only RGB models are supported (in_channels={dd['in_channels']}, "
                        f"out_ch={dd['out_ch']})")
    if params.get("remap") is not None:
        raise UserError(f"taming config {path}: index remapping (`remap`) is not supported")
    sizes = {k: params[k] if k in params else dd[k] for k in ("n_embed", "embed_dim")}
    try:  # every value checked for type and range before a module is built from it
        return VQGANConfig(**{k: dd[k] for k in DDCONFIG_KEYS if k in dd}, **sizes, legacy=True,
                           quantizer=SUPPORTED_TARGETS[target])
    except ConfigError as e:
        raise UserError(f"taming config {path}: {e.detail}") from None


def import_taming(config_path: str | os.PathLike, ckpt_path: str | os.PathLike, out: str | os.PathLike) -> VQGAN:
    """Read a taming VQGAN, check every weight, write it to `out`; return the model."""
    config = read_taming_config(config_path)
    state_dict = find_state_dict(load_untrusted_checkpoint(ckpt_path), ckpt_path)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(DROPPED_PREFIXES)}
    with torch.device("meta"):  # the YAML's sizes are checked against the weights before they cost memory
        check_state_dict(VQGAN(config), state_dict, f"checkpoint {ckpt_path} does not match {config_path}")
    model = VQGAN(config)
    model.load_state_dict(state_dict)
    save_tokenizer(model, out)
    return model.eval()
