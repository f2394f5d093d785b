"""Baseline samplers: what a figure must beat before it says anything. Each is a Sampler
(samplers.py), so the probe runs, records, summarizes and reports it like a GPT.

- copy-last: every continuation repeats the context's last token row (images) or latent
  frame (clips): the world stands still. N identical samples.
- marginal: every continuation position drawn independently from the training tokens'
  marginal at that position: right per position, incoherent as a whole — the calibrated but
  hallucinating control (token spread-skill R = 1, no objects).
- shuffled: a sampler (a GPT, the oracle) given another held-out example's context, its
  continuation scored against this example's truth: what the sampler gets without the
  context, so metric(sampler) − metric(its shuffled twin) is the effect of the context."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from halluscope.data.token_cache import TokenCache
from halluscope.errors import UserError
from halluscope.gpt.train import TokenBatches
from halluscope.io import read_json
from halluscope.probes.context import encode_context
from halluscope.probes.samplers import Example, Sampler
from halluscope.probes.skill import BASELINES


@dataclass
class CopyLastSampler:
    name: str = "copy-last"
    settings: dict = field(default_factory=lambda: {"baseline": "copy-last"})

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        last = tokens[:, context_units - 1:context_units]  # (B, 1, ...)
        rest = last.expand(-1, tokens.shape[1] - context_units, *tokens.shape[2:]).flatten(1)  # (B, L - context)
        return rest[:, None].expand(-1, n, -1)


@dataclass
class MarginalSampler:
    marginal: torch.Tensor  # (L, V): position l's token distribution over the training tokens
    name: str = "marginal"
    settings: dict = field(default_factory=lambda: {"baseline": "marginal"})

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        p = self.marginal[context_tokens:].to(generator.device, torch.float64)
        draws = torch.multinomial(p, len(examples) * n, replacement=True, generator=generator)  # (L - context, B·N)
        return draws.T.reshape(len(examples), n, -1).to(tokens.device)


@dataclass
class ShuffledSampler:
    """`base` continuing each example's donor's context instead of its own."""
    base: Sampler
    donors: dict[str, Example]  # example id -> the example whose context it is given
    tokenizer: torch.nn.Module
    encoding: str = "visible"  # the run's context encoding (probes/context.py)
    cache: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)  # (donor id, units) -> tokens

    @property
    def name(self) -> str:
        return f"{self.base.name} shuffled"

    @property
    def settings(self) -> dict:
        return {**self.base.settings, "baseline": "shuffled", "of": self.base.name}

    def sample(self, examples: list[Example], tokens: torch.Tensor, context_units: int, context_tokens: int, n: int,
               generator: torch.Generator) -> torch.Tensor:
        donors = [self.donors[e.id] for e in examples]
        missing = [d for d in donors if (d.id, context_units) not in self.cache]
        if missing:
            with torch.no_grad():  # the donor's context encoded as the run encodes every context
                x = torch.stack([d.pixels for d in missing]).to(tokens.device)
                given = encode_context(self.tokenizer, x, context_units, self.encoding)
                encoded = torch.cat([given, self.tokenizer.encode(x).flatten(1)[:, context_tokens:]], 1)
            self.cache.update({(d.id, context_units): t.view(tokens.shape[1:]) for d, t in zip(missing, encoded)})
        donor_tokens = torch.stack([self.cache[d.id, context_units] for d in donors]).to(tokens.device)
        return self.base.sample(donors, donor_tokens, context_units, context_tokens, n, generator)


def shuffle_donors(examples: list[Example]) -> dict[str, Example]:
    """A fixed derangement: example i is given example (i + M//2) mod M's context, never its own,
    the same for every context fraction and sampler so that effects pair up."""
    if len(examples) < 2:
        raise UserError("the shuffled baseline needs at least 2 examples (another example's context to give)")
    m = len(examples)
    return {e.id: examples[(i + m // 2) % m] for i, e in enumerate(examples)}


def parse_baselines(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; expected some of {','.join(BASELINES)}")
    return list(dict.fromkeys(names))


def make_baselines(names: list[str], samplers: list[Sampler], examples: list[Example], tokenizer: torch.nn.Module,
                   marginal: torch.Tensor | None, encoding: str = "visible") -> list[Sampler]:
    """The baseline samplers `names` asks for: shuffled makes one twin of each of `samplers`
    (the GPT settings and the oracle); marginal needs the training tokens' marginal."""
    out: list[Sampler] = []
    for name in names:
        if name == "copy-last":
            out.append(CopyLastSampler())
        elif name == "marginal":
            if marginal is None:
                raise UserError("the marginal baseline needs training tokens: pass --train-tokens CACHE (a token "
                                "cache of the training data), or a --gpt trained by train-gpt")
            out.append(MarginalSampler(marginal))
        elif name == "shuffled":
            donors = shuffle_donors(examples)
            out += [ShuffledSampler(s, donors, tokenizer, encoding) for s in samplers]
    return out


# ----------------------------------------------------------------------------- training tokens


def token_marginal(sequences: np.ndarray | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(L, V) float32: each position's token frequencies over the sequences (M, L)."""
    seq = torch.as_tensor(np.asarray(sequences), dtype=torch.long)
    if len(seq) == 0:
        raise UserError("no training tokens to take a marginal from")
    length = seq.shape[1]
    flat = (torch.arange(length) * vocab_size + seq).flatten()
    counts = torch.bincount(flat, minlength=length * vocab_size).view(length, vocab_size)
    return (counts.double() / len(seq)).float()


def gpt_train_config(gpt_dir: str | os.PathLike) -> Path | None:
    """train-gpt's train_config.json for a GPT folder: in it, or in the run folder above it
    (train-gpt writes the weights to OUT/model and the config to OUT)."""
    for folder in (Path(gpt_dir), Path(gpt_dir).parent):
        if (folder / "train_config.json").is_file():
            return folder / "train_config.json"
    return None


def training_split(gpt_dir: str | os.PathLike) -> tuple[TokenCache, TokenBatches] | None:
    """The token cache train-gpt trained the GPT in `gpt_dir` on and its own train / validation
    split, or None when its training config or cache is not there; a UserError only when the
    config names a cache that is missing (`recorded`: the path as written, relative to where
    train-gpt ran, else to the run folder)."""
    config = gpt_train_config(gpt_dir)
    if config is None:
        return None
    spec = read_json(config, "GPT training config")
    recorded = Path(spec["tokens"])
    path = recorded if recorded.is_absolute() or recorded.exists() else config.parent / recorded
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{config} says the GPT trained on {recorded}, which is not there")
    cache = TokenCache(path)
    return cache, TokenBatches(cache, spec.get("val_fraction", 0.05), spec.get("seed", 0))


def training_marginal(tokenizer: torch.nn.Module, train_tokens: str | os.PathLike | None = None,
                      gpt_dir: str | os.PathLike | None = None, required: bool = False) \
        -> tuple[torch.Tensor, str] | None:
    """(the per-position marginal (L, V), where it came from): every example of the cache
    `train_tokens` or, without it, the training split of the cache the GPT in `gpt_dir` was
    trained on (its held-out split left out); None when neither is known, or when the GPT's
    cache is gone and the marginal is not `required` (then a UserError)."""
    if train_tokens is not None:
        cache = TokenCache(train_tokens)
        check_cache(cache, tokenizer)
        return token_marginal(cache.sequences(), cache.vocab_size), str(train_tokens)
    try:
        found = training_split(gpt_dir) if gpt_dir is not None else None
    except FileNotFoundError as e:
        if not required:
            return None
        raise UserError(f"{e}; pass --train-tokens CACHE") from None
    if found is None:
        return None
    cache, split = found
    check_cache(cache, tokenizer)
    return token_marginal(split.train, cache.vocab_size), str(cache.path)


def check_cache(cache: TokenCache, tokenizer: torch.nn.Module) -> None:
    if tuple(cache.grid) != tuple(tokenizer.grid) or cache.vocab_size != tokenizer.vocab_size:
        raise UserError(f"token cache {cache.path} holds {cache.grid} grids of {cache.vocab_size} codes; the "
                        f"tokenizer makes {tuple(tokenizer.grid)} grids of {tokenizer.vocab_size}")
