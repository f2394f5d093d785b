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
from halluscope.gpt.config import GPTConfig
from halluscope.gpt.model import GPT
from halluscope.io import load_model_folder, save_model_folder

KIND = "gpt"


def save_gpt(model: GPT, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    config = asdict(model.config)
    if config["tokenizer"] is not None:
        tokenizer = os.path.abspath(config["tokenizer"])
        try:
            config["tokenizer"] = os.path.relpath(tokenizer, os.path.abspath(folder))
        except ValueError:  # another drive (Windows): no relative path exists
            config["tokenizer"] = tokenizer
    return save_model_folder(folder, {"kind": KIND, **config}, model.state_dict())


def load_gpt(folder: str | os.PathLike, device: torch.device | str = "cpu") -> GPT:
    """The GPT saved in `folder`; its config.tokenizer comes back as a path usable from here."""
    folder = Path(folder)
    config, state_dict = load_model_folder(folder)
    kind = config.pop("kind", None)
    if kind != KIND:
        raise UserError(f"{folder} holds a {kind or 'unknown'} model, not a GPT (config.json kind={kind!r})")
    if config.get("tokenizer") is not None:
        config["tokenizer"] = os.path.normpath(os.path.join(folder.absolute(), config["tokenizer"]))
    try:
        config = GPTConfig.from_dict(config)
    except (TypeError, ValueError) as e:  # a value of the wrong type
        raise UserError(f"GPT config {folder / 'config.json'} is malformed: {e}") from None
    return gpt_from_state_dict(config, state_dict, str(folder)).to(device)


def gpt_from_state_dict(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: str) -> GPT:
    """A GPT in eval mode holding exactly these weights; a mismatch is one UserError."""
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = GPT(config)
    try:
        model.load_state_dict(state_dict, assign=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:300]
        raise UserError(f"weights from {source} do not fit the GPT config: {detail}") from None
    return model.eval()
