"""The block family a config names, built: the one place that maps `block` to a class."""

from __future__ import annotations

from halluscope.gpt.base import TokenModel
from halluscope.gpt.config import GPTConfig
from halluscope.gpt.llama import LlamaGPT
from halluscope.gpt.model import GPT

FAMILIES: dict[str, type[TokenModel]] = {"gpt": GPT, "llama": LlamaGPT}


def build_gpt(config: GPTConfig) -> TokenModel:
    return FAMILIES[config.block](config)
