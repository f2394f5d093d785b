"""Spread-skill, energy score and rank histograms: hand-made inputs with known values, and the
issue's known answers. A sampler whose samples are exchangeable with the truth (the world's own
oracle; a GPT sampled at temperature 1 on sequences it generated itself) gives R = 1 within its
interval and uniform ranks; a too-narrow one (an oracle with less randomness than the world, a
GPT at temperature 0.3) R > 1 and the truth at the top rank; a too-wide one (an oracle whose
tokens are partly replaced by noise, a GPT at temperature 3) R < 1."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)
from scipy.special import logsumexp

from halluscope.data import VideoWorld
from halluscope.gpt.config import preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings
from halluscope.probes import calibration
from halluscope.probes.probe import ProbeConfig, plain, run_probe, summarize
from halluscope.probes.redundancy import redundancy_curve
from halluscope.probes.report import write_redundancy
from halluscope.probes.samplers import Example, GPTSampler, OracleSampler
from halluscope.probes.stats import rank_histogram, ratio_ci


def test_ensemble_metrics_known_values():
    rng = np.random.default_rng(0)
    truth = torch.tensor([0, 0, 0, 0])
    samples = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    m = calibration.ensemble_metrics(truth, samples, calibration.HAMMING, "t", rng)
    # d(s1, y) = 0, d(s2, y) = 1/2, d(s1, s2) = 1/2.
    assert m["skill_t"] == 0.25 and m["spread_t"] == 0.5 and m["energy_t"] == 0.0
    # Pre-ranks (mean distance to the other two): y 1/4, s1 1/4, s2 1/2: s1 ties with y, s2 is less typical.
    ranks = {calibration.ensemble_metrics(truth, samples, calibration.HAMMING, "t", rng)["rank_t"] for _ in range(50)}
    assert ranks == {0.0, 1.0}
    m = calibration.ensemble_metrics(torch.zeros(4), torch.stack([torch.ones(4), -torch.ones(4)]), calibration.RMS,
                                     "p", rng)
    assert m["skill_p"] == 1.0 and m["spread_p"] == 2.0 and m["energy_p"] == 0.0
    far = calibration.ensemble_metrics(torch.full((4,), 5.0), torch.zeros(3, 4), calibration.RMS, "p", rng)
    assert far["rank_p"] == 3.0 and far["spread_p"] == 0.0 and far["skill_p"] == 5.0  # outside the ensemble
    single = calibration.ensemble_metrics(truth, samples[:1], calibration.HAMMING, "t", rng)
    assert np.isnan(single["spread_t"]) and np.isnan(single["energy_t"])


def test_likelihood_calibration_and_floor_known_values():
    rng = np.random.default_rng(0)
    truth = torch.log(torch.tensor([0.5, 0.5]))  # NLL 2 log 2
    samples = torch.log(torch.tensor([[1.0, 1.0], [0.25, 0.25], [0.5, 1.0]]))  # NLLs 0, 4 log 2, log 2
    m = calibration.likelihood_calibration(truth, samples, rng)
    nll = torch.tensor([0.0, 4.0, 1.0]) * np.log(2)
    assert m["rank_nll"] == 2.0  # two samples are more likely than the truth
    assert m["typicality_z"] == pytest.approx((2 * np.log(2) - nll.mean().item()) / nll.std().item())
    assert np.isnan(calibration.likelihood_calibration(truth, samples[:1], rng)["typicality_z"])
    y, recon = torch.zeros(4), torch.full((4,), 0.1)
    samples = torch.stack([recon, torch.full((4,), -0.1), torch.full((4,), 0.2)])
    assert calibration.floor_rate(y, samples, recon) == pytest.approx(2 / 3)


def test_ratio_and_uniformity_statistics():
    r = ratio_ci([1.0, 2.0, 3.0, None], [1.0, 1.0, 0.0, 1.0])  # a zero spread is fine in a ratio of sums
    assert r["mean"] == 3.0 and r["n"] == 3 and r["lo"] <= 3.0 <= (r["hi"] or np.inf)
    assert ratio_ci([1.0], [0.0])["mean"] is None
    h = rank_histogram([0, 1, 2, 2, None], 3)
    assert h["counts"] == [1, 1, 2] and h["dof"] == 2 and h["chi2"] == pytest.approx(0.5)
    assert h["p"] == pytest.approx(np.exp(-0.25))  # χ²₂ survival is exp(-x/2)
    assert plain({"gpt": "oracle"}) and plain({"temperature": 1.0, "top_k": None, "top_p": None})
    assert not plain({"temperature": 0.7}) and not plain({"temperature": 1.0, "top_k": 50})


@dataclass
class NoisyOracle(OracleSampler):
    """The oracle with each continuation token replaced, with probability `noise`, by a
    uniformly random one: the true distribution made wider (over-dispersed)."""
    noise: float = 0.2

    def sample(self, examples, tokens, context_units, context_tokens, n, generator):
        new = super().sample(examples, tokens, context_units, context_tokens, n, generator)
        flip = torch.rand(new.shape, generator=generator) < self.noise
        return torch.where(flip, torch.randint(self.tokenizer.vocab_size, new.shape, generator=generator), new)


def verdicts(records: list[dict]) -> dict[tuple[str, float], dict]:
    return {(row["sampler"], row["context"]): row for row in summarize(records)}


def assert_calibrated(row: dict, ranks: tuple[str, ...]) -> None:
    for d in ("tokens", "pixels", "features"):
        r = row["metrics"][f"spread_skill_{d}"]
        assert r["lo"] <= 1 <= r["hi"], (d, r)
    for d in ranks:
        assert row["rank_histograms"][d]["p"] > 0.01, (d, row["rank_histograms"][d])


@pytest.mark.slow
def test_oracle_is_calibrated_narrow_and_noisy_oracles_are_not(tmp_path):
    world = VideoWorld(size=32, frames=8, randomness=0.3, seed=0)
    tokenizer = PatchTokenizer("video", 32, 8)
    examples = [Example(str(i), *world.example(i)) for i in range(48)]
    narrow = OracleSampler(VideoWorld(size=32, frames=8, randomness=0.02), tokenizer, name="narrow")
    rows = verdicts(run_probe(examples, tokenizer, [OracleSampler(world, tokenizer)], ProbeConfig([0.25, 0.5]),
                              tmp_path / "oracle")
                    + run_probe(examples, tokenizer, [narrow, NoisyOracle(world, tokenizer, name="noisy")],
                                ProbeConfig([0.5]), tmp_path / "miscalibrated"))
    for context in (0.25, 0.5):
        assert_calibrated(rows["oracle", context], ("tokens", "pixels", "features"))
    over = rows["narrow", 0.5]
    # Even a world without kicks leaves the context's sub-pixel ambiguity, so the ratio is about 1.9, not far above
    assert over["metrics"]["spread_skill_tokens"]["lo"] > 1.4 and over["metrics"]["spread_skill_pixels"]["lo"] > 1.4
    counts = over["rank_histograms"]["tokens"]["counts"]
    assert counts[-1] > sum(counts) / 2 and over["rank_histograms"]["tokens"]["p"] < 1e-6  # truth outside
    under = rows["noisy", 0.5]
    assert under["metrics"]["spread_skill_tokens"]["hi"] < 0.9 and under["metrics"]["spread_skill_pixels"]["hi"] < 0.9
    counts = under["rank_histograms"]["tokens"]["counts"]
    assert counts[0] > sum(counts) / 2  # the truth is more central than any sample


def self_generated(n: int) -> tuple[GPT, PatchTokenizer, list[Example]]:
    """A random tiny GPT over an 8×8 grid, its logits sharpened so that it has structure, and n
    examples it generated itself: its temperature-1 samples are exchangeable with them."""
    torch.manual_seed(0)
    tokenizer = PatchTokenizer("image", 16, patch=2)
    gpt = GPT(preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64, grid=(8, 8)))
    with torch.no_grad():
        gpt.head.weight.mul_(30)
    g = torch.Generator().manual_seed(1)
    first = torch.randint(tokenizer.vocab_size, (n, 1), generator=g)
    rest, _ = gpt.generate(first, 63, 1, generator=g)
    pixels = tokenizer.decode(torch.cat([first, rest], 1).view(n, 8, 8))
    return gpt, tokenizer, [Example(str(i), p) for i, p in enumerate(pixels)]


@pytest.mark.slow
def test_gpt_temperature_moves_the_spread_skill_ratio(tmp_path):
    gpt, tokenizer, examples = self_generated(48)
    samplers = [GPTSampler(gpt, "g", SamplingSettings(t)) for t in (1.0, 0.3, 3.0)]
    rows = verdicts(run_probe(examples, tokenizer, samplers, ProbeConfig([0.5]), tmp_path / "run"))
    assert_calibrated(rows["g T=1", 0.5], ("tokens", "pixels", "nll"))
    cold, hot = rows["g T=0.3", 0.5], rows["g T=3", 0.5]
    assert cold["metrics"]["spread_skill_tokens"]["lo"] > 1.1 and hot["metrics"]["spread_skill_tokens"]["hi"] < 1
    assert cold["metrics"]["typicality_z"]["lo"] > 2 and hot["metrics"]["typicality_z"]["hi"] < -2
    assert cold["rank_histograms"]["nll"]["counts"][-1] > 40 and hot["rank_histograms"]["nll"]["counts"][0] > 40
    assert not cold["plain"] and rows["g T=1", 0.5]["plain"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    curve = summary["redundancy"]["g"]
    assert [r["context"] for r in curve] == [0.0, 0.5] and curve[1]["redundancy"]["mean"] > 0  # it does use context
    assert all(row["metrics"]["redundancy"] == curve[1]["redundancy"] for row in summary["groups"])  # any temperature


class CopyModel(torch.nn.Module):
    """A stand-in GPT with known likelihoods: a token repeats the one a whole unit (latent
    frame) earlier with probability 0.9; with no unit before it, it is uniform."""

    def __init__(self, vocab: int, per_unit: int):
        super().__init__()
        self.vocab, self.per_unit = vocab, per_unit
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # where the device comes from

    def score(self, tokens: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
        p = torch.full(tokens.shape, 1 / self.vocab, dtype=torch.float64)
        same = tokens[:, self.per_unit:] == tokens[:, :-self.per_unit]
        p[:, self.per_unit:] = torch.where(same, 0.9, 0.1 / (self.vocab - 1))
        return {"logprob": p[:, start:].log()}


def test_redundancy_curve_known_values(tmp_path):
    tokenizer = PatchTokenizer("video", 16, 4)  # grid (4, 4, 4): 16 tokens per latent frame, 64 codes
    torch.manual_seed(0)
    still = torch.rand(5, 3, 1, 16, 16).mul(2).sub(1).expand(-1, -1, 4, -1, -1)  # every frame the same
    examples = [Example(str(i), x) for i, x in enumerate(still)]
    world = VideoWorld(size=16, frames=4, randomness=0.0)
    curve = redundancy_curve(CopyModel(64, 16), tokenizer, examples, [0.25, 0.5, 0.75], fps=8, world=world)
    assert [(r["context"], r["context_units"], r["target_units"]) for r in curve] == \
        [(0.0, 0, 4), (0.25, 1, 3), (0.5, 2, 2), (0.75, 3, 1)]
    h, h_repeat = 6.0, -np.log2(0.9)  # bits per token: uniform over 64 codes; repeated with probability 0.9
    frame = tokenizer.encode(still)[:, 0].flatten(1)  # (5, 16): each clip's one frame
    # Y_i's first frame given clip j's context: each token repeats j's last frame's (0.9) or not
    first = np.where((frame[:, None] == frame[None]).numpy(), h_repeat, -np.log2(0.1 / 63)).sum(-1)  # (5, 5) bits
    for r in curve:
        k, scored = r["context_units"], r["tokens_scored"]
        assert r["marginal_contexts"] == 4 and [s["contexts"] for s in r["by_marginal_contexts"]] == [1, 2, 4]
        if k == 0:  # no context: the first token cannot be scored; H(Y | C) is H(Y)
            assert scored == 63
            given = marginal = (15 * h + 48 * h_repeat) / scored
        else:  # Y_k in place: all its tokens repeat the frame before; the marginal mixes the 4 other contexts
            assert scored == (4 - k) * 16
            given = h_repeat
            others = first[~np.eye(5, dtype=bool)].reshape(5, 4) + (3 - k) * 16 * h_repeat  # (5, 4) bits
            marginal = np.mean(-(logsumexp(-others * np.log(2), axis=1) - np.log(4)) / np.log(2)) / scored
        assert r["entropy_bits_per_token"]["mean"] == pytest.approx(given)
        assert r["marginal_bits_per_token"]["mean"] == pytest.approx(marginal)
        assert r["redundancy"]["mean"] == pytest.approx(1 - given / marginal)
        assert r["by_marginal_contexts"][-1]["redundancy"] == r["redundancy"]
        assert r["information_bits_per_token"]["mean"] == pytest.approx(marginal - given)
        assert r["information_bits_per_pixel"]["mean"] == pytest.approx((marginal - given) * 64 / (16 * 16 * 4))
        assert r["information_bits_per_second"]["mean"] == pytest.approx((marginal - given) * 64 / (4 / 8))
        assert r["world_redundancy"] == (1.0 if k else 0.0)  # the world's: fixed by the state, or no context
    assert curve[0]["redundancy"]["mean"] == pytest.approx(0) and curve[3]["redundancy"]["mean"] > 0.9
    alone = redundancy_curve(CopyModel(64, 16), tokenizer, examples[:1], [0.5])  # no other context to draw
    assert alone[1]["marginal_contexts"] == 0 and alone[1]["redundancy"]["mean"] is None
    paths = write_redundancy({"clip": curve, "image": curve}, tmp_path)
    assert [p.name for p in paths] == ["redundancy.json", "redundancy.png"] and paths[1].stat().st_size > 1000
