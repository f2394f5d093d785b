"""Probe metrics and their summaries on hand-made inputs whose values are known."""

import math

import pytest
import torch
from probe_helpers import one_thread  # noqa: F401 (autouse fixture)

from halluscope.probes import metrics
from halluscope.probes.stats import bootstrap_ci, fmt_interval, ratio_ci


def test_token_metrics_known_values():
    truth = torch.tensor([1, 2, 3, 4])
    same = truth.repeat(3, 1)
    assert metrics.token_metrics(truth, same) == {"match_mean": 1.0, "match_best": 1.0, "exact_rate": 1.0,
                                                  "diversity": 0.0}
    samples = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0], [0, 0, 0, 0]])
    m = metrics.token_metrics(truth, samples)
    assert m["match_mean"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["match_best"] == 1.0 and m["exact_rate"] == pytest.approx(1 / 3)
    # Hamming fractions of the pairs (0,1) 2/4, (0,2) 4/4, (1,2) 2/4.
    assert m["diversity"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert metrics.token_metrics(truth, truth[None])["diversity"] == 0.0  # one sample: no pairs


def test_likelihood_metrics_known_values():
    truth = {"logprob": torch.log(torch.tensor([0.5, 0.25])), "entropy": torch.tensor([1.0, 2.0]),
             "rank": torch.tensor([0, 7])}
    m = metrics.likelihood_metrics(truth, torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])))
    assert m["nll_truth"] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert m["nll_samples"] == pytest.approx(math.log(2))
    assert m["typicality_gap"] == pytest.approx(m["nll_truth"] - math.log(2))
    assert m["entropy"] == pytest.approx(1.5) and m["truth_rank"] == pytest.approx(3.5)
    assert m["top1"] == 0.5 and m["top5"] == 0.5


def test_pixel_metrics_identical_and_known_error():
    torch.manual_seed(0)
    truth = torch.rand(3, 16, 16) * 2 - 1
    m = metrics.distance_metrics(truth, truth.repeat(4, 1, 1, 1), "p_", pixels=True)
    assert m["p_mse_best"] == 0 and m["p_psnr_best"] == metrics.PSNR_CAP and math.isfinite(m["p_psnr_mean"])
    assert m["p_ssim_best"] == pytest.approx(1.0, abs=1e-5)
    assert metrics.pairwise_mse(truth.repeat(4, 1, 1, 1)) == 0.0
    off = torch.stack([truth, (truth + 0.1)])  # MSE 0 and 0.01 -> PSNR cap and 10·log10(4/0.01)
    m = metrics.distance_metrics(truth, off, "p_", pixels=True)
    assert m["p_mse_mean"] == pytest.approx(0.005, rel=1e-4) and m["p_mse_best"] == 0
    assert m["p_psnr_mean"] == pytest.approx((100 + 10 * math.log10(400)) / 2, rel=1e-4)
    assert metrics.pairwise_mse(off) == pytest.approx(0.01, rel=1e-4)
    clip = torch.rand(2, 3, 4, 16, 16)
    assert metrics.ssim_batch(clip, clip).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert metrics.ssim_batch(clip, -clip).max() < 0.5


def test_vendi_score_counts_distinct_items():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert metrics.vendi_score(a.repeat(5, 1)) == pytest.approx(1.0)
    assert metrics.vendi_score(torch.eye(4)) == pytest.approx(4.0)
    assert metrics.vendi_score(torch.stack([a, a, torch.tensor([0.0, 1.0, 0.0])])) == pytest.approx(
        math.exp(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))))


def test_retrieval_finds_the_truth_only_when_it_is_nearest():
    truth, other = torch.zeros(2, 2), torch.ones(2, 2)
    samples = torch.stack([torch.full((2, 2), 0.2), torch.full((2, 2), 0.9)])
    assert metrics.retrieval_rate(truth, samples, other[None]) == 0.5
    assert math.isnan(metrics.retrieval_rate(truth, samples, other[:0][None][:0]))


def test_entropy_map_lays_entropies_on_the_grid():
    m = metrics.entropy_map(torch.tensor([1.0, 2.0]), (2, 2), 2)
    assert torch.isnan(m[0]).all() and m[1].tolist() == [1.0, 2.0]


def test_bootstrap_interval():
    ci = bootstrap_ci([2.0, 2.0, 2.0])
    assert ci == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 3}
    ci = bootstrap_ci([0.0, 1.0] * 50 + [float("nan"), None])
    assert ci["n"] == 100 and ci["mean"] == 0.5 and 0.38 < ci["lo"] < 0.5 < ci["hi"] < 0.62
    assert bootstrap_ci([])["mean"] is None


def test_an_interval_as_text_names_an_unbounded_end():
    assert fmt_interval({"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 4}, ".3f") == "0.500 [0.250, 0.750]"
    assert fmt_interval({"mean": -0.5, "lo": -0.625, "hi": 0.125, "n": 4}, "+.2f") == "-0.50 [-0.62, +0.12]"
    ratio = ratio_ci([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])  # resamples with a zero denominator: unbounded above
    assert ratio["hi"] is None and fmt_interval(ratio).endswith(", ∞]")
    assert fmt_interval({"mean": 1.0, "lo": None, "hi": None, "n": 2}) == "1 [−∞, ∞]"
    assert fmt_interval(None) == fmt_interval({"mean": None, "lo": None, "hi": None, "n": 0}) == "–"
