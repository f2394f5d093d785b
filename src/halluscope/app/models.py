"""The models the app offers: every GPT folder (config.json with "kind": "gpt") under one
root, each known by its path relative to that root. A user picks a name from that list,
never a path, and a GPT whose tokenizer lies outside the root is not offered, so nothing
outside the root can be reached from the page."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.io import CONFIG_NAME, read_config
from halluscope.gpt.base import TokenModel
from halluscope.probes.sample import check_pair
from halluscope.tokenizers import Tokenizer, load_tokenizer


@dataclass
class Model:
    name: str
    gpt: TokenModel
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


def gpt_tokenizer(folder: Path, root: Path) -> Path | None:
    """The tokenizer folder (resolved) a GPT folder's config.json names, or None when the folder
    holds another kind of model; a GPT that cannot be offered is a UserError saying why."""
    config = read_config(folder / CONFIG_NAME)
    if config.get("kind") != "gpt":
        return None
    named = config.get("tokenizer")
    if not isinstance(named, str) or not named:
        raise UserError("its config names no tokenizer")
    tokenizer = (folder / named).resolve()
    if not tokenizer.is_relative_to(root):
        raise UserError(f"its tokenizer {tokenizer} lies outside --models {root}, and the app opens nothing "
                        "outside it: move the tokenizer under it, or pass a --models folder holding both")
    if not (tokenizer / CONFIG_NAME).is_file():
        raise UserError(f"its tokenizer {tokenizer} has no {CONFIG_NAME}")
    return tokenizer


class ModelStore:
    """The GPT folders under `root` by name, loaded on first use and kept (CPU or `device`):
    the `keep` most recently used ones, so that clients choosing model after model cannot
    make the server hold them all. `skipped` lists (folder, reason) for every GPT folder (or
    unreadable config.json) found but not offered."""

    def __init__(self, root: str | os.PathLike, device: str = "cpu", keep: int = 2):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"models folder not found: {root} (run `halluscope demo` first, or pass --models DIR)")
        if keep < 1:
            raise UserError(f"the app must keep at least one model loaded, got {keep}")
        self.device, self.keep = device, keep
        self.loaded: OrderedDict[str, Model] = OrderedDict()
        self.lock = threading.Lock()
        self.folders, self.tokenizers, self.skipped = {}, {}, []
        self.discover()
        if not self.folders:
            reasons = "".join(f"; skipped {self.root / name}: {reason}" for name, reason in self.skipped[:3])
            raise UserError(f"no GPT model folders (config.json with kind \"gpt\" and a tokenizer) under {root}"
                            + reasons)

    def discover(self) -> None:
        """Fill `folders` (name -> GPT folder), `tokenizers` (name -> its tokenizer folder) and
        `skipped`, for every config.json under the root. Only GPTs whose tokenizer lies under
        the root too are offered. A training run's intermediate checkpoints/ are left out
        silently: the run's model/ is the one to try."""
        for config in sorted(self.root.rglob(CONFIG_NAME)):
            folder = config.parent
            name = folder.relative_to(self.root).as_posix()
            if "checkpoints" in folder.relative_to(self.root).parts:
                continue
            try:  # a stray, half-written or hostile config.json is skipped, never fatal
                tokenizer = gpt_tokenizer(folder, self.root)
            except UserError as e:
                self.skipped.append((name, str(e)))
                continue
            if tokenizer is not None:
                self.folders[name], self.tokenizers[name] = folder, tokenizer

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def get(self, name: str) -> Model:
        if name not in self.folders:
            raise UserError(f"unknown model {name!r}; pick one of: {', '.join(self.names)}")
        with self.lock:  # two first requests for one model load it once
            if name not in self.loaded:
                gpt = load_gpt(self.folders[name], self.device)
                tokenizer = load_tokenizer(self.tokenizers[name]).to(self.device)
                check_pair(gpt, tokenizer)
                self.loaded[name] = Model(name, gpt, tokenizer)
                while len(self.loaded) > self.keep:  # requests still using it keep it until they finish
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(name)
            return self.loaded[name]
