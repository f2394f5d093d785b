"""halluscope.gpt owns the autoregressive transformer over token sequences: attention
backends (xformers / SDPA / math), the preallocated KV cache, prefix-shared sampling,
teacher-forced scoring, training and the minGPT checkpoint importer. It may import
`halluscope.data`, never tokenizers, probes or app: a GPT knows its tokenizer only by the
folder name its config records."""

from halluscope.gpt.checkpoint import load_gpt, save_gpt
from halluscope.gpt.config import PRESETS, GPTConfig, preset
from halluscope.gpt.kv_cache import KVCache
from halluscope.gpt.model import GPT

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "preset", "load_gpt", "save_gpt"]
