"""Build, save and load tokenizers as model folders (config.json + model.safetensors); the
config's `arch` picks the class."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from halluscope.errors import UserError
from halluscope.io import load_model_folder, save_model_folder
from halluscope.tokenizers.config import FramewiseConfig, VQGAN3DConfig, VQGANConfig, config_from_dict, config_to_dict
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.vqgan import VQGAN
from halluscope.tokenizers.vqgan3d import VQGAN3D

Tokenizer = VQGAN | VQGAN3D | Framewise


def build_tokenizer(config: VQGANConfig | FramewiseConfig | VQGAN3DConfig) -> Tokenizer:
    return {"vqgan": VQGAN, "framewise": Framewise, "vqgan3d": VQGAN3D}[config.arch](config)


def save_tokenizer(model: Tokenizer, folder: str | os.PathLike) -> Path:
    return save_model_folder(folder, config_to_dict(model.config), model.state_dict())


def check_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
    """Every parameter present and shaped right, nothing left over; else one error naming the
    first offending key (in the model's own order)."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise UserError(f"{source}: missing weight `{key}` (expected shape {tuple(value.shape)})")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise UserError(f"{source}: weight `{key}` has shape {tuple(state_dict[key].shape)}, "
                            f"expected {tuple(value.shape)}")
    extra = [k for k in state_dict if k not in expected]
    if extra:
        raise UserError(f"{source}: unexpected weight `{extra[0]}` ({len(extra)} unused keys in all)")


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in `folder`, in eval mode on the CPU."""
    config, state_dict = load_model_folder(folder)
    try:
        model = build_tokenizer(config_from_dict(config))
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a value of the wrong type or range
        raise UserError(f"tokenizer config {Path(folder) / 'config.json'} is malformed: {e}") from None
    check_state_dict(model, state_dict, str(folder))
    model.load_state_dict(state_dict)
    return model.eval()

