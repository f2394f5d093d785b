"""A fixed, deterministic stand-in tokenizer for probe tests: each token is the mean colour of
a p×p pixel patch (one frame at a time for clips), quantized to 4 levels per channel. Equal
pixels give equal tokens and a moved shape changes the tokens it covers, which is all the
known-answer tests need, with no training and no randomness."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

LEVELS = 4


class PatchTokenizer(nn.Module):
    def __init__(self, kind: str = "image", resolution: int = 32, frames: int | None = None, patch: int = 4):
        super().__init__()
        self.kind, self.resolution, self.frames, self.patch = kind, resolution, frames, patch
        side = resolution // patch
        self.grid = (side, side) if kind == "image" else (frames, side, side)
        self.vocab_size = LEVELS ** 3
        self.register_buffer("scale", torch.tensor([LEVELS ** 2, LEVELS, 1]))

    def per_frame(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.kind == "image":
            return x, 1
        return x.transpose(1, 2).flatten(0, 1), x.shape[2]  # (B·T, 3, H, W)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch means (B, 3, *grid)."""
        frames, t = self.per_frame(x)
        f = F.avg_pool2d(frames, self.patch)
        if self.kind == "image":
            return f
        return f.view(-1, t, *f.shape[1:]).transpose(1, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        levels = ((self.features(x) + 1) / 2 * LEVELS).floor().clamp(0, LEVELS - 1).long()
        return (levels * self.scale.view(1, 3, *[1] * len(self.grid))).sum(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        digits = torch.stack([tokens // LEVELS ** 2, tokens // LEVELS % LEVELS, tokens % LEVELS], 1)
        x = (digits.float() + 0.5) / LEVELS * 2 - 1  # (B, 3, *grid)
        return x.repeat_interleave(self.patch, -1).repeat_interleave(self.patch, -2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and on a CPU shared with other jobs several
    threads spin against each other (8x slower measured); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
