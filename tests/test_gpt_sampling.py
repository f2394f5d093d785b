"""Sampling filters on known distributions, KV-cached generation against the uncached
reference, seeding, and teacher-forced scoring against a direct computation."""

import pytest
import torch

from halluscope.errors import UserError
from halluscope.gpt.config import preset
from halluscope.gpt.kv_cache import KVCache
from halluscope.gpt.model import GPT
from halluscope.gpt.sampling import filter_logits, sample_next
from halluscope.gpt.settings import SamplingSettings

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def kept(**settings) -> list[int]:
    return torch.isfinite(filter_logits(PROBS.log(), SamplingSettings(**settings))).nonzero().flatten().tolist()


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("tiny", **{"vocab_size": 37, "block_size": 48, **overrides})).eval()


def test_top_k_and_top_p_alone_and_together():
    assert kept() == [0, 1, 2, 3]
    assert kept(top_k=2) == [0, 1]
    assert kept(top_k=1) == [0]
    assert kept(top_p=0.7) == [0, 1]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert kept(top_p=0.45) == [0]  # the argmax alone already holds 0.5
    assert kept(top_p=0.01) == [0]  # small top_p keeps only the argmax
    assert kept(top_p=1.0) == [0, 1, 2, 3]
    # top-k first, then top-p on what is left: [0.5, 0.3, 0.15] / 0.95 -> 0.526, 0.842, 1.0
    assert kept(top_k=3, top_p=0.85) == [0, 1, 2]
    assert kept(top_k=3, top_p=0.8) == [0, 1]
    assert kept(top_k=1, top_p=0.99) == [0]


def test_temperature_sharpens_and_flattens():
    for t in (0.5, 2.0):
        expected = PROBS ** (1 / t) / (PROBS ** (1 / t)).sum()
        assert torch.allclose(filter_logits(PROBS.log(), SamplingSettings(temperature=t)).softmax(-1), expected,
                              atol=1e-6)


def test_samples_follow_the_filtered_distribution():
    g = torch.Generator().manual_seed(0)
    logits = filter_logits(PROBS.log().expand(40000, 4), SamplingSettings(top_k=3))
    tokens, logprobs = sample_next(logits, g)
    freq = torch.bincount(tokens, minlength=4) / len(tokens)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.01)
    assert freq[3] == 0  # filtered tokens are never drawn
    assert torch.allclose(logprobs, (PROBS[tokens] / 0.95).log(), atol=1e-5)


@pytest.mark.parametrize("variant", ["sdpa", "math", "conditional, factorized positions"])
def test_cached_generation_equals_uncached_token_for_token(variant):
    if variant.startswith("conditional"):
        model = tiny(n_cond=2, cond_vocab_size=5, grid=(6, 8), factorized_pos=True)
        cond = torch.tensor([[1, 4], [3, 0]])
    else:
        model, cond = tiny(attention=variant), None
    prefix = torch.randint(0, 37, (2, 12))
    for settings in ({}, {"temperature": 0.8, "top_k": 10}, {"top_p": 0.9}, {"top_k": 20, "top_p": 0.8}):
        runs = []
        for use_cache in (True, False):
            g = torch.Generator().manual_seed(3)
            runs.append(model.generate(prefix, 16, num_samples=3, generator=g, cond=cond, use_cache=use_cache,
                                       settings=SamplingSettings(**settings)))
        (tok_c, lp_c), (tok_u, lp_u) = runs
        assert tok_c.shape == (6, 16)
        assert torch.equal(tok_c, tok_u)
        assert torch.allclose(lp_c, lp_u, atol=1e-5)


def test_logprobs_are_those_of_the_distribution_sampled_from():
    """Recompute every step's logits from scratch on the full sequence: this checks the cached
    logits, and that rows b*N .. b*N+N-1 continue prefix row b."""
    model = tiny()
    prefix = torch.randint(0, 37, (2, 10))
    settings = {"temperature": 1.3, "top_k": 12, "top_p": 0.9}
    tokens, logprobs = model.generate(prefix, 20, num_samples=3, generator=torch.Generator().manual_seed(1),
                                      settings=SamplingSettings(**settings))
    full = torch.cat([prefix.repeat_interleave(3, 0), tokens], dim=1)  # (6, 30)
    with torch.no_grad():
        logits = model(full[:, :-1])[:, 9:]  # rows predicting tokens 10 .. 29
    expected = filter_logits(logits, SamplingSettings(**settings)).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(logprobs, expected, atol=1e-5)


def test_top_k_1_is_greedy_decoding():
    model = tiny()
    prefix = torch.randint(0, 37, (1, 8))
    tokens, logprobs = model.generate(prefix, 15, num_samples=2, settings=SamplingSettings(top_k=1))
    seq = prefix.clone()
    with torch.no_grad():
        for _ in range(15):
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(tokens, seq[:, 8:].expand(2, -1))
    assert torch.equal(logprobs, torch.zeros(2, 15))  # one token kept: probability 1


def test_seeded_sampling_is_reproducible():
    model = tiny()
    prefix = torch.randint(0, 37, (10,))
    a = model.generate(prefix, 20, 4, generator=torch.Generator().manual_seed(7))[0]
    b = model.generate(prefix, 20, 4, generator=torch.Generator().manual_seed(7))[0]
    c = model.generate(prefix, 20, 4, generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prefix_is_encoded_once_for_all_samples():
    model = tiny()
    shapes = []
    model.tok_emb.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    model.generate(torch.randint(0, 37, (2, 16)), 5, num_samples=8)
    assert shapes == [(2, 16)] + [(16, 1)] * 4  # prefill on 2 rows, then one token per row


def test_kv_cache_spreads_rows_in_place():
    cache = KVCache(n_layer=1, batch=6, n_head=2, max_len=10, head_dim=4)
    storage = cache.kv.data_ptr()
    kv = torch.randn(2, 2, 2, 3, 4)  # (k|v, 2 rows, 2 heads, 3 positions, 4)
    k_all, v_all = cache.write(0, kv, pos=0)
    assert k_all.shape == v_all.shape == (6, 2, 3, 4)
    for rows, b in ((slice(0, 3), 0), (slice(3, 6), 1)):  # each row spread over 3 samples
        assert torch.equal(k_all[rows], kv[0, b:b + 1].expand(3, -1, -1, -1))
        assert torch.equal(v_all[rows], kv[1, b:b + 1].expand(3, -1, -1, -1))
    new = torch.randn(2, 6, 2, 1, 4)
    k_all, v_all = cache.write(0, new, pos=3)
    assert torch.equal(k_all[:, :, 3:], new[0]) and torch.equal(v_all[:, :, 3:], new[1])
    assert cache.kv.data_ptr() == storage
    with pytest.raises(ValueError, match="holds 10 positions"):
        cache.write(0, torch.randn(2, 6, 2, 8, 4), pos=3)


def test_score_matches_a_direct_log_softmax():
    model = tiny()
    tokens = torch.randint(0, 37, (3, 24))
    start = 10
    out = model.score(tokens, start)
    assert all(v.shape == (3, 14) for v in out.values())
    with torch.no_grad():
        for j in range(start, 24):
            logp = model(tokens[:, :j])[:, -1].log_softmax(-1)  # the prediction of token j, from scratch
            target = tokens[:, j]
            assert torch.allclose(out["logprob"][:, j - start], logp[torch.arange(3), target], atol=1e-5)
            assert torch.allclose(out["entropy"][:, j - start], -(logp.exp() * logp).sum(-1), atol=1e-5)
            order = logp.argsort(-1, descending=True)
            assert torch.equal(out["rank"][:, j - start], (order == target[:, None]).float().argmax(-1))


def test_score_rank_is_zero_for_the_models_own_greedy_choice():
    model = tiny()
    prefix = torch.randint(0, 37, (1, 8))
    greedy, _ = model.generate(prefix, 10, settings=SamplingSettings(top_k=1))
    out = model.score(torch.cat([prefix, greedy], 1), 8)
    assert torch.equal(out["rank"], torch.zeros(1, 10, dtype=torch.long))


def test_bad_settings_are_user_errors():
    model = tiny()
    prefix = torch.randint(0, 37, (1, 8))
    for settings, message in [({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"),
                              ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")]:
        with pytest.raises(UserError, match=message):
            SamplingSettings(**settings)
    model.generate(prefix, 41)  # 8 + 41 - 1 = 48 positions: the last token is never fed back
    with pytest.raises(UserError, match="needs 49 positions"):
        model.generate(prefix, 42)
    with pytest.raises(UserError, match="at least one prefix token"):
        model.generate(torch.empty(1, 0, dtype=torch.long), 4)
    with pytest.raises(UserError, match="start"):
        model.score(prefix, 0)
    with pytest.raises(UserError, match="unconditional"):
        model.generate(prefix, 4, cond=torch.tensor([[1]]))


def test_condition_mistakes_are_user_errors():
    model = tiny(n_cond=1, cond_vocab_size=5)
    prefix = torch.randint(0, 37, (2, 8))
    for cond, message in [(None, "expected shape \\(2, 1\\), got none"), (torch.tensor([[1]]), "got \\(1, 1\\)"),
                          (torch.tensor([[1], [5]]), "must be in \\[0, 5\\)")]:
        with pytest.raises(UserError, match=message):
            model.generate(prefix, 4, cond=cond)
        with pytest.raises(UserError, match=message):
            model.score(prefix, 2, cond=cond)


def test_non_finite_logits_are_one_error():
    model = tiny()
    with torch.no_grad():
        model.head.weight[5, 0] = float("nan")  # token 5's logit is NaN in every row
    with pytest.raises(UserError, match="logits are not finite"):
        model.generate(torch.tensor([1, 2]), 4, num_samples=3)


def test_a_sampling_request_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    import halluscope.device

    model = tiny()
    monkeypatch.setattr(halluscope.device, "free_memory", lambda device: 10 * 2**20)  # 10 MiB free
    model.generate(torch.tensor([1, 2]), 4, num_samples=2)  # a few KB: fine
    # 2 layers x (keys, values) x 10000 rows x 6 positions x 64 wide x 4 bytes, and 4 x 10000 x 37 logits: 67 MB
    with pytest.raises(UserError, match=r"10000 samples of 6 tokens need about 0.1 GiB; 0.0 GiB is free on cpu"):
        model.generate(torch.tensor([1, 2]), 4, num_samples=10000)


def test_the_time_budget_stops_sampling_with_one_error():
    from halluscope.deadline import time_budget

    model = tiny()
    with time_budget(10):
        model.generate(torch.tensor([1, 2]), 4)
    with time_budget(0), pytest.raises(UserError, match="ran past its time budget of 0 s"):
        model.generate(torch.tensor([1, 2]), 4)
