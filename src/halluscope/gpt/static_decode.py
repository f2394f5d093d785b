"""The decode step at static shapes, captured once as a CUDA graph and replayed.

On a GPU a small model's decode step is a few hundred short kernels: launching them costs more
than running them, so the eager loop is launch-bound. Here every step has the same shapes and
no host-side values: the KV cache is preallocated for the whole generation and written in
place at a position held in a device tensor, attention reads every cache position with the
ones not yet written masked (attention.attend_static), and the token and position are copied
into fixed input buffers. On CUDA the step is captured as a CUDA graph on its first use for a
shape and replayed at every later step and call of that shape; elsewhere (the CPU tests) the
same step runs eagerly. Sampling from the logits stays outside the graph, on the device, with
the caller's generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halluscope.gpt.kv_cache import KVCache

if TYPE_CHECKING:
    from halluscope.gpt.base import TokenModel


class StaticDecoder:
    """Fixed buffers for `rows` sequences of up to `positions` cached positions (condition
    slots included) of one model; `prefill` then `step` per token. Reused across calls."""

    def __init__(self, model: "TokenModel", rows: int, positions: int):
        self.model = model
        self.cache: KVCache = model.new_cache(rows, positions - model.config.n_cond)
        self.cache.kv.zero_()  # masked positions still meet the values (weight 0): never uninitialised NaN
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=model.device)  # input of the step
        self.seq_pos = torch.zeros((), dtype=torch.long, device=model.device)  # its sequence position
        self.logits: torch.Tensor | None = None  # output of the captured step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = False

    def prefill(self, prefix: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Run prefix (b, L) (and cond) into the cache from position 0, b dividing the rows:
        each prefix row fills rows/b consecutive cache rows. Returns the last logits (b, V)."""
        self.cache.length = 0
        logits = self.model(prefix, cond, cache=self.cache, last_only=True)[:, -1]
        self.seq_pos.fill_(self.cache.length)  # the next token's position: an on-device fill, no sync
        return logits

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits (rows, V) after feeding token (rows, 1) at the current position, which then
        advances. The returned tensor is this decoder's buffer: use it before the next step."""
        self.token.copy_(token)
        if self.model.device.type != "cuda":
            logits = self.model.decode_step(self.token, self.cache, self.seq_pos)
        else:
            logits = self.replay()
        self.seq_pos.add_(1)
        return logits

    def replay(self) -> torch.Tensor:
        """The step on CUDA: eager once (kernels chosen, memory pools warmed on a side stream),
        then captured once and replayed from then on."""
        if self.graph is None and not self.warm:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = self.model.decode_step(self.token, self.cache, self.seq_pos)
            torch.cuda.current_stream().wait_stream(stream)
            self.warm = True
            return logits
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self.model.decode_step(self.token, self.cache, self.seq_pos)
        self.graph.replay()
        return self.logits


KEPT = 4  # decoders (each a KV cache and a graph) a model keeps: a probe's shapes, not every shape ever seen


def static_decoder(model: "TokenModel", rows: int, positions: int) -> StaticDecoder:
    """The model's decoder for this shape, built on first use and kept (on the module, outside
    its state dict) so later calls of the same shape replay the same graph; the least recently
    used is dropped beyond KEPT."""
    decoders: dict = model.__dict__.setdefault("_static_decoders", {})
    key = (rows, positions, model.device, model.tok_emb.weight.dtype)
    decoder = decoders.pop(key, None) or StaticDecoder(model, rows, positions)
    decoders[key] = decoder  # now the most recent
    while len(decoders) > KEPT:
        decoders.pop(next(iter(decoders)))
    return decoder
