"""SamplingSettings: how a continuation is drawn, as one value passed through every layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from halluscope.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """temperature divides the logits; top_k keeps the k largest, then top_p the smallest set
    holding that much probability (None: off); cfg_scale s mixes a conditional model's logits
    with its null condition's, u + s·(c − u) (1: plain conditional sampling, no null rows run)."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0

    def __post_init__(self) -> None:
        """Checked once, where a user typed them, with a message that names the setting."""
        if isinstance(self.temperature, bool) or not 0 < self.temperature < math.inf:
            raise UserError(f"temperature must be a positive finite number (got {self.temperature}); "
                            "use top_k=1 for greedy decoding")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise UserError(f"top_k must be a whole number of at least 1 (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1] (got {self.top_p})")
        if not 0 <= self.cfg_scale < math.inf:
            raise UserError(f"cfg_scale must be a finite number of at least 0 (got {self.cfg_scale})")

    @classmethod
    def from_flags(cls, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   cfg_scale: float = 1.0) -> "SamplingSettings":
        """The settings of command-line or UI values, where 0 top-k and 1 top-p mean off."""
        return cls(temperature, top_k or None, None if top_p in (None, 1) else top_p, cfg_scale)

    @property
    def plain(self) -> bool:
        """Draws from the model's own distribution: temperature 1, no truncation, no guidance."""
        return self.temperature == 1 and self.top_k is None and self.top_p is None and self.cfg_scale == 1

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1

    def label(self) -> str:
        """A short name such as 'T=1 top-k=128 cfg=2' (only what is switched on beyond T)."""
        parts = [f"T={self.temperature:g}"]
        parts += [f"top-k={self.top_k}"] if self.top_k else []
        parts += [f"top-p={self.top_p:g}"] if self.top_p else []
        parts += [f"cfg={self.cfg_scale:g}"] if self.guided else []
        return " ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)
