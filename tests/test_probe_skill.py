"""Known answers for the pieces behind the baselines figures, on hand-made inputs: the
calibration verdict on every outcome, normalised skill / context effect / context gain /
relative energy from synthetic records, chance correction, the paired statistics, object
segmentation and matching, the baseline samplers and where the marginal's tokens come from."""

import itertools
import json

import numpy as np
import pytest
import torch
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)
from scipy.stats import beta

from halluscope.data import VideoWorld
from halluscope.data.shapes import BACKGROUND, PALETTE
from halluscope.data.token_cache import write_token_cache
from halluscope.errors import UserError
from halluscope.probes import objects
from halluscope.probes.baselines import (
    CopyLastSampler,
    MarginalSampler,
    ShuffledSampler,
    make_baselines,
    parse_baselines,
    shuffle_donors,
    token_marginal,
    training_marginal,
)
from halluscope.probes.probe import summarize
from halluscope.probes.recognition import auc_ci, closer_to_real, figures, roc_auc
from halluscope.probes.samplers import Example, OracleSampler
from halluscope.probes.skill import calibration_verdict, chance_metrics
from halluscope.probes.stats import paired_difference, proportion_ci, ratio_ci, sign_test
from halluscope.probes.target import check_target, scored_split


def interval(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "n": 10}


def test_calibration_verdict_on_every_outcome():
    assert calibration_verdict(interval(1.0, 0.95, 1.08)) == "calibrated"
    assert calibration_verdict(interval(1.05, 1.02, 1.09)) == "calibrated"  # ≠ 1, but equivalent within the margin
    assert calibration_verdict(interval(1.0, 0.85, 1.08)) == "inconclusive"  # holds 1, reaches outside
    assert calibration_verdict(interval(1.0, 0.95, None)) == "inconclusive"  # unbounded above
    assert calibration_verdict(interval(1.3, 1.12, 1.5)) == "under-dispersed"
    assert calibration_verdict(interval(1.3, 1.12, None)) == "under-dispersed"
    assert calibration_verdict(interval(0.7, 0.6, 0.85)) == "over-dispersed"
    assert calibration_verdict(interval(0.95, 0.91, 0.99)) == "calibrated"  # below 1, inside the margin
    assert calibration_verdict(interval(0.9, 0.86, 0.99)) == "over-dispersed"
    assert calibration_verdict(interval(1.0, 0.95, 1.08), margin=(0.97, 1.03)) == "inconclusive"
    assert calibration_verdict(None) == calibration_verdict(interval(None, None, None)) == "undefined"
    # No ratio: samples that never differ but miss the truth, or hit it exactly.
    assert calibration_verdict(interval(None, None, None), skill=0.3, spread=0.0) == "under-dispersed"
    assert calibration_verdict(interval(None, None, None), skill=0.0, spread=0.0) == "undefined"


def records(sampler: str, values: dict[str, list[float]], context: float = 0.5, target=None, **settings) -> list[dict]:
    n = len(next(iter(values.values())))
    return [{"example": f"e{i}", "index": i, "kind": "image", "context": context, "target": target, "samples": 4,
             "sampler": sampler, **settings, "metrics": {m: v[i] for m, v in values.items()}} for i in range(n)]


def test_skill_against_baselines_and_context_from_records():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 40)
    oracle = 1.0 + noise
    rows = {(r["sampler"], r["context"]): r for r in summarize(
        records("oracle", {"match_mean": oracle, "energy_pixels": 1 + noise}, gpt="oracle")
        + records("marginal", {"match_mean": 0.2 + noise, "energy_pixels": 3 + noise}, baseline="marginal")
        + records("gpt T=1", {"match_mean": 0.4 + noise, "energy_pixels": 2 + noise}, gpt="gpt", temperature=1.0)
        + records("gpt T=1 shuffled", {"match_mean": 0.3 + noise + rng.normal(0, 0.01, 40),
                                       "energy_pixels": 1 + rng.normal(0, 0.01, 40)}, gpt="gpt", temperature=1.0,
                  baseline="shuffled", of="gpt T=1"))}
    gpt = rows["gpt T=1", 0.5]["metrics"]
    # (0.4 − 0.2) / (1 − 0.2), exactly: the noise is common to all rows.
    assert gpt["normalised_skill_match_mean_vs_marginal"]["mean"] == pytest.approx(0.25)
    assert gpt["normalised_skill_energy_pixels_vs_marginal"]["mean"] == pytest.approx(0.5)  # (2 − 3) / (1 − 3)
    assert gpt["normalised_skill_match_mean_vs_shuffled"]["mean"] == pytest.approx(1 / 7, abs=0.01)
    assert gpt["relative_energy_pixels"]["mean"] == pytest.approx(2.0, rel=0.02)
    effect = gpt["context_effect_match_mean"]
    assert effect["mean"] == pytest.approx(0.1, abs=0.01) and effect["lo"] > 0.09 and effect["p"] < 1e-6
    assert "context_effect_match_mean" not in rows["marginal", 0.5]["metrics"]  # no shuffled twin of its own
    assert not any(k.startswith("normalised_skill") for k in rows["oracle", 0.5]["metrics"])
    # The shuffled twin is as good as the oracle in pixel energy: normalised skill against it is unbounded.
    unbounded = gpt["normalised_skill_energy_pixels_vs_shuffled"]
    assert unbounded["lo"] is None and unbounded["hi"] is None
    assert "context_gain_match_mean" not in gpt  # not like for like without a fixed target


def test_context_gain_needs_a_fixed_target():
    noise = np.random.default_rng(1).normal(0, 0.01, 20)
    rows = {r["context"]: r for r in summarize(
        records("g", {"match_mean": 0.3 + noise}, 0.25, target=0.25, gpt="g", temperature=1.0)
        + records("g", {"match_mean": 0.5 + noise}, 0.5, target=0.25, gpt="g", temperature=1.0))}
    gain = rows[0.5]["metrics"]["context_gain_match_mean"]
    assert gain["mean"] == pytest.approx(0.2) and rows[0.5]["reference_context"] == 0.25 and gain["p"] < 1e-3
    assert "context_gain_match_mean" not in rows[0.25]["metrics"] and rows[0.5]["target"] == 0.25


def test_chance_corrected_match_known_values():
    marginal = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.2, 0.2, 0.6]])  # 3 positions, 3 codes
    truth = torch.tensor([0, 0, 2])
    samples = torch.tensor([[0, 0, 2], [1, 0, 0]])  # per-position hits 1/2, 1, 1/2: match 2/3
    m = chance_metrics(truth, samples, marginal, torch.tensor([True, False, True]))
    chance = (0.5 + 0.9 + 0.6) / 3
    assert m["chance_match"] == pytest.approx(chance)
    assert m["chance_corrected_match"] == pytest.approx((2 / 3 - chance) / (1 - chance))
    assert m["foreground_share"] == pytest.approx(2 / 3) and m["foreground_match_mean"] == pytest.approx(0.5)
    assert m["foreground_chance_corrected_match"] == pytest.approx((0.5 - 0.55) / 0.45)
    assert chance_metrics(truth, samples, None, None) == {}


def test_paired_statistics():
    a, b = [1.0, 2.0, 3.0, None, 5.0], [0.0, 0.5, 2.5, 7.0, 1.0]  # differences 1, 1.5, 0.5, 4
    d = paired_difference(a, b)
    assert d["mean"] == 1.75 and 0.5 <= d["lo"] < 1.75 < d["hi"] <= 4 and d["n"] == 4
    assert d["p"] == pytest.approx(2 / 16)  # exact: all four signs positive, two-sided
    same = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])  # tied magnitudes: normal approximation
    assert same["lo"] == same["hi"] == 1.0 and same["p"] == pytest.approx(0.0455, abs=1e-4)
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["p"] == 1.0 and paired_difference([1.0], [0.0])["p"] is None
    # Denominators of both signs: the ratio is unbounded both ways.
    flip = ratio_ci([1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.5, -0.2])
    assert flip["mean"] == pytest.approx(4 / 0.3) and flip["lo"] is None and flip["hi"] is None
    negative = ratio_ci([-1.0, -2.0, -1.5], [-2.0, -4.0, -3.0])  # a negative denominator of one sign is fine
    assert negative["mean"] == pytest.approx(0.5) and negative["lo"] == pytest.approx(0.5)
    assert sign_test(9, 10) == pytest.approx(22 / 1024) and sign_test(0, 0) is None
    # 23 of 32 pairs: the exact (Clopper–Pearson) interval, from the beta quantiles, and the binomial test.
    paired = proportion_ci(23, 32)
    assert paired["mean"] == 23 / 32 and paired["p"] == pytest.approx(sign_test(23, 32))
    assert paired["lo"] == pytest.approx(beta.ppf(0.025, 23, 10))
    assert paired["hi"] == pytest.approx(beta.ppf(0.975, 24, 9))
    assert 0.5 < paired["lo"] < 0.6 and proportion_ci(0, 0)["mean"] is None


def canvas(shapes: list[tuple[str, int, int, int]], size: int = 16) -> torch.Tensor:
    """(3, size, size) in [-1, 1]: squares (colour, top, left, side) on the background."""
    x = np.empty((size, size, 3), np.float64)
    x[:] = BACKGROUND
    for colour, top, left, side in shapes:
        x[top:top + side, left:left + side] = PALETTE[colour]
    return torch.from_numpy(x).permute(2, 0, 1).float() / 127.5 - 1


def test_segmentation_and_matching_known_answers():
    truth = canvas([("red", 1, 1, 4), ("blue", 8, 8, 4), ("green", 1, 12, 1)])  # the green speck is below MIN_AREA
    found = objects.segment(objects.planes(truth, clip=False))[0]
    assert found[:, 0].tolist() == [list(PALETTE).index("red"), list(PALETTE).index("blue")]
    assert found[:, 1:3].tolist() == [[3.0, 3.0], [10.0, 10.0]] and found[:, 3].tolist() == [16, 16]
    blurred = truth.clone()
    blurred[:, 1, 1:5] = 0.5 * (truth[:, 1, 1:5] + truth[:, 0, 1:5])  # a pale edge stays part of its object
    assert len(objects.segment(objects.planes(blurred, clip=False))[0]) == 2
    sample = canvas([("red", 1, 2, 4), ("yellow", 8, 8, 4), ("white", 12, 0, 3)])  # moved 1, recoloured, invented
    m = objects.match(found, objects.segment(objects.planes(sample, clip=False))[0], scale=2.0)
    assert (m.invented, m.dropped, m.recoloured) == (1, 0, 1) and sorted(m.errors.tolist()) == [0.0, 1.0]
    assert m.distance == pytest.approx(0.5 + 1 + 1)  # 1/2 + (0 + recoloured) + one unmatched
    far = objects.match(found[:1], found[:1] + np.array([0, 0, 5, 0]), scale=2.0)  # 5 px away: beyond 2 scales
    assert (far.invented, far.dropped, far.distance) == (1, 1, 2.0)


def test_object_distance_is_a_metric():
    rng = np.random.default_rng(0)
    sets = [np.column_stack([rng.integers(0, 3, k), rng.uniform(0, 10, (k, 2)), np.ones(k)])
            for k in rng.integers(0, 4, 12)]
    d = np.array([[objects.match(a, b, 3.0).distance for b in sets] for a in sets])
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    for i, j, k in itertools.permutations(range(len(sets)), 3):
        assert d[i, k] <= d[i, j] + d[j, k] + 1e-9


def test_foreground_tokens_and_object_metrics_on_a_clip():
    world = VideoWorld(size=16, frames=4, randomness=0.0, seed=3)
    x, meta = world.example(0)
    tokens = objects.foreground_tokens(x, (4, 4, 4))
    assert tokens.shape == (4, 4, 4) and tokens.any() and not tokens.all()
    rng = np.random.default_rng(0)
    same = x[None, :, 2:].expand(3, -1, -1, -1, -1)
    exact = objects.object_metrics(objects.segment_members(x[:, 2:], same, x[:, 2:]), rng)
    assert exact["objects_invented"] == exact["objects_dropped"] == exact["objects_position_error"] == 0
    assert exact["energy_objects"] == 0 and exact["objects_truth"] >= 1
    still = x[:, 1:2].expand(-1, 2, -1, -1)[None]  # the last context frame, repeated
    moved = objects.object_metrics(objects.segment_members(x[:, 2:], still, x[:, 2:]), rng)
    assert moved["objects_position_error"] > 0 and moved["skill_objects"] > 0


def test_copy_last_and_marginal_samplers():
    tokens = torch.arange(2 * 3 * 2).view(2, 3, 2)  # two examples, grid (3, 2)
    drawn = CopyLastSampler().sample([], tokens, 1, 2, 3, torch.Generator())
    assert drawn.shape == (2, 3, 4) and drawn[1, 2].tolist() == [6, 7, 6, 7]
    seqs = torch.tensor([[0, 1, 2], [0, 1, 1], [0, 2, 1], [0, 1, 1]])
    marginal = token_marginal(seqs, 3)
    assert marginal.tolist() == [[1, 0, 0], [0, 0.75, 0.25], [0, 0.75, 0.25]]
    drawn = MarginalSampler(marginal).sample([Example("a", None)] * 2, seqs[:2].view(2, 3), 1, 1, 2000,
                                             torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 2000, 2) and set(drawn.unique().tolist()) == {1, 2}
    assert (drawn == 1).double().mean().item() == pytest.approx(0.75, abs=0.02)
    assert parse_baselines("marginal, copy-last,marginal") == ["marginal", "copy-last"]
    with pytest.raises(UserError, match="unknown baseline 'mode'"):
        parse_baselines("copy-last,mode")
    with pytest.raises(UserError, match="--train-tokens"):
        make_baselines(["marginal"], [], [], None, None)


def test_shuffled_oracle_continues_the_donor():
    world = VideoWorld(size=16, frames=4, randomness=0.0, seed=0)
    tokenizer = PatchTokenizer("video", 16, 4)
    examples = [Example(str(i), *world.example(i)) for i in range(5)]
    donors = shuffle_donors(examples)
    assert [donors[e.id].id for e in examples] == ["2", "3", "4", "0", "1"]
    with pytest.raises(UserError, match="at least 2"):
        shuffle_donors(examples[:1])
    shuffled = ShuffledSampler(OracleSampler(world, tokenizer), donors, tokenizer)
    assert shuffled.name == "oracle shuffled" and shuffled.settings == {"gpt": "oracle", "baseline": "shuffled",
                                                                         "of": "oracle"}
    tokens = tokenizer.encode(torch.stack([e.pixels for e in examples]))
    drawn = shuffled.sample(examples[:2], tokens[:2], 2, 32, 3, torch.Generator().manual_seed(0))
    # The oracle's own draws on the donors, from the same generator, and nearer the donors' truth than their own.
    on_donors = OracleSampler(world, tokenizer).sample(examples[2:4], tokens[2:4], 2, 32, 3,
                                                       torch.Generator().manual_seed(0))
    assert torch.equal(drawn, on_donors)
    for own, donor in ((0, 2), (1, 3)):
        assert ((drawn[own] == tokens[donor].flatten()[32:]).float().mean(1) >
                (drawn[own] == tokens[own].flatten()[32:]).float().mean(1)).all()


def test_training_marginal_from_a_gpt_folder_or_a_cache(tmp_path):
    tokenizer = PatchTokenizer("image", 8, patch=4)  # grid (2, 2), 64 codes
    grids = torch.tensor([[[0, 1], [2, 3]]] * 3 + [[[5, 5], [5, 5]]])  # the last is the held-out split
    write_token_cache(tmp_path / "tokens", grids, 64, [f"s{i}" for i in range(4)])
    run = tmp_path / "gpt-run"
    (run / "model").mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"tokens": str(tmp_path / "tokens"), "val_fraction": 0.25,
                                                       "seed": 0}))
    marginal, source = training_marginal(tokenizer, gpt_dir=run / "model")
    assert source == str(tmp_path / "tokens") and marginal[:, 5].sum() == 0 and marginal[3, 3] == 1
    everything, _ = training_marginal(tokenizer, train_tokens=tmp_path / "tokens")
    assert everything[0, 5] == 0.25
    assert training_marginal(tokenizer, gpt_dir=tmp_path) is None
    with pytest.raises(UserError, match="grids of 64 codes"):
        training_marginal(PatchTokenizer("image", 16, patch=4), train_tokens=tmp_path / "tokens")
    (run / "train_config.json").write_text(json.dumps({"tokens": "gone"}))
    assert training_marginal(tokenizer, gpt_dir=run / "model") is None  # chance levels are optional
    with pytest.raises(UserError, match="--train-tokens"):
        training_marginal(tokenizer, gpt_dir=run / "model", required=True)  # the marginal baseline is not


def test_fixed_target_split():
    assert scored_split((8, 8), 2, None) == (2, 16) and scored_split((8, 8), 2, 0.25) == (6, 48)
    assert scored_split((4, 2, 2), 1, 0.25) == (3, 12)
    check_target((8, 8), [0.25, 0.5, 0.75], 0.25)
    with pytest.raises(UserError, match="after every context"):
        check_target((8, 8), [0.25, 0.75], 0.5)
    with pytest.raises(UserError, match="rounds to none"):
        check_target((8, 8), [0.25], 0.05)


def test_recognition_auc_through_scipy():
    assert roc_auc([1.0, 2.0], [3.0, 0.5]) == 0.5 and roc_auc([1.0], [1.0]) == 0.5  # ties count one half
    assert roc_auc([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 1.0
    ci = auc_ci([0.0, 1.0, 2.0, 3.5], [3.0, 4.0, 5.0, 0.5])
    assert ci["mean"] == 0.75 and 0 <= ci["lo"] <= 0.75 <= ci["hi"] <= 1 and ci["n"] == 4


class Replays:
    """A stand-in GPT whose every sample is one fixed continuation (tokens after the context)."""

    def __init__(self, continuation: torch.Tensor):
        self.continuation = continuation

    def generate(self, prefix, steps, n, generator=None):
        assert prefix.shape == (1, prefix.shape[1]) and steps == len(self.continuation)
        return self.continuation.expand(n, -1), None


def test_generative_two_alternative_test_knows_which_continuation_a_sample_follows():
    """On a real clip and its violating twin: samples that are the real continuation score 1,
    the twin's 0, and on hand-made pair records the paired figures come out as counted."""
    world = VideoWorld(size=16, frames=4, randomness=0.0, seed=0)
    tokenizer = PatchTokenizer("video", 16, 4)
    real, meta = world.example(0)
    twin = real.clone()
    twin[:, 2:] = -real[:, 2:]  # the second half broken beyond recognition
    x = torch.stack([real, twin])
    tokens = tokenizer.encode(x).flatten(1)  # (2, 64): frames of 16 tokens
    given = tokens[0, :32]
    for source, share in ((tokens[0, 32:], 1.0), (tokens[1, 32:], 0.0)):
        assert closer_to_real(Replays(source), tokenizer, x, given, 2, 4, torch.Generator()) == share
    pairs = ((0.5, 1.0, "teleport"), (0.2, 0.5, "teleport"), (-0.1, 0.0, "vanish"), (0.0, 0.5, "vanish"))
    records = [{"nll_real": 1.0, "nll_violation": 1.0 + gap, "gap": gap, "generative": g, "kind": k}
               for gap, g, k in pairs]
    out = figures(records)
    assert out["paired_accuracy"] == 2.5 / 4 and out["paired_accuracy_ci"]["n"] == 3  # the tie: ½, not in the test
    assert out["generative_accuracy"]["mean"] == 0.5
    assert out["paired_p"] == pytest.approx(sign_test(2, 3))  # the tie is left out of the sign test
    assert figures(records[:2], auc=False)["paired_accuracy"] == 1.0 and "auc" not in figures(records[:2], auc=False)
