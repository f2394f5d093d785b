"""A GPT on disk: a folder of config.json (GPTConfig + "kind": "gpt") and model.safetensors.

The config names the tokenizer folder relative to the GPT folder where it can, so a models/
directory holding both can be moved or copied as a whole.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from halluscope.errors import UserError
from halluscope.gpt.base import TokenModel
from halluscope.gpt.build import build_gpt
from halluscope.gpt.config import GPTConfig
from halluscope.io import Shapes, check_shapes, load_model_folder, model_shapes, save_model_folder, tensor_shapes
from halluscope.validate import ConfigError

KIND = "gpt"


def save_gpt(model: TokenModel, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    config = asdict(model.config)
    if config["tokenizer"] is not None:
        tokenizer = os.path.abspath(config["tokenizer"])
        try:
            config["tokenizer"] = os.path.relpath(tokenizer, os.path.abspath(folder))
        except ValueError:  # another drive (Windows): no relative path exists
            config["tokenizer"] = tokenizer
    return save_model_folder(folder, {"kind": KIND, **config}, model.state_dict())


def gpt_config(config: dict, folder: Path) -> GPTConfig:
    """The checked GPTConfig of a GPT folder's config.json (as read); its tokenizer comes back
    as a path usable from here."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind != KIND:
        raise UserError(f"{folder} holds a {kind or 'unknown'} model, not a GPT (config.json kind={kind!r})")
    if isinstance(config.get("tokenizer"), str):
        config["tokenizer"] = os.path.normpath(os.path.join(folder.absolute(), config["tokenizer"]))
    try:
        return GPTConfig.from_dict(config)
    except ConfigError as e:
        raise UserError(f"GPT config {folder / 'config.json'} is malformed: {e.detail}") from None


def load_gpt(folder: str | os.PathLike, device: torch.device | str = "cpu") -> TokenModel:
    """The GPT saved in `folder`. The config is checked, and the weight shapes it implies are
    compared with the weights file's header, before a weight is read."""
    folder = Path(folder)
    source = f"weights from {folder} do not fit the GPT config"
    config, state_dict = load_model_folder(folder, lambda c: (gpt_shapes(gpt_config(c, folder)), source))
    return gpt_from_state_dict(gpt_config(config, folder), state_dict, source).to(device)


def gpt_shapes(config: GPTConfig) -> Shapes:
    """The weight shapes a GPT of this config holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        return model_shapes(build_gpt(config))


def gpt_from_state_dict(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: str) -> TokenModel:
    """A GPT in eval mode holding exactly these weights; a mismatch is one UserError saying
    `source`: the first weight that does not fit."""
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = build_gpt(config)
    check_shapes(model_shapes(model), tensor_shapes(state_dict), source)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()
