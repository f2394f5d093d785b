"""Samplers: anything that, given the context of an example, returns N continuations as
tokens (and, if it can, scores token sequences). A GPT is one; a synthetic world's own
generative process is another, the oracle, whose answers are known, so the probes can be
validated against it. Probes never care which.

Also where examples come from: a world folder (examples.jsonl + world.json, each example
rendered exactly from its recorded state, with its meta for the oracle) or any image / video
folder."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from halluscope.data import ImageFolder, ImageWorld, VideoFolder, VideoWorld
from halluscope.data.answers import known_answer
from halluscope.errors import UserError
from halluscope.gpt.base import TokenModel
from halluscope.gpt.settings import SamplingSettings
from halluscope.io import read_json
from halluscope.probes.context import pixel_cut


@dataclass
class Example:
    id: str  # file (world folders) or source (media folders), stable across runs: the record key
    pixels: torch.Tensor  # (3, H, W) or (3, T, H, W) in [-1, 1]
    meta: dict | None = None  # a world example's recorded state, which the oracle continues


class Sampler(Protocol):
    name: str  # unique within a run: part of each record's key
    settings: dict  # what a record says about how it sampled

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        """N continuations (B, N, L - context_tokens) of each of B examples after the first
        `context_tokens` of their own tokens `tokens` (B, *grid) (= `context_units` leading
        rows / latent frames). A sampler that can also score sequences has GPTSampler's `score`."""


@dataclass
class GPTSampler:
    """One GPT with one sampling setting; a conditional GPT reads `cond` before every example
    (default: its null condition or start token, where it has one)."""
    gpt: TokenModel
    label: str
    sampling: SamplingSettings = SamplingSettings()
    cond: tuple[int, ...] | None = None
    settings: dict = field(init=False)

    def __post_init__(self) -> None:
        self.settings = {"gpt": self.label, **self.sampling.as_dict(), **({"cond": list(self.cond)} if self.cond else {})}

    @property
    def name(self) -> str:
        return " ".join([self.label, self.sampling.label()] + ([f"cond={','.join(map(str, self.cond))}"] if self.cond
                                                              else []))

    def rows_cond(self, rows: int) -> torch.Tensor | None:
        return None if self.cond is None else torch.tensor([self.cond] * rows)

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        seq = tokens.flatten(1)  # (B, L)
        # One call for the whole batch: B prefixes, each prefilled once and continued N times.
        new, _ = self.gpt.generate(seq[:, :context_tokens], seq.shape[1] - context_tokens, n, self.sampling,
                                   generator, cond=self.rows_cond(len(seq)))
        return new.view(len(seq), n, -1)

    def score(self, tokens: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
        """GPT.score of sequences (B, L) from `start` under the plain model (no temperature,
        filtering or guidance), so samples drawn with any setting are measured on one scale."""
        return self.gpt.score(tokens, start, self.rows_cond(len(tokens)))


@dataclass
class OracleSampler:
    """Continuations drawn from a world's posterior given the context, in pixels, then
    tokenized: images from the exact posterior of the hidden rows given the context rows
    (ImageWorld.continue_from), clips from the posterior of the shapes' states given the
    context frames, run on by the world's own dynamics (VideoWorld.continue_from). The
    sample's context tokens are replaced by the example's own, so only the continuation is
    the oracle's. After each `sample`, `stats` holds each example's sampler statistics
    (acceptance rate; for clips, how often the drawn state differs from the recorded one) and
    the world's known answer at that context (data/answers.py), which the summary averages."""
    world: ImageWorld | VideoWorld
    tokenizer: torch.nn.Module
    name: str = "oracle"
    settings: dict = field(default_factory=lambda: {"gpt": "oracle"})
    stats: dict[str, dict] = field(default_factory=dict, init=False)

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        self.stats = {}
        return torch.stack([self.continue_one(e, tuple(tokens.shape[1:]), context_units, context_tokens, n, generator)
                            for e in examples])

    def continue_one(self, example: Example, grid: tuple[int, ...], context_units: int, context_tokens: int, n: int,
                     generator: torch.Generator) -> torch.Tensor:
        """(N, L - context_tokens) continuation tokens of one example."""
        if example.meta is None:
            raise UserError(f"the oracle needs a world example; {example.id} has no recorded state")
        seed = int(torch.randint(2**31, (1,), generator=generator, device=generator.device))
        x = example.pixels
        _, cut = pixel_cut(x, grid, context_units)  # the first pixel row (images) or frame (clips) not shown
        pixels, stats = self.world.continue_from(example.meta, cut, n, seed)
        shapes = len(example.meta["states"][0]) if isinstance(self.world, VideoWorld) else None
        self.stats[example.id] = {**stats, **known_answer(self.world, cut, shapes)}
        if isinstance(self.world, VideoWorld):
            pixels = torch.cat([x[None, :, :cut].expand(n, -1, -1, -1, -1), pixels], dim=2)
        device = next(self.tokenizer.parameters(), torch.empty(0)).device
        return self.tokenizer.encode(pixels.to(device)).flatten(1)[:, context_tokens:]


def world_from_folder(folder: str | os.PathLike) -> ImageWorld | VideoWorld | None:
    """The world a folder written by `halluscope world` holds, or None for any other folder.
    Parameters a folder's world.json predates take their defaults (e.g. dependence 0)."""
    path = Path(folder) / "world.json"
    if not path.is_file():
        return None
    spec = read_json(path, "world description")
    kinds = {"image": ImageWorld, "video": VideoWorld}
    if spec.get("kind") not in kinds:
        raise UserError(f"{path} describes an unknown world kind {spec.get('kind')!r}")
    world = kinds[spec["kind"]]
    return world(**{f.name: spec[f.name] for f in dataclasses.fields(world) if f.name in spec})


def world_lines(folder: str | os.PathLike) -> list[dict]:
    """The lines of a world folder's examples.jsonl."""
    path = Path(folder) / "examples.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"world folder {folder} has no examples.jsonl") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON lines: {e}") from None


def check_world_fits(world: ImageWorld | VideoWorld, tokenizer: torch.nn.Module, folder: str | os.PathLike) -> None:
    if world.kind != tokenizer.kind:
        raise UserError(f"{folder} is a {world.kind} world but the tokenizer reads {tokenizer.kind}s")
    if world.size != tokenizer.resolution:
        raise UserError(f"{folder} holds {world.size}px examples; the tokenizer reads {tokenizer.resolution}px")
    if world.kind == "video" and world.frames != tokenizer.frames:
        raise UserError(f"{folder} holds {world.frames}-frame clips; the tokenizer reads {tokenizer.frames} frames")


def load_examples(folder: str | os.PathLike, tokenizer: torch.nn.Module, limit: int | None = None) \
        -> tuple[list[Example], ImageWorld | VideoWorld | None]:
    """The first `limit` examples of `folder` at the tokenizer's size, and the world the
    folder holds (None for a plain media folder). World examples are rendered from their
    recorded state (exact, no codec) and carry it; physics-violation twins are left out."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    world = world_from_folder(folder)
    if world is not None:
        check_world_fits(world, tokenizer, folder)
        lines = [m for m in world_lines(folder) if not m.get("violation")][:limit]
        return [Example(id=m["file"], pixels=world.render(m), meta=m) for m in lines], world
    if tokenizer.kind == "image":
        ds = ImageFolder(folder, tokenizer.resolution)
    else:
        ds = VideoFolder(folder, tokenizer.resolution, tokenizer.frames)
    examples = []
    for i, x in ds.iter_valid():
        examples.append(Example(id=ds.source(i), pixels=x))
        if limit is not None and len(examples) == limit:
            break
    return examples, None
