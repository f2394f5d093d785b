"""GPTConfig, the one dataclass that describes a GPT, and the named size presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from halluscope.errors import UserError
from halluscope.validate import ConfigError, choice, flag, number, whole, wholes

ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")
BLOCKS = ("gpt", "llama")  # minGPT-style (model.py) | Llama-style (llama.py)
# (least, most) of each size: generous for any GPT this workbench can run; a value past them is
# a mistake or an attack (a 10-million-layer config would take hours to build, even empty).
LIMITS = {"vocab_size": (1, 1 << 24), "block_size": (1, 1 << 20), "n_layer": (1, 1024), "n_head": (1, 1024),
          "n_embd": (1, 1 << 16), "n_cond": (0, 1 << 16), "cond_vocab_size": (0, 1 << 24),
          "ffn_hidden": (0, 1 << 20)}
OWNER = "GPT config"


@dataclass
class GPTConfig:
    vocab_size: int = 1024
    block_size: int = 256  # most tokens one forward pass reads: the length of the position table
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # Token grid the sequences are flattened from: (h, w) for images, (t, h, w) for clips.
    grid: tuple[int, ...] | None = None
    # Position embedding = sum of one learned table per grid axis instead of one per position:
    # far fewer parameters, and a clip's frames share their row/column embeddings.
    factorized_pos: bool = False
    # Condition tokens (e.g. a class id) read before the grid tokens, from their own vocabulary.
    n_cond: int = 0
    cond_vocab_size: int = 0
    # The condition id that means "no condition" (LlamaGen's null class): the default condition,
    # and the second branch of classifier-free guidance. None: the model has none.
    null_cond: int | None = None
    attention: str = "auto"  # auto | xformers | sdpa | math
    tokenizer: str | None = None  # folder of the tokenizer whose tokens this model reads
    # The block family, and the Llama family's own sizes: RMSNorm, SwiGLU of ffn_hidden units
    # (0: LlamaGen's rule, 8/3·n_embd rounded up to a multiple of 256), no biases, and rotary
    # positions over the grid's axes (base rope_base) in place of position tables.
    block: str = "gpt"
    ffn_hidden: int = 0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        """Types and ranges of every field, before anything is built from them."""
        for name, (least, most) in LIMITS.items():
            setattr(self, name, whole(OWNER, name, getattr(self, name), least, most))
        self.dropout = number(OWNER, "dropout", self.dropout, 0.0, 1.0, below_most=True)
        if self.grid is not None:
            self.grid = wholes(OWNER, "grid", self.grid, 1, 1 << 16, (1, 2, 3))
        self.factorized_pos = flag(OWNER, "factorized_pos", self.factorized_pos)
        self.attention = choice(OWNER, "attention", self.attention, ATTENTION_BACKENDS)
        self.block = choice(OWNER, "block", self.block, BLOCKS)
        self.rope_base = number(OWNER, "rope_base", self.rope_base, 1.0, 1e12)
        self.norm_eps = number(OWNER, "norm_eps", self.norm_eps, 1e-12, 1.0)
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise ConfigError(OWNER, f"tokenizer must be a folder name, got {self.tokenizer!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(OWNER, f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if (self.n_cond > 0) != (self.cond_vocab_size > 0):
            raise ConfigError(OWNER, "n_cond and cond_vocab_size must both be set (or both 0)")
        if self.null_cond is not None:
            if not self.n_cond:
                raise ConfigError(OWNER, "null_cond needs condition tokens (n_cond)")
            self.null_cond = whole(OWNER, "null_cond", self.null_cond, 0, self.cond_vocab_size - 1)
        if self.block == "llama":
            if self.factorized_pos:
                raise ConfigError(OWNER, "the llama block family has rotary positions, not factorized_pos tables")
            if self.head_dim % 2:
                raise ConfigError(OWNER, f"rotary positions need an even head size; n_embd / n_head = {self.head_dim}")
        elif self.ffn_hidden:
            raise ConfigError(OWNER, "ffn_hidden belongs to the llama block family (the gpt family's MLP is 4·n_embd)")
        if self.factorized_pos:
            if not self.grid:
                raise ConfigError(OWNER, "factorized_pos needs the token grid (grid)")
            if self.block_size > math.prod(self.grid):
                raise ConfigError(OWNER, f"block_size {self.block_size} exceeds the {math.prod(self.grid)} "
                                         f"positions of grid {self.grid}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def swiglu_hidden(self) -> int:
        """The llama family's feed-forward width: ffn_hidden, or LlamaGen's rule."""
        return self.ffn_hidden or -(-int(8 * self.n_embd / 3) // 256) * 256

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """The config a JSON object describes; unknown keys are a UserError, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"GPT config has unknown keys: {', '.join(unknown)}")
        return cls(**d)


# (n_layer, n_head, n_embd). The four large ones are the published VQGAN-GPT sizes (GPT-2's
# shapes); with a 16384-token vocabulary they hold about 110M, 336M, 750M and 1.5B parameters.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 4, 64),  # CPU tests
    "small": (6, 8, 256),  # CPU experiments
    "110m": (12, 12, 768),
    "336m": (24, 16, 1024),
    "730m": (36, 20, 1280),
    "1.5b": (48, 25, 1600),
}


def preset(name: str, **overrides) -> GPTConfig:
    """A GPTConfig of a named size; any field can be overridden (vocab_size, block_size, ...)."""
    if name not in PRESETS:
        raise UserError(f"unknown GPT preset {name!r}; choose one of {', '.join(PRESETS)}")
    n_layer, n_head, n_embd = PRESETS[name]
    return replace(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd), **overrides)
