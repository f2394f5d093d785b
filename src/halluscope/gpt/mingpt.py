"""Import GPTs saved in minGPT's layout: minGPT itself (`mingpt`), and the transformer inside
taming-transformers' Net2NetTransformer and TATS (`net2net`: keys under `transformer.` beside
the first-stage model's), with the VQGAN-GPT models trained on those codebases.

minGPT keeps separate key / query / value projections and a (1, T, C) position table; ours
fuse q, k, v into one matmul. Sizes the state dict determines (vocabulary, width, block size)
are read from it; the flags that it cannot (layers, heads) are checked against it.

A Net2Net / TATS GPT reads [c, z + classes]: position 0 holds its condition — the start token
(token id 0, sharing code 0's embedding) when unconditional, else the class id — and grid
token i sits at position i + 1. It maps onto our condition slot (n_cond = 1): cond_emb = the
first max(classes, 1) rows of tok_emb, cond_pos = position 0, the grid's positions 1..T-1,
and the codes' rows of tok_emb and head. Logits over codes are exact; a class-conditional
model's softmax then leaves out the class ids it never samples as codes, so its
log-probabilities are renormalised over the codes. Reading such a file as plain minGPT would
shift every grid token one position: it is refused.
"""

from __future__ import annotations

import math
import os
import re

import torch

from halluscope.errors import UserError
from halluscope.gpt.checkpoint import gpt_from_state_dict
from halluscope.gpt.config import LIMITS, GPTConfig
from halluscope.gpt.model import GPT
from halluscope.io import find_state_dict, load_untrusted_checkpoint
from halluscope.validate import whole

# Per-block minGPT name -> ours (for .weight and .bias). q, k, v are handled apart: they fuse.
BLOCK_RENAMES = {"ln1": "ln1", "ln2": "ln2", "attn.proj": "attn.proj", "mlp.0": "mlp.fc", "mlp.2": "mlp.proj"}
EMBEDDING = "tok_emb.weight"


NET2NET_SIBLINGS = ("first_stage_model.", "cond_stage_model.")  # what sits beside a Net2Net / TATS GPT


OWNER = "minGPT import"


def _strip_prefix(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The GPT's own keys: whatever precedes `tok_emb.weight` (``, `transformer.`, `module.`)
    is removed, and keys of other sub-models in the same checkpoint are left out; and whether
    the GPT sits in a Net2Net / TATS wrapper (under `transformer.` beside a first-stage model)."""
    prefixes = sorted({k[: -len(EMBEDDING)] for k in sd if k.endswith(EMBEDDING)})
    if not prefixes:
        raise UserError(f"no minGPT token embedding (`{EMBEDDING}`) in the checkpoint; is it a minGPT-layout GPT?")
    if len(prefixes) > 1:
        raise UserError(f"the checkpoint holds several minGPT models (under {', '.join(repr(p) for p in prefixes)})")
    wrapped = prefixes[0].endswith("transformer.") and any(k.startswith(NET2NET_SIBLINGS) for k in sd)
    return {k[len(prefixes[0]):]: v for k, v in sd.items() if k.startswith(prefixes[0])}, wrapped


def _check_causal(mask: torch.Tensor, key: str) -> None:
    m = mask.reshape(mask.shape[-2:]) != 0
    if not torch.equal(m, torch.ones_like(m).tril()):
        raise UserError(f"{key} is not a causal (lower-triangular) mask; models whose first positions "
                        "see each other (taming's n_unmasked > 0) are not supported")


def convert_mingpt(sd: dict[str, torch.Tensor], n_layer: int, n_head: int, block_size: int | None = None,
                   classes: int | None = None) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, state dict in our layout) for a minGPT-layout state dict: plain minGPT when
    `classes` is None, else a Net2Net / TATS GPT with that many class ids ahead of its codes
    (0: unconditional, position 0 the start token). block_size may be smaller than the grid
    positions the checkpoint has (only the first are kept)."""
    # Checked before anything is read: sizes may come from a foreign checkpoint's args (TATS's Namespace).
    n_layer, n_head = (whole(OWNER, name, v, *LIMITS[name]) for name, v in (("n_layer", n_layer), ("n_head", n_head)))
    if classes is not None:
        classes = whole(OWNER, "classes", classes, 0, LIMITS["cond_vocab_size"][1])
    sd, wrapped = _strip_prefix(sd)
    if wrapped and classes is None:
        raise UserError("this is a taming Net2NetTransformer / TATS GPT (under `transformer.` beside "
                        "`first_stage_model.`): its position 0 is a start or class token, which --format mingpt "
                        "would drop, shifting every grid token; import it with --format net2net (and --classes N "
                        "for a class-conditional model)")
    start = 0 if classes is None else 1  # positions ahead of the grid

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise UserError(f"minGPT checkpoint is missing `{key}`")
        t = sd.pop(key)
        return t.float() if t.is_floating_point() else t

    if sd[EMBEDDING].dim() != 2:
        raise UserError(f"`{EMBEDDING}` has shape {tuple(sd[EMBEDDING].shape)}; a token embedding is (vocab, width)")
    vocab, n_embd = sd[EMBEDDING].shape
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        raise UserError(f"minGPT checkpoint has gaps in its block numbers: {blocks}")
    if len(blocks) != n_layer:
        raise UserError(f"--n-layer is {n_layer}, but the checkpoint has {len(blocks)} transformer blocks")
    if n_embd % n_head:
        raise UserError(f"--n-head {n_head} does not divide the checkpoint's width n_embd={n_embd}")
    pos = take("pos_emb")
    if pos.dim() < 2 or pos.shape[-1] != n_embd or pos.numel() != pos.shape[-2] * n_embd:
        raise UserError(f"pos_emb has shape {tuple(pos.shape)}; expected (1, positions, {n_embd})")
    pos = pos.reshape(pos.shape[-2:])  # (1, T, C) -> (T, C)
    if block_size is None:
        block_size = pos.shape[0] - start
    elif block_size > pos.shape[0] - start:
        raise UserError(f"--block-size {block_size} exceeds the checkpoint's {pos.shape[0] - start} grid positions")
    if classes is not None and not 0 <= classes < vocab:
        raise UserError(f"--classes {classes} must be in [0, {vocab}) for a vocabulary of {vocab}")

    tok_emb, head = take(EMBEDDING), take("head.weight")
    if head.shape != (vocab, n_embd):
        raise UserError(f"head.weight is {tuple(head.shape)}, expected ({vocab}, {n_embd}) from tok_emb")
    out = {"tok_emb.weight": tok_emb, "pos_emb": pos[start:start + block_size], "head.weight": head}
    cond = {}
    if classes is not None:  # the condition (start token or class id) at position 0; the codes after the classes
        out.update({"tok_emb.weight": tok_emb[classes:].clone(), "head.weight": head[classes:].clone(),
                    "cond_emb.weight": tok_emb[:max(classes, 1)].clone(), "cond_pos": pos[:1].clone()})
        cond = {"n_cond": 1, "cond_vocab_size": max(classes, 1)}
    for part in ("weight", "bias"):
        out[f"ln_f.{part}"] = take(f"ln_f.{part}")
    for i in blocks:
        p = f"blocks.{i}."
        if p + "attn.mask" in sd:
            _check_causal(sd.pop(p + "attn.mask"), p + "attn.mask")
        for part in ("weight", "bias"):
            out[f"{p}attn.qkv.{part}"] = torch.cat([take(f"{p}attn.{n}.{part}") for n in ("query", "key", "value")])
            for old, new in BLOCK_RENAMES.items():
                out[f"{p}{new}.{part}"] = take(f"{p}{old}.{part}")
    if sd:
        extra = sorted(sd)
        raise UserError(f"minGPT checkpoint has {len(extra)} keys this importer does not know, e.g. "
                        f"{', '.join(extra[:3])}")
    config = GPTConfig(vocab_size=out["tok_emb.weight"].shape[0], block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd, **cond)
    return config, out


def import_mingpt(ckpt: str | os.PathLike, n_layer: int, n_head: int, block_size: int | None = None,
                  tokenizer: str | None = None, grid: tuple[int, ...] | None = None,
                  classes: int | None = None) -> GPT:
    """A GPT from a minGPT-layout checkpoint file (bare state dict, or under `state_dict` /
    `model_state_dict` / `model`), read without running any pickled code; `classes` as in
    convert_mingpt (None: plain minGPT)."""
    sd = find_state_dict(load_untrusted_checkpoint(ckpt), ckpt)
    return gpt_from_mingpt(sd, n_layer, n_head, block_size, tokenizer, grid, classes, str(ckpt))


def gpt_from_mingpt(sd: dict[str, torch.Tensor], n_layer: int, n_head: int, block_size: int | None = None,
                    tokenizer: str | None = None, grid: tuple[int, ...] | None = None, classes: int | None = None,
                    source: str = "checkpoint") -> GPT:
    """import_mingpt on a state dict already loaded (from `source`): a checkpoint that also holds
    the tokenizer (TATS's) is read once."""
    config, state_dict = convert_mingpt(sd, n_layer, n_head, block_size, classes)
    config.tokenizer, config.grid = tokenizer, tuple(grid) if grid else None
    if grid and math.prod(grid) - 1 > config.block_size:
        raise UserError(f"token grid {'x'.join(map(str, grid))} needs {math.prod(grid) - 1} positions; "
                        f"the model has {config.block_size}")
    return gpt_from_state_dict(config, state_dict, f"weights from {source} do not fit the GPT config")
