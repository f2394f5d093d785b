"""halluscope.gpt owns the autoregressive transformer over token sequences: one model
interface (TokenModel) with two block families (minGPT-style GPT, Llama-style LlamaGPT),
attention backends (xformers / SDPA / math), the preallocated KV cache, prefix-shared
sampling with one SamplingSettings value, teacher-forced scoring, training and the foreign
GPT importers. It may import `halluscope.data`, never tokenizers, probes or app: a GPT knows
its tokenizer only by the folder name its config records."""

from halluscope.gpt.base import TokenModel
from halluscope.gpt.build import build_gpt
from halluscope.gpt.checkpoint import load_gpt, save_gpt
from halluscope.gpt.config import PRESETS, GPTConfig, preset
from halluscope.gpt.kv_cache import KVCache
from halluscope.gpt.llama import LlamaGPT
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings

__all__ = ["TokenModel", "GPT", "LlamaGPT", "GPTConfig", "KVCache", "PRESETS", "SamplingSettings", "build_gpt",
           "preset", "load_gpt", "save_gpt"]
