"""Known answers for the recognition probe's paired figures (issue 22, item 1), on hand-made
likelihoods: statistics on known arrays (paired accuracy, exact interval, sign test, NLL gap
with its Wilcoxon p, AUC), a stand-in scorer with known log-probabilities through the whole
probe (NLL, PMI and its marginal, windows after the break), and the lawful kick control."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)
from scipy import stats
from scipy.special import logsumexp

from halluscope.data import VideoWorld, write_world
from halluscope.data.shapes import from_dicts, move
from halluscope.data.tracking import ClipPosterior
from halluscope.errors import UserError
from halluscope.probes.recognition import (
    Pair,
    figures,
    load_pairs,
    marginal_logprob,
    paired_figures,
    recognition,
    roc_auc,
    summary_line,
)


def test_paired_figures_see_what_clip_difficulty_hides_from_the_auc():
    """20 clips of very different difficulty (NLL 0..19), each twin 0.1 + 0.001 i nats worse:
    every pair is recognized, yet the unpaired AUC is at chance — the issue's case."""
    n = 20
    real = np.arange(n, dtype=float)
    twin = real + 0.1 + 0.001 * np.arange(n)
    out = paired_figures(real.tolist(), twin.tolist())
    assert out["paired_accuracy"] == 1.0 and out["ties"] == 0
    ci = out["paired_accuracy_ci"]
    assert ci["lo"] == pytest.approx(0.025 ** (1 / n)) and ci["hi"] == 1.0  # Clopper-Pearson at x = n, by hand
    assert out["paired_p"] == pytest.approx(2 * 0.5 ** n)  # two-sided sign test, all one way
    gap = out["gap"]
    assert gap["mean"] == pytest.approx(0.1 + 0.001 * (n - 1) / 2) and gap["lo"] > 0
    assert gap["p"] == pytest.approx(2 * 0.5 ** n)  # exact Wilcoxon: T- = 0 has probability 2^-n per side
    # Unpaired: twin j beats real clip i iff j >= i, n(n+1)/2 of n² comparisons.
    assert roc_auc(real.tolist(), twin.tolist()) == pytest.approx((n + 1) / (2 * n))
    assert stats.mannwhitneyu(twin, real).pvalue > 0.5


def test_no_effect_gives_chance_and_ties_are_counted_apart():
    d = np.array([0.01 * k * (-1) ** k for k in range(1, 21)])  # ten up, ten down
    real = np.linspace(1, 3, 20)
    out = paired_figures(real.tolist(), (real + d).tolist())
    ci = out["paired_accuracy_ci"]
    assert out["paired_accuracy"] == 0.5 and ci["lo"] < 0.5 < ci["hi"] and out["paired_p"] == 1.0
    assert out["gap"]["lo"] < 0 < out["gap"]["hi"]
    assert out["gap"]["p"] == pytest.approx(stats.wilcoxon(d).pvalue) and out["gap"]["p"] > 0.5
    # Zero differences: ½ in the accuracy, left out of the sign test (its interval) and the Wilcoxon test.
    d = np.array([0.0] * 3 + [0.1 + 0.01 * k for k in range(12)] + [-0.05 - 0.01 * k for k in range(5)])
    out = paired_figures(real.tolist(), (real + d).tolist())
    assert out["ties"] == 3 and out["paired_accuracy"] == 13.5 / 20
    ci, test = out["paired_accuracy_ci"], stats.binomtest(12, 17)
    assert ci["n"] == 17 and ci["mean"] == 12 / 17 and out["paired_p"] == ci["p"] == pytest.approx(test.pvalue)
    assert (ci["lo"], ci["hi"]) == pytest.approx((stats.beta.ppf(0.025, 12, 6), stats.beta.ppf(0.975, 13, 5)))
    # The 17 non-zero differences: the five negatives have ranks 1..5, T- = 15; the exact
    # two-sided p is 2 P(T <= 15), counting the subsets of ranks 1..17 by their sum.
    counts = np.zeros(16, dtype=np.int64)
    counts[0] = 1
    for rank in range(1, 18):
        counts[rank:] += counts[:-rank].copy()
    assert out["gap"]["p"] == pytest.approx(2 * counts.sum() / 2 ** 17)


def test_a_break_in_the_last_frame_is_not_diluted_by_the_window_figures():
    """Two scored latent frames, the twin 0.4 nats worse only in the break's frame: 0.2 over all
    continuation tokens where the break is in the last frame, 0.4 in its own window."""
    records = []
    for i in range(8):
        late = i % 2 == 0  # break in the last frame (unit 3) or the one before (unit 2)
        real = [1.0 + i, 2.0 + i]
        twin = [real[0], real[1] + 0.4] if late else [real[0] + 0.4, real[1] + 0.4]
        records.append({"kind": "teleport", "nll_real": np.mean(real), "nll_violation": np.mean(twin),
                        "generative": None, "unit_nll_real": real, "unit_nll_violation": twin,
                        "first_unit": 2, "break_unit": 3 if late else 2})
    out = figures(records)
    assert out["gap"]["mean"] == pytest.approx((4 * 0.2 + 4 * 0.4) / 8)
    windows = out["by_window"]
    assert list(windows) == ["break+0", "break+1", "from_break"]
    assert windows["break+0"]["gap"]["mean"] == pytest.approx(0.4) and windows["break+0"]["pairs"] == 8
    assert windows["break+1"]["pairs"] == 4 and windows["from_break"]["gap"]["mean"] == pytest.approx(0.4)
    assert windows["break+0"]["control"] is None and out["control"] is None and out["pmi"] is None
    unknown = figures([{**r, "break_unit": None} for r in records], auc=False)["by_window"]
    assert list(unknown) == ["unit 2", "unit 3"] and unknown["unit 2"]["gap"]["mean"] == pytest.approx(0.2)


class RuleScorer(torch.nn.Module):
    """A stand-in GPT with known log-probabilities: a token t at any scored position costs
    0.01 t nats, plus 0.5 unless t occurs in the context (so the context matters, and PMI)."""

    device = torch.device("cpu")  # what recognition() reads of a TokenModel besides score

    def score(self, tokens, start, cond=None):
        y, seen = tokens[:, start:], tokens[:, :start]
        unseen = ~(y[:, :, None] == seen[:, None, :]).any(2)  # (B, L - start)
        return {"logprob": -(0.01 * y.double() + 0.5 * unseen)}


def rule_logp(context: np.ndarray, y: np.ndarray) -> float:
    """The rule's log p(y | context), summed, written independently of the scorer."""
    seen = set(context.tolist())
    return float(sum(-(0.01 * t + 0.5 * (t not in seen)) for t in y.tolist()))


def test_marginal_logprob_is_the_log_mean_exp_over_other_contexts():
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 6, (2, 3, 4))  # (B, M, n_ctx)
    ys = rng.integers(0, 6, (2, 5))
    got = marginal_logprob(RuleScorer(), torch.as_tensor(contexts), torch.as_tensor(ys), batch=2)
    want = [logsumexp([rule_logp(c, y) for c in cs]) - math.log(3) for cs, y in zip(contexts, ys)]
    assert got.tolist() == pytest.approx(want)
    one = marginal_logprob(RuleScorer(), torch.as_tensor(contexts[:, :1]), torch.as_tensor(ys))
    assert one.tolist() == pytest.approx([rule_logp(cs[0], y) for cs, y in zip(contexts, ys)])


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory):
    """Six 16², 4-frame clips with their violating twins and kick controls, one token frame per
    pixel frame (PatchTokenizer, causal in time)."""
    folder = tmp_path_factory.mktemp("twins") / "world"
    write_world(VideoWorld(size=16, frames=4, randomness=0.1, seed=1), folder, 6, violations=True)
    tokenizer = PatchTokenizer("video", 16, 4)
    return tokenizer, load_pairs(folder, None, tokenizer)


def share(gaps: list[float]) -> float:
    """The paired accuracy by hand: gaps above 0, ties ½ (exact ties: the rule's sums are
    rounded, a PMI whose differing tokens cost alike in every context ties exactly)."""
    return float(np.mean([1.0 if g > 0 else 0.5 if g == 0 else 0.0 for g in np.round(gaps, 12)]))


def test_recognition_on_known_likelihoods(world_pairs):
    """NLL, PMI (marginal over the next two pairs' real contexts) and the window figures of the
    probe, against the rule's values computed here from the clips' own tokens."""
    tokenizer, pairs = world_pairs
    records, summary = recognition(RuleScorer(), tokenizer, pairs, 0.5, samples=0, marginal_contexts=2)
    tokens = [tokenizer.encode(torch.stack([p.real, p.violation, p.control])).flatten(1).numpy() for p in pairs]
    n_ctx, per_frame = 32, 16
    assert {p.frame for p in pairs} == {2, 3}  # breaks in both continuation frames
    gaps, pmi_gaps, break_gaps, control_gaps = [], [], [], []
    for i, (r, seqs) in enumerate(zip(records, tokens)):
        nll = [-rule_logp(s[:n_ctx], s[n_ctx:]) / 32 for s in seqs]
        others = [tokens[(i + j) % 6][0][:n_ctx] for j in (1, 2)]
        pmi = [(rule_logp(s[:n_ctx], s[n_ctx:]) - logsumexp([rule_logp(c, s[n_ctx:]) for c in others])
                + math.log(2)) / 32 for s in seqs]
        assert [r["nll_real"], r["nll_violation"], r["nll_control"]] == pytest.approx(nll)
        assert [r["pmi_real"], r["pmi_violation"], r["pmi_control"]] == pytest.approx(pmi)
        b = pairs[i].frame  # one latent frame per pixel frame
        assert r["break_unit"] == b and r["first_unit"] == 2
        frame = [-rule_logp(s[:n_ctx], s[b * per_frame:(b + 1) * per_frame]) / per_frame for s in seqs[:2]]
        gaps.append(nll[1] - nll[0])
        pmi_gaps.append(pmi[0] - pmi[1])
        break_gaps.append(frame[1] - frame[0])
        control_gaps.append(nll[1] - nll[2])
    assert len(set(np.round(pmi_gaps, 9))) > 1 and not np.allclose(pmi_gaps, gaps)  # the PMI check is not vacuous
    assert summary["gap"]["mean"] == pytest.approx(np.mean(gaps))
    assert summary["paired_accuracy"] == share(gaps)
    assert summary["pmi"]["gap"]["mean"] == pytest.approx(np.mean(pmi_gaps))
    assert summary["pmi"]["paired_accuracy"] == share(pmi_gaps)
    assert summary["by_window"]["break+0"]["gap"]["mean"] == pytest.approx(np.mean(break_gaps))
    assert summary["control"]["violation_vs_control"]["gap"]["mean"] == pytest.approx(np.mean(control_gaps))
    assert summary["control"]["lawful"] is True and summary["marginal_contexts"] == 2
    assert sum(k["pairs"] for k in summary["by_kind"].values()) == 6
    assert all(r["change_control"] > 0 and r["change_violation"] > 0 for r in records)


class Constant(RuleScorer):
    """A scorer that sees nothing: every token costs 1 nat."""

    def score(self, tokens, start, cond=None):
        return {"logprob": -torch.ones(tokens[:, start:].shape)}


def test_a_scorer_that_cannot_tell_gives_chance(world_pairs):
    """The negative case, two ways. Each pair also given with real and violation swapped: the
    labels carry nothing, so any scorer is exactly at chance (accuracy and AUC ½, gap 0, both
    tests p = 1). A constant scorer ties every pair: ½, and no evidence for the sign test."""
    tokenizer, pairs = world_pairs
    swapped = [Pair(p.id, p.real, p.violation, p.kind, frame=p.frame) for p in pairs] + \
              [Pair(p.id, p.violation, p.real, p.kind, frame=p.frame) for p in pairs]
    _, out = recognition(RuleScorer(), tokenizer, swapped, 0.5, samples=0, marginal_contexts=0)
    assert out["paired_accuracy"] == 0.5 and out["ties"] == 0 and out["paired_p"] == 1.0
    assert out["gap"]["mean"] == pytest.approx(0) and out["gap"]["p"] == pytest.approx(1.0) and out["auc"] == 0.5
    assert out["by_window"]["from_break"]["paired_accuracy"] == 0.5 and out["pmi"] is None
    _, out = recognition(Constant(), tokenizer, pairs, 0.5, samples=0, marginal_contexts=2)
    assert out["paired_accuracy"] == 0.5 and out["ties"] == 6 and out["paired_accuracy_ci"]["mean"] is None
    assert out["pmi"]["paired_accuracy"] == 0.5 and out["control"]["paired_accuracy"] == 0.5
    assert out["gap"]["mean"] == 0 and out["gap"]["p"] == 1.0 and out["auc"] == 0.5
    assert "no pair tells them apart" in summary_line("constant", out, "visible")


@pytest.mark.parametrize("randomness", [0.2, 0.0])
def test_the_world_oracle_finds_the_control_lawful_and_the_violation_not(randomness):
    """The clip oracle (data.tracking) over all frames finds some lawful history of the world
    that renders the control (its kick is one of the world's) and none for the violation; at
    randomness 0 the world never kicks, so the control is no longer lawful, as the pair says."""
    world = VideoWorld(size=32, frames=8, randomness=randomness, seed=0)
    for i in range(6):  # example 5 has two shapes of one colour
        _, meta = world.example(i)
        _, twin = world.violation(i)
        _, control = world.control(meta, twin["violation"])
        if randomness > 0:
            ClipPosterior(world, control, world.frames)
        else:
            with pytest.raises(UserError, match="no state of the world"):
                ClipPosterior(world, control, world.frames)
        with pytest.raises(UserError, match="no state of the world"):
            ClipPosterior(world, twin, world.frames)


def test_the_control_is_a_lawful_kick_where_the_violation_is_not():
    """The kick control keeps the clip until the break frame and every other shape as it was;
    its kicked shape's new velocity is one the prior draws, and it then moves by the world's
    own step exactly. A teleport twin's jump is faster than any velocity the prior draws."""
    world = VideoWorld(size=32, frames=8, randomness=0.2, seed=0)
    scale, teleports = world.size / 64, 0
    for i in range(12):
        _, meta = world.example(i)
        _, twin = world.violation(i)
        x, control = world.control(meta, twin["violation"])
        real, kicked = ([from_dicts(s) for s in m["states"]] for m in (meta, control))
        f, k = twin["violation"]["frame"], twin["violation"]["shape"]
        assert control["control"]["frame"] == f and control["control"]["shape"] == k
        assert kicked[:f] == real[:f] and all(a[:k] + a[k + 1:] == b[:k] + b[k + 1:] for a, b in zip(kicked, real))
        vx, vy = control["control"]["velocity"]
        assert all(0.5 * scale <= abs(v) <= 2 * scale and (v * 8).is_integer() for v in (vx, vy))
        assert kicked[f][k] == move(dataclasses.replace(real[f - 1][k], vx=vx, vy=vy), world.size)
        assert all(kicked[t][k] == move(kicked[t - 1][k], world.size) for t in range(f + 1, world.frames))
        assert not torch.equal(x, world.render(meta))
        if twin["violation"]["kind"] == "teleport":
            broken = from_dicts(twin["states"][f])[k]
            teleports += 1
            assert max(abs(broken.x - real[f - 1][k].x), abs(broken.y - real[f - 1][k].y)) > 2 * scale
    assert teleports > 0


def test_a_pairs_file_carries_kind_control_and_break_frame(tmp_path):
    """User pairs: kind, control and break frame as given (lawfulness unknown); a break frame
    past the clip is one UserError line."""
    world = VideoWorld(size=16, frames=4, randomness=0.1, seed=1)
    write_world(world, tmp_path / "world", 2, violations=True)
    tokenizer = PatchTokenizer("video", 16, 4)
    line = {"real": "world/clips/000000.mp4", "violation": "world/violations/000000.mp4", "kind": "teleport",
            "control": "world/clips/000001.mp4", "frame": 3}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(line) + "\n")
    [pair] = load_pairs(None, tmp_path / "pairs.jsonl", tokenizer)
    assert (pair.kind, pair.frame, pair.lawful) == ("teleport", 3, None)
    assert (pair.control - world.example(1)[0]).abs().max() < 0.05  # clip 1, through the video codec
    _, out = recognition(RuleScorer(), tokenizer, [pair, pair], 0.5, samples=0, marginal_contexts=1)
    assert list(out["by_window"]) == ["break+0", "from_break"] and out["control"]["lawful"] is None
    (tmp_path / "pairs.jsonl").write_text(json.dumps({**line, "frame": 4}) + "\n")
    with pytest.raises(UserError, match="past the last of 4"):
        load_pairs(None, tmp_path / "pairs.jsonl", tokenizer)
