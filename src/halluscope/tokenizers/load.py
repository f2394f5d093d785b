"""Build, save and load tokenizers as model folders (config.json + model.safetensors); the
config's `arch` picks the class."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from halluscope.errors import UserError
from halluscope.io import Shapes, check_shapes, load_model_folder, model_shapes, save_model_folder, tensor_shapes
from halluscope.validate import ConfigError
from halluscope.tokenizers.config import (FramewiseConfig, TATSConfig, VQGAN3DConfig, VQGANConfig, config_from_dict,
                                          config_to_dict)
from halluscope.tokenizers.framewise import Framewise
from halluscope.tokenizers.tats import TATSVQGAN
from halluscope.tokenizers.vqgan import VQGAN
from halluscope.tokenizers.vqgan3d import VQGAN3D

Tokenizer = VQGAN | VQGAN3D | Framewise | TATSVQGAN
TokenizerConfig = VQGANConfig | FramewiseConfig | VQGAN3DConfig | TATSConfig


def build_tokenizer(config: TokenizerConfig) -> Tokenizer:
    return {"vqgan": VQGAN, "framewise": Framewise, "vqgan3d": VQGAN3D, "tats": TATSVQGAN}[config.arch](config)


def save_tokenizer(model: Tokenizer, folder: str | os.PathLike) -> Path:
    return save_model_folder(folder, config_to_dict(model.config), model.state_dict())


def check_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
    """Every parameter present and shaped right, nothing left over; else one error naming the
    first offending key (in the model's own order)."""
    check_shapes(model_shapes(model), tensor_shapes(state_dict), source)


def tokenizer_config(config: dict, folder: Path) -> TokenizerConfig:
    """The checked config of a tokenizer folder's config.json (as read)."""
    try:
        return config_from_dict(config)
    except ConfigError as e:
        raise UserError(f"tokenizer config {folder / 'config.json'} is malformed: {e.detail}") from None
    except TypeError as e:  # a missing field, or a nested config of the wrong form
        raise UserError(f"tokenizer config {folder / 'config.json'} is malformed: {e}") from None


def tokenizer_shapes(config: TokenizerConfig) -> Shapes:
    """The weight shapes a tokenizer of this config holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        return model_shapes(build_tokenizer(config))


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in `folder`, in eval mode on the CPU. The config is checked, and the
    weight shapes it implies are compared with the weights file's header, before a module of
    its size is built or a weight is read."""
    folder = Path(folder)
    config, state_dict = load_model_folder(folder, lambda c: (tokenizer_shapes(tokenizer_config(c, folder)),
                                                              str(folder)))
    model = build_tokenizer(tokenizer_config(config, folder))
    model.load_state_dict(state_dict)
    return model.eval()

