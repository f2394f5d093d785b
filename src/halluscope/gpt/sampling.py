"""Drawing continuations: classifier-free guidance, temperature, top-k and top-p filtering,
and KV-cached generation that encodes the context once and shares it across the N samples.

The log-probability reported for a sampled token is its log-probability under the
distribution it was actually drawn from: softmax of the (guided) logits divided by the
temperature, after top-k and then top-p removed tokens (so it is 0 when only one token
survives). The unfiltered model likelihood of a sequence is what `score` gives.

Guidance (cfg_scale s ≠ 1) runs every row twice in one batch, with its condition and with the
model's null condition, and draws from u + s·(c − u) (LlamaGen's order: guidance, then
temperature and filtering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from halluscope.deadline import check_time
from halluscope.device import check_fits
from halluscope.errors import UserError
from halluscope.gpt.settings import SamplingSettings
from halluscope.gpt.static_decode import static_decoder

if TYPE_CHECKING:
    from halluscope.gpt.base import TokenModel


def null_cond(model: "TokenModel", rows: int) -> torch.Tensor | None:
    """(rows, n_cond) condition tokens meaning "no condition", where the model has them: its
    null condition id (LlamaGen's null class), or the start token of a model whose condition
    is that token alone (one slot, one value: imported taming / TATS GPTs)."""
    c = model.config
    if c.null_cond is not None:
        return torch.full((rows, c.n_cond), c.null_cond, dtype=torch.long)
    if c.n_cond == 1 and c.cond_vocab_size == 1:
        return torch.zeros(rows, 1, dtype=torch.long)
    return None


def check_cond(model: "TokenModel", cond: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """The condition tokens to run with: a conditional model needs (rows, n_cond) of them, in
    its condition vocabulary, unless it has a null condition, which is the default; an
    unconditional one takes none."""
    c = model.config
    if not c.n_cond:
        if cond is not None:
            raise UserError("this GPT is unconditional; it takes no condition tokens")
        return None
    if cond is None and (default := null_cond(model, rows)) is not None:
        return default
    if cond is None or tuple(cond.shape) != (rows, c.n_cond):
        got = "none" if cond is None else tuple(cond.shape)
        raise UserError(f"this GPT reads {c.n_cond} condition token(s) per sequence: "
                        f"expected shape {(rows, c.n_cond)}, got {got}")
    if cond.min() < 0 or cond.max() >= c.cond_vocab_size:
        raise UserError(f"condition tokens must be in [0, {c.cond_vocab_size}), got {cond.flatten().tolist()}")
    return cond


def check_guidance(model: "TokenModel", settings: SamplingSettings) -> None:
    """Guidance needs a null condition to guide away from."""
    if settings.guided and model.config.null_cond is None:
        raise UserError(f"cfg_scale {settings.cfg_scale:g} needs a GPT with a null condition (a class-conditional "
                        "model trained with class dropout, e.g. LlamaGen's); this one has none: use cfg_scale 1")


def sampling_bytes(model: "TokenModel", rows: int, positions: int) -> int:
    """Memory generate() allocates for `rows` sequences of `positions` positions: the KV cache
    (keys and values of every layer) and a few (rows, vocabulary) float tensors per step."""
    c = model.config
    element = model.tok_emb.weight.element_size()
    return 2 * c.n_layer * rows * (c.n_cond + positions) * c.n_embd * element + 4 * rows * c.vocab_size * 4


def filter_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """logits (..., V) -> float32 logits of the sampling distribution: divided by the
    temperature; then only the top_k largest kept; then only the smallest set of the
    remaining tokens whose probability reaches top_p (the most likely token always stays).
    Removed tokens get -inf. (Guidance is applied before, to the model's logits: `guide`.)"""
    temperature, top_k, top_p = settings.temperature, settings.top_k, settings.top_p
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # A token is dropped when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from already filtered logits (N, V): (tokens (N,), logprobs (N,))."""
    logp = logits.log_softmax(dim=-1)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator)  # (N, 1)
    return tokens.squeeze(1), logp.gather(1, tokens).squeeze(1)


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(2R, V) logits, R conditional rows then their R null rows -> (R, V) u + s·(c − u)."""
    c, u = logits.float().chunk(2)
    return u + scale * (c - u)


def generate(model: "TokenModel", prefix: torch.Tensor, steps: int, num_samples: int = 1,
             settings: SamplingSettings = SamplingSettings(), generator: torch.Generator | None = None,
             cond: torch.Tensor | None = None, use_cache: bool = True, static: bool | None = None,
             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `num_samples` continuations of `steps` tokens after every prefix row.

    prefix: (L,) or (B, L) grid tokens (L may be 0 for a conditional model); cond (B, n_cond).
    Returns (tokens, logprobs), each (B·N, steps); rows b·N .. b·N+N-1 continue prefix row b.

    With use_cache (the default) the prefix is run once, written into a KV cache of B·N rows,
    and each step feeds only the newest token. use_cache=False re-runs the whole sequence at
    every step: the slow reference the cached path is tested and benchmarked against.
    static (default: on CUDA) decodes at static shapes, captured once as a CUDA graph and
    replayed (gpt/static_decode.py): the same tokens under the same generator.
    Call it through `TokenModel.generate`, which switches off dropout and autograd.
    """
    check_guidance(model, settings)
    if prefix.dim() == 1:
        prefix = prefix[None]
    b, length = prefix.shape
    n = num_samples
    if steps < 1 or n < 1:
        raise UserError(f"need at least one step and one sample (got steps={steps}, num_samples={n})")
    if length == 0 and not model.config.n_cond:
        raise UserError("an unconditional model needs at least one prefix token to continue")
    # The last sampled token is never fed back, hence the -1.
    if length + steps - 1 > model.config.block_size:
        raise UserError(f"prefix of {length} + {steps} new tokens needs {length + steps - 1} positions; "
                        f"the model has {model.config.block_size}")
    cond = check_cond(model, cond, b)
    copies = 2 if settings.guided else 1  # guidance runs each row with its condition and the null one
    device = model.device
    check_fits(sampling_bytes(model, copies * b * n, length + steps), device,
               f"{b * n} samples of {length + steps} tokens" + (" (twice, for guidance)" if copies > 1 else ""), "draw fewer samples")
    if settings.guided:
        prefix, cond = prefix.repeat(2, 1), torch.cat([cond, null_cond(model, b).to(cond.device)])  # (2B, L), (2B, n_cond)
    prefix = prefix.to(device)
    cond = None if cond is None else cond.to(device)
    tokens = torch.empty(b * n, steps, dtype=torch.long, device=device)
    logprobs = torch.empty(b * n, steps, device=device)

    static = use_cache and (device.type == "cuda" if static is None else static)
    rows, positions = copies * b * n, model.config.n_cond + length + steps - 1
    decoder = static_decoder(model, rows, positions) if static else None
    cache = model.new_cache(rows, length + steps - 1) if use_cache and not static else None

    def model_logits(i: int) -> torch.Tensor:  # (copies·B·N, V): the model's distribution of token i
        if decoder is not None:
            step = tokens[:, i - 1:i].repeat(copies, 1) if i else None
            return decoder.prefill(prefix, cond).repeat_interleave(n, 0) if i == 0 else decoder.step(step)
        if not use_cache:
            seq = torch.cat([prefix.repeat_interleave(n, 0), tokens[:, :i].repeat(copies, 1)], dim=1)
            rows_cond = None if cond is None else cond.repeat_interleave(n, 0)
            return model(seq, rows_cond, last_only=True)[:, -1]
        if i == 0:  # prefill: B (or 2B) rows computed once, each spread over its N cache rows
            return model(prefix, cond, cache=cache, last_only=True)[:, -1].repeat_interleave(n, 0)
        return model(tokens[:, i - 1:i].repeat(copies, 1), cache=cache, last_only=True)[:, -1]

    def next_logits(i: int) -> torch.Tensor:  # (B·N, V): the distribution token i is drawn from
        logits = model_logits(i)
        return guide(logits, settings.cfg_scale) if settings.guided else logits

    # Rows whose logits hold NaN or inf (weights that do) are drawn from a uniform stand-in and
    # reported once at the end: checking each step would wait for the GPU every step.
    broken = torch.zeros((), dtype=torch.bool, device=device)
    for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        check_time()
        logits = next_logits(i)
        finite = torch.isfinite(logits).all(-1, keepdim=True)  # (B·N, 1)
        broken |= ~finite.all()
        filtered = filter_logits(logits.where(finite, 0.0), settings)
        tokens[:, i], logprobs[:, i] = sample_next(filtered, generator)
    if broken:
        raise UserError("the GPT's logits are not finite (NaN or inf): its weights hold NaN or inf values, "
                        "or overflow in this dtype")
    return tokens, logprobs
