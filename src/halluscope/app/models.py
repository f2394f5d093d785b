"""The models the app offers: every GPT folder (config.json with "kind": "gpt") under one
root, each known by its path relative to that root. A user picks a name from that list,
never a path, and a GPT whose tokenizer lies outside the root is not offered, so nothing
outside the root can be reached from the page."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.model import GPT
from halluscope.probes.sample import check_pair
from halluscope.tokenizers import Tokenizer, load_tokenizer


@dataclass
class Model:
    name: str
    gpt: GPT
    tokenizer: Tokenizer

    @property
    def kind(self) -> str:
        return self.tokenizer.kind

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.grid)

    @property
    def unit_name(self) -> str:
        """What one step of the context slider is."""
        return "token rows" if self.kind == "image" else "latent frames"

    def describe(self) -> str:
        t = self.tokenizer
        size = f"{t.resolution}²" + (f" × {t.frames} frames" if t.kind == "video" else "")
        return (f"**{self.name}** · {t.kind} model · input {size} · token grid {' × '.join(map(str, self.grid))} · "
                f"{t.vocab_size} codes · GPT {self.gpt.num_params() / 1e6:.2f}M parameters")


def gpt_tokenizer(folder: Path) -> Path | None:
    """The tokenizer folder a GPT folder's config names, resolved, or None when it names none."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("kind") != "gpt" or not config.get("tokenizer"):
        return None
    return (folder / config["tokenizer"]).resolve()


class ModelStore:
    """The GPT folders under `root` by name, loaded on first use and kept (CPU or `device`)."""

    def __init__(self, root: str | os.PathLike, device: str = "cpu"):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"models folder not found: {root} (run `halluscope demo` first, or pass --models DIR)")
        self.device = device
        self.loaded: dict[str, Model] = {}
        self.lock = threading.Lock()
        self.folders = self.discover()
        if not self.folders:
            raise UserError(f"no GPT model folders (config.json with kind \"gpt\" and a tokenizer) under {root}")

    def discover(self) -> dict[str, Path]:
        """name -> GPT folder, for every GPT folder under the root whose tokenizer is under it too.
        A training run's intermediate checkpoints/ are left out: the run's model/ is the one to try."""
        found = {}
        for config in sorted(self.root.rglob("config.json")):
            folder = config.parent
            if "checkpoints" in folder.relative_to(self.root).parts:
                continue
            try:
                tokenizer = gpt_tokenizer(folder)
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue  # a half-written or foreign folder is not a model to offer
            if tokenizer is not None and tokenizer.is_relative_to(self.root) and (tokenizer / "config.json").is_file():
                found[folder.relative_to(self.root).as_posix()] = folder
        return found

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def get(self, name: str) -> Model:
        if name not in self.folders:
            raise UserError(f"unknown model {name!r}; pick one of: {', '.join(self.names)}")
        with self.lock:  # two first requests for one model load it once
            if name not in self.loaded:
                folder = self.folders[name]
                gpt = load_gpt(folder, self.device)
                tokenizer = load_tokenizer(gpt_tokenizer(folder)).to(self.device)
                check_pair(gpt, tokenizer)
                self.loaded[name] = Model(name, gpt, tokenizer)
            return self.loaded[name]
