"""The marginal-based redundancy estimate on hand-made joints whose scorers are exact, so
H(Y | C), H(Y) and R are known: halves drawn independently (the image world at context ½,
dependence 0: R = 0), a copied token (R > 0) and a nearly deterministic clip (the clip
world at randomness 0: R near 1). The estimate must reach the exact R as M grows, from above,
and Y must stay at its own positions (the independent rows are distributed differently)."""

import math

import pytest
import torch
from probe_helpers import one_thread  # noqa: F401 (autouse fixture)

from halluscope.data import ImageWorld, VideoWorld
from halluscope.probes.redundancy import BITS, curve_point, marginal_ladder, other_contexts, target_logprobs, \
    world_redundancy

V = 4  # token values


def markov(n: int, shift: int, keep: float):
    """Exact scorer of a chain over units of n tokens: unit 0 uniform; then each token is the
    one a unit earlier + shift (mod V) with probability keep, else one of the other V − 1."""
    def score(tokens: torch.Tensor, start: int) -> torch.Tensor:
        p = torch.full(tokens.shape, 1 / V, dtype=torch.float64)
        hit = tokens[:, n:] == (tokens[:, :-n] + shift) % V
        p[:, n:] = torch.where(hit, keep, (1 - keep) / (V - 1))
        return p[:, start:].log()
    return score


def draw_markov(count: int, units: int, n: int, shift: int, keep: float, seed: int = 0) -> torch.Tensor:
    """(count, units, n) tokens drawn from `markov`'s chain."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(count, units, n, dtype=torch.long)
    x[:, 0] = torch.randint(V, (count, n), generator=g)
    for u in range(1, units):
        target = (x[:, u - 1] + shift) % V
        other = (target + torch.randint(1, V, (count, n), generator=g)) % V
        x[:, u] = torch.where(torch.rand(count, n, generator=g) < keep, target, other)
    return x


def point(score, tokens: torch.Tensor, k: int, m: int) -> dict:
    """The curve's point at a context of k units, with up to m other contexts."""
    seq, start = tokens.flatten(1), k * tokens.shape[2]
    nats = target_logprobs(score, seq, seq[:, :start], start, other_contexts(len(seq), m), batch=len(seq))
    return curve_point(-nats * BITS, seq.shape[1] - start, {"token": 1.0})


def by_m(p: dict) -> dict[int, float]:
    return {step["contexts"]: step["redundancy"]["mean"] for step in p["by_marginal_contexts"]}


def h_keep(keep: float) -> float:
    """Bits per token of a chain step."""
    return -(keep * math.log2(keep) + (1 - keep) * math.log2((1 - keep) / (V - 1)))


def test_other_contexts_and_ladder():
    pairs = other_contexts(7, 6)
    assert all(sorted(row.tolist()) == sorted(set(range(7)) - {i}) for i, row in enumerate(pairs))  # every other one
    assert (torch.bincount(pairs[:, 0], minlength=7) == 1).all()  # each context serves once per column
    assert marginal_ladder(6) == [1, 2, 4, 6] and marginal_ladder(8) == [1, 2, 4, 8] and marginal_ladder(0) == []
    with pytest.raises(ValueError):
        other_contexts(3, 3)  # only 2 others


def test_independent_halves_give_zero_at_every_m():
    """The bottom half is drawn alone, from another distribution than the top (as the image
    world's rows below the midline): exactly R = 0, however few contexts."""
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)  # (unit, value)
    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.multinomial(p[u], 300 * 3, True, generator=g).view(300, 3) for u in (0, 1)], 1)

    def score(t: torch.Tensor, start: int) -> torch.Tensor:
        return p.log()[torch.arange(t.shape[1]) // 3, t][:, start:]  # each position's own distribution

    r = point(score, tokens, 1, 64)
    assert set(by_m(r)) == {1, 2, 4, 8, 16, 32, 64} and all(abs(v) < 1e-12 for v in by_m(r).values())
    assert r["marginal_bits_per_token"]["mean"] == pytest.approx(r["entropy_bits_per_token"]["mean"])
    moved = -p[0].log2()[tokens[:, 1]].mean()  # Y scored as if it were the top half: the old estimate's H(Y)
    assert moved - r["entropy_bits_per_token"]["mean"] > 0.3  # which would have given R > 0


def test_copied_token_converges_to_the_exact_redundancy_from_above():
    keep, n = 0.7, 2000
    tokens = draw_markov(n, 2, 1, 0, keep)
    r = point(markov(1, 0, keep), tokens, 1, 512)
    exact = 1 - h_keep(keep) / math.log2(V)  # H(Y) = 2 bits: Y is uniform
    y_given_c = -torch.where(tokens[:, 1, 0] == tokens[:, 0, 0], keep, (1 - keep) / (V - 1)).log2().sum()
    reference = 1 - y_given_c.item() / (n * math.log2(V))  # this sample's R with the exact marginal p(Y) = 1/4
    assert reference == pytest.approx(exact, abs=0.04)
    rs = by_m(r)
    assert abs(rs[512] - reference) < 0.01 and r["redundancy"]["mean"] == rs[512]
    one_other = 1 - h_keep(keep) / -(math.log2(keep) / V + (1 - 1 / V) * math.log2((1 - keep) / (V - 1)))
    assert rs[1] == pytest.approx(one_other, abs=0.03) and rs[1] > reference + 0.1  # a wrong context: too high
    assert rs[1] > rs[4] > rs[16] > rs[64] > rs[512] - 0.005  # falling towards it


def test_deterministic_clip_converges_to_the_worlds_value():
    """Frames of 2 tokens that move by one value per frame, a token in 100 redrawn: the clip
    world at randomness 0 up to that noise. Given 2 frames, the next 2 are all but fixed."""
    keep, n = 0.99, 2000
    tokens = draw_markov(n, 4, 2, 1, keep)
    r = point(markov(2, 1, keep), tokens, 2, 512)
    h = h_keep(keep)
    exact = 1 - 4 * h / (2 * math.log2(V) + 2 * h)  # H(Y) = H(frame 2) + H(frame 3 | frame 2)
    scores = -markov(2, 1, keep)(tokens.flatten(1), 4) * BITS  # (n, 4) bits, Y's tokens given C
    reference = 1 - scores.sum().item() / (scores[:, 2:].sum().item() + n * 2 * math.log2(V))
    assert reference == pytest.approx(exact, abs=0.02) and exact > 0.9
    rs = by_m(r)
    assert abs(rs[512] - reference) < 0.01
    assert rs[1] > rs[16] > rs[512] and rs[1] - reference > 0.03


def test_world_redundancy_from_the_known_answers():
    assert world_redundancy(ImageWorld(size=16), 8)["redundancy"] == 0.0  # independent halves
    assert world_redundancy(ImageWorld(size=16, dependence=1.0), 8)["redundancy"] == 1.0  # a mirror image
    assert world_redundancy(ImageWorld(size=16, dependence=0.5), 8)["redundancy"] is None
    assert world_redundancy(ImageWorld(size=16), 4)["redundancy"] is None  # not at the midline
    still = world_redundancy(VideoWorld(size=16, frames=4, randomness=0.0), 2)
    assert still["redundancy"] == 1.0 and "about 1" in still["note"]
    assert world_redundancy(VideoWorld(size=16, frames=4, randomness=0.3), 2)["redundancy"] is None
    assert world_redundancy(VideoWorld(size=16, frames=4, randomness=0.3), 0)["redundancy"] == 0.0  # no context
