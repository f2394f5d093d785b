"""Import a LlamaGen class-conditional GPT (`c2i_*.pt`) onto LlamaGPT (llama.py).

LlamaGen saves `{'model': state, 'optimizer', 'steps', 'args'}` from DDP, or a bare state dict
from FSDP (also found under 'module' or 'state_dict'). Its keys map one to one onto ours:

    tok_embeddings -> tok_emb            cls_embedding.embedding_table -> cond_emb
    layers.i.attention.wqkv -> blocks.i.attn.qkv      attention.wo -> attn.proj
    layers.i.feed_forward.w1 / w3 / w2 -> blocks.i.mlp.gate / up / down
    layers.i.attention_norm / ffn_norm -> blocks.i.ln1 / ln2      norm -> ln_f   output -> head

The class token is the one condition slot; its last row (id num_classes) is the null class
that classifier-free guidance runs beside each row, when the model was trained with class
dropout. The vocabulary holds only image codes, so grid-token log-probabilities are exact.
The checkpoint does not record the head count or the grid: the head count follows from the
width (LlamaGen's sizes, below) or --n-head; the grid is the tokenizer's, checked against
args.image_size / args.downsample_size where the checkpoint has them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from halluscope.errors import UserError
from halluscope.gpt.base import TokenModel
from halluscope.gpt.checkpoint import gpt_from_state_dict
from halluscope.gpt.config import GPTConfig
from halluscope.io import checkpoint_setting
from halluscope.validate import ConfigError

# LlamaGen's GPT sizes, width -> heads (GPT-B, -L, -XL, -XXL, -3B); layers are counted in the weights.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1536: 24, 3200: 32}
STATE_KEYS = ("model", "module", "state_dict")
# Not weights: rotary tables and inference KV caches some scripts leave in the state dict.
SKIPPED = re.compile(r"(^|\.)freqs_cis$|\.kv_cache\.")
RENAMES = {
    "attention.wqkv": "attn.qkv", "attention.wo": "attn.proj", "feed_forward.w1": "mlp.gate",
    "feed_forward.w3": "mlp.up", "feed_forward.w2": "mlp.down", "attention_norm": "ln1", "ffn_norm": "ln2",
}
TOP_RENAMES = {"tok_embeddings.weight": "tok_emb.weight", "cls_embedding.embedding_table.weight": "cond_emb.weight",
               "norm.weight": "ln_f.weight", "output.weight": "head.weight"}


def llamagen_state(ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    """The GPT's tensors in a loaded LlamaGen checkpoint (DDP-wrapped or bare)."""
    if isinstance(ckpt, dict):
        for key in STATE_KEYS:
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
        sd = {k.removeprefix("module."): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        if "tok_embeddings.weight" in sd:
            return sd
    raise UserError(f"{source} is not a LlamaGen GPT: no `tok_embeddings.weight` at the top level or under "
                    f"{' / '.join(STATE_KEYS)}")


def rename(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """LlamaGen's keys in our layout, as float32; an unknown key is one UserError."""
    out = {}
    for key, value in sd.items():
        if SKIPPED.search(key):
            continue
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", key)
        new = TOP_RENAMES.get(key) or (m and m.group(2) in RENAMES and f"blocks.{m.group(1)}.{RENAMES[m.group(2)]}.weight")
        if not new:
            what = "text-conditional (t2i) models are not supported" if key.startswith("cls_embedding.") else \
                "this importer reads LlamaGen's c2i GPT only"
            raise UserError(f"{source}: unknown key `{key}` ({what})")
        out[new] = value.float()
    return out


def llamagen_config(sd: dict[str, torch.Tensor], args: dict[str, Any], flags: dict[str, Any],
                    grid: tuple[int, int], source: str) -> GPTConfig:
    """The GPTConfig of renamed weights `sd` reading a `grid` of tokens, from their shapes, the
    checkpoint's args and flags."""
    vocab, width = sd["tok_emb.weight"].shape
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    qkv = sd.get("blocks.0.attn.qkv.weight")
    if qkv is None or "cond_emb.weight" not in sd:
        raise UserError(f"{source}: a c2i GPT has layers.0.attention.wqkv and cls_embedding; one is missing")
    if qkv.shape[0] != 3 * width:  # grouped-query attention stores fewer key/value heads
        raise UserError(f"{source}: attention.wqkv has {qkv.shape[0]} rows, not 3 x {width}: grouped-query "
                        "attention (n_kv_head < n_head) is not supported")
    if args.get("cls_token_num", 1) != 1:
        raise UserError(f"{source}: cls_token_num is {args['cls_token_num']}; a c2i GPT has one class token")
    if "image_size" in args:  # LlamaGen's rotary grid is image_size / downsample_size on a side
        side = args["image_size"] // args.get("downsample_size", 16)
        if (side, side) != tuple(grid):
            raise UserError(f"{source}: its args (image_size {args['image_size']}, downsample_size "
                            f"{args.get('downsample_size', 16)}) give a {side}x{side} grid; the tokenizer makes "
                            f"{'x'.join(map(str, grid))}")
    n_head = checkpoint_setting("n_head", HEADS_BY_WIDTH.get(width), flags.get("n_head"), "--n-head")
    classes = sd["cond_emb.weight"].shape[0]
    # The null class exists when LlamaGen was trained with class dropout (its default): one row beyond num_classes.
    num_classes = args.get("num_classes", classes - 1)
    if classes not in (num_classes, num_classes + 1):
        raise UserError(f"{source}: cls_embedding has {classes} rows for num_classes {num_classes}")
    try:
        return GPTConfig(vocab_size=vocab, block_size=math.prod(grid), n_layer=layers, n_head=n_head, n_embd=width,
                         block="llama", ffn_hidden=sd["blocks.0.mlp.gate.weight"].shape[0], n_cond=1,
                         cond_vocab_size=classes, null_cond=num_classes if classes > num_classes else None,
                         grid=tuple(grid), rope_base=float(args.get("rope_base", 10000)),
                         norm_eps=float(args.get("norm_eps", 1e-5)), dropout=0.0)
    except ConfigError as e:
        raise UserError(f"{source}: {e.detail}") from None


def import_llamagen_gpt(ckpt: Any, args: dict[str, Any], flags: dict[str, Any], tokenizer: str,
                        grid: tuple[int, int], source: str) -> TokenModel:
    """The LlamaGPT holding a loaded LlamaGen checkpoint's weights, reading the tokenizer folder
    `tokenizer`'s `grid`."""
    sd = rename(llamagen_state(ckpt, source), source)
    config = llamagen_config(sd, args, flags, grid, source)
    config.tokenizer = tokenizer
    return gpt_from_state_dict(config, sd, f"weights from {source} do not fit a LlamaGen GPT")
