"""Teacher-forced scoring: how typical is a given continuation under the model?"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halluscope.errors import UserError
from halluscope.gpt.sampling import check_cond

if TYPE_CHECKING:
    from halluscope.gpt.base import TokenModel


def score(model: "TokenModel", tokens: torch.Tensor, start: int, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Score tokens[:, start:] given everything before them (and the condition, if any).

    tokens (B, L) grid tokens. Returns a dict of (B, L-start) tensors:
    - logprob: log p(token | tokens before it), under the plain model (no temperature or filtering);
    - entropy: entropy in nats of the predictive distribution at that position;
    - rank: how many tokens the model found strictly more likely (0 = its top choice).
    Call it through `TokenModel.score`, which switches off dropout and autograd.
    """
    if tokens.dim() == 1:
        tokens = tokens[None]
    first = 0 if model.config.n_cond else 1  # without a condition the first token has no prediction
    if not first <= start < tokens.shape[1]:
        raise UserError(f"score start must be in [{first}, {tokens.shape[1]}) for {tokens.shape[1]} tokens, "
                        f"got {start}")
    cond = check_cond(model, cond, tokens.shape[0])
    tokens = tokens.to(model.device)
    cond = None if cond is None else cond.to(tokens.device)
    logits = model(tokens[:, :-1], cond)  # row i predicts tokens[:, i + 1 - first]
    logits = logits[:, start - first:].float()  # (B, L-start, V)
    target = tokens[:, start:, None]  # (B, L-start, 1)
    logp = logits.log_softmax(dim=-1)
    # p·log p is 0·(-inf) = nan where a probability underflows to 0; those terms are 0.
    entropy = -(logp.exp() * logp).nansum(dim=-1)
    return {
        "logprob": logp.gather(-1, target).squeeze(-1),
        "entropy": entropy,
        "rank": (logits > logits.gather(-1, target)).sum(dim=-1),
    }
