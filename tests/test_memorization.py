"""Memorization against the training set, on known answers: a sampler that copies training
continuations has copy share 1; the world's oracle, which draws from the same posterior as the
truth, sits at the truth's own chance level (measured on fresh world examples here); uniform
random tokens sit below a binomial union bound; every nearest-neighbour distance equals a
brute-force loop; and only a sampler that reproduces its training examples does better on
training contexts than on held-out ones."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)
from scipy import stats

from halluscope.cli import main
from halluscope.data import ImageWorld, write_world
from halluscope.probes import memorization, objects
from halluscope.probes.context import context_split, cut
from halluscope.probes.memorization import Memory, encode_training, group_contrast, memorization_metrics
from halluscope.probes.probe import ProbeConfig, run_probe, summarize
from halluscope.probes.samplers import Example, OracleSampler, load_examples
from halluscope.tokenizers.train import TrainConfig, train

TRAIN, HELDOUT, FRESH, SAMPLES, TAU = 48, 8, 96, 6, 0.05
WORLD = ImageWorld(size=32, seed=0)


@dataclass
class CopyTraining:
    """Each sample is a training example's continuation: its own when the probed example is
    one (`own`, a memorizer), otherwise one drawn at random."""
    train: memorization.TrainingSet
    own: bool = False
    name: str = "copier"
    settings: dict = None

    def __post_init__(self):
        self.settings = {"gpt": self.name}

    def sample(self, examples, tokens, context_units, context_tokens, n, generator):
        picks = torch.randint(len(self.train.ids), (len(examples), n), generator=generator)
        if self.own:
            picks[:] = torch.tensor([self.train.ids.index(e.id) for e in examples])[:, None]
        return self.train.tokens[picks][:, :, context_tokens:]


@dataclass
class UniformTokens:
    vocab: int
    name: str = "uniform"
    settings: dict = None

    def __post_init__(self):
        self.settings = {"gpt": self.name}

    def sample(self, examples, tokens, context_units, context_tokens, n, generator):
        return torch.randint(self.vocab, (len(examples), n, tokens[0].numel() - context_tokens), generator=generator)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("memorization")
    try:
        write_world(WORLD, root / "train", TRAIN)
        write_world(ImageWorld(size=32, seed=1), root / "heldout", HELDOUT)
        tokenizer = PatchTokenizer("image", 32)
        train_examples, world = load_examples(root / "train", tokenizer)
        heldout, _ = load_examples(root / "heldout", tokenizer)
        train_set = encode_training(train_examples, tokenizer, 16, "train")
        samplers = [CopyTraining(train_set), OracleSampler(world, tokenizer), UniformTokens(tokenizer.vocab_size)]
        config = ProbeConfig([0.5], samples=SAMPLES, redundancy=False, memory=Memory(train_set, TAU))
        records = run_probe(heldout, tokenizer, samplers, config, root / "run")
        yield {"tokenizer": tokenizer, "train": train_set, "heldout": heldout, "records": records, "root": root,
               "rows": {r["sampler"]: r for r in summarize(records)}, "train_examples": train_examples}
    finally:
        torch.set_num_threads(threads)


def brute_nearest(query: torch.Tensor, pool: torch.Tensor, distance) -> float:
    return min(distance(query, p) for p in pool)


def chance_copy(train_set, tokenizer, k: int) -> float:
    """The share of fresh world examples (the truth's distribution) whose continuation is
    within TAU of a training one: the copy share of a sampler that draws like the world."""
    fresh = [WORLD.example(10_000 + i)[0] for i in range(FRESH)]
    tokens = tokenizer.encode(torch.stack(fresh)).flatten(1)[:, -k:]
    near = [brute_nearest(t, train_set.tokens[:, -k:], lambda a, b: (a != b).double().mean().item()) for t in tokens]
    return float(np.mean([d <= TAU for d in near]))


def test_copier_is_flagged_and_the_oracle_sits_at_chance(probed):
    rows, train_set = probed["rows"], probed["train"]
    grid = tuple(probed["tokenizer"].grid)
    k = math.prod(grid) - context_split(grid, 0.5)[1]
    copier, oracle = rows["copier"]["metrics"], rows["oracle"]["metrics"]
    assert copier["train_copy"]["mean"] == 1 and copier["train_copy_excess"]["lo"] > 0
    for space in ("tokens", "pixels", "features", "objects"):  # a token copy is a copy in every space
        assert copier[f"train_{space}_nearest"]["mean"] == 0, space
    p0 = chance_copy(train_set, probed["tokenizer"], k)
    assert 0 < p0 < 0.5, p0  # the world repeats itself a little: why the truth's level is the reference
    # The oracle's copy share estimates p0 from HELDOUT examples; 3 binomial standard errors of it.
    slack = 3 * math.sqrt(p0 * (1 - p0) / HELDOUT)
    assert abs(oracle["train_copy"]["mean"] - p0) <= slack, (oracle["train_copy"]["mean"], p0)
    assert abs(oracle["train_copy_truth"]["mean"] - p0) <= slack
    assert oracle["train_copy_excess"]["lo"] <= 0 <= oracle["train_copy_excess"]["hi"]
    assert copier["train_copy"]["mean"] > p0 + slack


def test_uniform_tokens_are_no_copies(probed):
    uniform = probed["rows"]["uniform"]["metrics"]
    grid, vocab = tuple(probed["tokenizer"].grid), probed["tokenizer"].vocab_size
    k = math.prod(grid) - context_split(grid, 0.5)[1]
    # A uniform sequence copies a fixed one when at least (1 − τ)k of its k tokens match (each 1/V);
    # the union bound over the training set bounds its copy share.
    bound = TRAIN * stats.binom.sf(math.ceil((1 - TAU) * k) - 1, k, 1 / vocab)
    assert uniform["train_copy"]["mean"] <= bound < 1e-6
    assert uniform["train_tokens_nearest"]["mean"] > 0.8


def test_nearest_distances_equal_brute_force(probed):
    """Each record's truth distances against loops over the training set, in every space."""
    tokenizer, train_set = probed["tokenizer"], probed["train"]
    grid = tuple(tokenizer.grid)
    units, n_ctx = context_split(grid, 0.5)
    for example in probed["heldout"]:
        record = next(r for r in probed["records"] if r["example"] == example.id and r["sampler"] == "oracle")
        tokens = tokenizer.encode(example.pixels[None])
        recon = tokenizer.decode(tokens).clamp(-1, 1)[0]
        feats = tokenizer.features(recon[None]).flatten(2)[0, :, n_ctx:]
        want = {
            "tokens": brute_nearest(tokens.flatten()[n_ctx:], train_set.tokens[:, n_ctx:],
                                    lambda a, b: (a != b).double().mean().item()),
            "pixels": brute_nearest(cut(recon, grid, units), cut(train_set.reconstruction, grid, units),
                                    lambda a, b: (a.double() - b.double()).pow(2).mean().item()),
            "features": brute_nearest(feats, train_set.features[:, :, n_ctx:],
                                      lambda a, b: (a.double() - b.double()).pow(2).mean().item())}
        for space, value in want.items():
            assert record["metrics"][f"train_{space}_truth"] == pytest.approx(value, rel=1e-5, abs=1e-9), space


def test_objects_and_self_exclusion_equal_brute_force(probed, monkeypatch):
    """memorization_metrics on hand-picked rows: the object distance over every training example
    (shortlist as long as the training set) equals a loop; with the default shortlist it is an
    upper bound; in the training group the example's own entry is never its nearest."""
    tokenizer, train_set = probed["tokenizer"], probed["train"]
    grid = tuple(tokenizer.grid)
    units, n_ctx = context_split(grid, 0.5)
    rows = [0, 5, 9]  # row 0 plays the truth: training example 0 itself
    tokens = train_set.tokens[rows, n_ctx:]
    pixels = cut(train_set.reconstruction[rows], grid, units)
    feats = train_set.features[rows][:, :, n_ctx:]
    own = train_set.ids[0]
    frames = objects.segment(objects.planes(cut(train_set.reconstruction, grid, units), clip=False))
    scale = float(objects.radius_range(32)[1])

    def gospa(a: int, b: int) -> float:
        return objects.compare([frames[a]], [frames[b]], scale)["distance"]

    monkeypatch.setattr(memorization, "OBJECT_SHORTLIST", TRAIN)
    held = memorization_metrics(tokens, pixels, feats, units, Memory(train_set, TAU))
    assert held["train_tokens_truth"] == 0 and held["train_copy_truth"] == 1  # it is in the training set
    exact = memorization_metrics(tokens, pixels, feats, units, Memory(train_set, TAU, "training"), own)
    others = [m for m in range(TRAIN) if m != 0]
    assert exact["train_objects_truth"] == pytest.approx(min(gospa(0, m) for m in others))
    assert exact["train_objects_nearest"] == pytest.approx(np.mean([min(gospa(r, m) for m in others) for r in rows[1:]]))
    hamming = [min((train_set.tokens[0, n_ctx:] != train_set.tokens[m, n_ctx:]).double().mean().item()
                   for m in others)]
    assert exact["train_tokens_truth"] == pytest.approx(hamming[0]) and exact["train_tokens_truth"] > 0
    monkeypatch.setattr(memorization, "OBJECT_SHORTLIST", 4)
    short = memorization_metrics(tokens, pixels, feats, units, Memory(train_set, TAU, "training"), own)
    assert short["train_objects_truth"] >= exact["train_objects_truth"] - 1e-12


def test_training_group_against_held_out(probed):
    """A memorizer (its own training continuation on training contexts, another one on novel
    contexts) matches the truth far better on training examples; the oracle, which has no
    memory, does not."""
    tokenizer, train_set, root = probed["tokenizer"], probed["train"], probed["root"]
    world = ImageWorld(size=32, seed=0)
    probe = probed["train_examples"][:HELDOUT]
    records = []
    for group, examples in (("training", probe), ("held-out", probed["heldout"])):
        samplers = [CopyTraining(train_set, own=group == "training", name="memorizer"), OracleSampler(world, tokenizer)]
        config = ProbeConfig([0.5], samples=SAMPLES, redundancy=False, memory=Memory(train_set, TAU, group))
        records += run_probe(examples, tokenizer, samplers, config, root / f"group-{group}")
    assert {r["group"] for r in records} == {"training", "held-out"}
    contrast = {row["sampler"]: row["metrics"] for row in group_contrast(records)}
    memorizer = contrast["memorizer"]["exact_rate"]
    assert memorizer["training"]["mean"] == 1 and memorizer["difference"]["lo"] > 0.5
    assert memorizer["difference"]["p"] < 0.01
    for metric in ("exact_rate", "match_mean"):
        oracle = contrast["oracle"][metric]["difference"]
        assert oracle["lo"] <= 0 <= oracle["hi"], (metric, oracle)


def test_cli_probes_both_groups(tmp_path, probed):
    """`probe --oracle --train-data`: memorization figures in the held-out records, a training
    group, the contrast in memorization.json and a report section; a bad threshold is one line."""
    root = probed["root"]
    torch.manual_seed(0)
    train(TrainConfig(kind="image", data=str(root / "train"), out=str(tmp_path / "tok"), steps=1, batch=4,
                      ckpt_every=10**6, sample_every=10**6, progress=False,
                      extra=dict(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4,
                                 n_embed=16)))
    args = ["probe", "--oracle", "--tokenizer", str(tmp_path / "tok" / "model"), "--data", str(root / "heldout"),
            "--train-data", str(root / "train"), "--train-probe", "3", "--limit", "3", "--context", "0.5",
            "--samples", "2", "--grids", "0"]
    assert main([*args, "--copy-threshold", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    held = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    group = [json.loads(line) for line in (run / "training-group" / "records.jsonl").read_text().splitlines()]
    assert len(held) == len(group) == 3 and {r["group"] for r in held} == {"held-out"}
    assert {r["group"] for r in group} == {"training"} and all("train_copy" in r["metrics"] for r in held + group)
    saved = json.loads((run / "memorization.json").read_text())
    assert saved["threshold"] == memorization.COPY_THRESHOLD and saved["contrast"][0]["sampler"] == "oracle"
    assert "Memorization: copies of the training set" in (run / "report.html").read_text()
