"""Hallucination detection from a model's own samples (probes/detection.py), on known answers:
AUROC and AURAC equal brute-force loops over pairs and over every tie-break order; a score
aligned with the errors gives AUROC 1 and an independent one an interval holding 0.5;
object-level equivalence groups identical object sets and separates different ones; and
probe runs, through the ideal patch tokenizer and a trained one, whose sampler's answer errs
exactly where its witnesses disagree give semantic entropy an AUROC near 1, while one whose
errors are independent of the disagreement gives chance."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)
from trained import train_tokenizer

from halluscope import demo
from halluscope.data import ImageWorld, write_world
from halluscope.probes import detection, objects
from halluscope.probes.probe import SUMMARY_JSON, ProbeConfig, run_probe
from halluscope.probes.report import write_report
from halluscope.probes.samplers import load_examples

SCORES = np.array([0.3, 0.1, 0.3, 0.9, 0.5, 0.3, 0.1])  # ties on purpose
ERRORS = np.array([1, 0, 0, 1, 0, 1, 1])


def brute_auroc(scores, errors) -> float:
    pairs = [(s, t) for s, e in zip(scores, errors) if e for t, f in zip(scores, errors) if not f]
    return np.mean([1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs])


def brute_aurac(scores, errors) -> float:
    """Mean over every order of the contexts (a stable sort by score keeps the order within ties)
    of the mean over k of the accuracy of the first k (least uncertain)."""
    curves = []
    for order in itertools.permutations(range(len(scores))):
        ranked = sorted(order, key=lambda i: scores[i])
        correct = 1 - np.asarray(errors)[ranked]
        curves.append(np.mean([correct[:k].mean() for k in range(1, len(scores) + 1)]))
    return float(np.mean(curves))


def test_auroc_and_aurac_equal_brute_force_with_ties():
    assert detection.auroc(SCORES, ERRORS) == pytest.approx(brute_auroc(SCORES, ERRORS))
    assert detection.aurac(SCORES, ERRORS) == pytest.approx(brute_aurac(SCORES, ERRORS))
    constant = np.zeros(len(SCORES))  # every context tied: no information, the chance levels
    assert detection.auroc(constant, ERRORS) == 0.5
    assert detection.aurac(constant, ERRORS) == pytest.approx(1 - ERRORS.mean())
    assert detection.best_aurac(ERRORS) == pytest.approx(brute_aurac(ERRORS, ERRORS))
    assert np.isnan(detection.auroc(SCORES, np.ones(len(SCORES))))  # one class only: undefined
    stacked = np.stack([SCORES, SCORES[::-1]])  # rows of resamples at once
    assert detection.auroc(stacked, np.stack([ERRORS, ERRORS]))[1] == pytest.approx(brute_auroc(SCORES[::-1], ERRORS))
    assert detection.spearman(SCORES, ERRORS.astype(float)) == pytest.approx(
        __import__("scipy").stats.spearmanr(SCORES, ERRORS).statistic)


def test_aligned_scores_give_auroc_one_and_independent_ones_chance():
    rng = np.random.default_rng(0)
    errors = (rng.random(200) < 0.4).astype(float)
    aligned = errors + rng.random(200) * 0.5  # every error above every correct context
    examples = np.arange(200)
    ci = detection.cluster_ci(np.stack([aligned, errors], 1), examples, detection.auroc)
    assert ci["mean"] == 1 and ci["lo"] == 1 and ci["n"] == 200
    best = np.mean([np.mean(1 - np.sort(errors)[:k]) for k in range(1, 201)])  # errors rejected first
    assert detection.aurac(aligned, errors) == pytest.approx(best)
    ci = detection.cluster_ci(np.stack([rng.random(200), errors], 1), examples, detection.auroc)
    assert ci["lo"] < 0.5 < ci["hi"] and 0.4 < ci["mean"] < 0.6


def test_the_cluster_bootstrap_resamples_examples_not_rows():
    """Two contexts per example, identical within an example: resampling rows would pretend
    twice the data; resampling examples gives the interval of one row per example."""
    rng = np.random.default_rng(1)
    values = rng.random(30)
    once = detection.cluster_ci(values[:, None], np.arange(30), lambda v: v.mean(-1))
    twice = detection.cluster_ci(np.repeat(values, 2)[:, None], np.repeat(np.arange(30), 2), lambda v: v.mean(-1))
    assert twice["mean"] == pytest.approx(once["mean"])
    assert twice["hi"] - twice["lo"] == pytest.approx(once["hi"] - once["lo"], rel=0.05)
    uneven = detection.cluster_ci(np.r_[values, values[:3]][:, None], np.r_[np.arange(30), np.arange(3)],
                                  lambda v: v.mean(-1))
    assert uneven["lo"] < uneven["mean"] < uneven["hi"] and uneven["n"] == 33


def shape(colour: int, row: float, col: float) -> list[float]:
    return [colour, row, col, 20.0]


def test_object_equivalence_groups_identical_sets_and_separates_different_ones():
    base = [shape(0, 8, 8), shape(2, 20, 24)]
    samples = [base, [shape(2, 20, 24), shape(0, 8, 8)],  # the same set in another order
               [shape(0, 8.5, 8), shape(2, 20, 24)],  # moved half a pixel: within tolerance
               [shape(1, 8, 8), shape(2, 20, 24)],  # recoloured
               [shape(0, 8, 8)],  # one dropped
               [*base, shape(3, 4, 28)],  # one invented
               [shape(0, 8, 8), shape(2, 26, 24)]]  # moved farther than the tolerance (scale 4 px)
    sets = [[np.asarray(s, dtype=float)] for s in samples]  # one frame each
    d = np.array([[objects.compare(a, b, scale=4.0)["distance"] for b in sets] for a in sets])
    assert list(detection.equivalence_classes(d, detection.CLASS_TOLERANCE)) == [0, 0, 0, 1, 2, 3, 4]
    classes, entropy = detection.class_scores(d, detection.CLASS_TOLERANCE)
    p = np.array([3, 1, 1, 1, 1]) / 7
    assert classes == 5 and entropy == pytest.approx(-(p * np.log(p)).sum())
    assert detection.class_scores(np.zeros((4, 4)), detection.CLASS_TOLERANCE) == (1, 0)


def test_feature_classes_are_in_units_of_the_pools_distances():
    pool = torch.tensor([[0.0], [1.0], [2.0]])[:, :, None].expand(3, 1, 4)  # pairwise RMS 1, 1, 2: median 1
    assert detection.feature_scale(pool) == pytest.approx(1.0)
    assert np.isnan(detection.feature_scale(pool[:1]))
    truth = torch.zeros(1, 4)
    features = torch.stack([torch.full((1, 4), v) for v in (0.0, 0.1, 0.2, 3.0)])  # answer right, witnesses 2 classes
    tokens = torch.zeros(4, 4, dtype=torch.long)
    out = detection.detection_metrics(tokens, torch.zeros(4, 3, 2, 2), features, truth, pool)
    assert out["detect_answer_feature_wrong"] == 0 and out["detect_answer_feature_error"] == 0
    assert out["detect_feature_classes"] == 2 and out["detect_feature_semantic_entropy"] == pytest.approx(
        -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))
    assert out["detect_token_disagreement"] == 0 and "detect_semantic_entropy" not in out  # no objects: not a world
    assert detection.detection_metrics(tokens[:2], torch.zeros(2, 3, 2, 2), features[:2], truth, pool) == {}


class Injected:
    """Sample 0 (the answer) is the truth or, where `wrong(i)`, another example's continuation;
    the witnesses all equal the truth or, where `disagree(i)`, are each another example's."""

    def __init__(self, name, wrong, disagree):
        self.name, self.settings, self.wrong, self.disagree = name, {"gpt": name}, wrong, disagree

    def sample(self, examples, tokens, context_units, context_tokens, n, generator):
        flat = tokens.flatten(1)[:, context_tokens:]  # (B, continuation)
        out = flat[:, None].repeat(1, n, 1)  # (B, N, continuation)
        for b, example in enumerate(examples):
            i = int(example.id.split("/")[-1].split(".")[0])
            if self.wrong(i):
                out[b, 0] = flat[(b + 1) % len(flat)]
            if self.disagree(i):
                out[b, 1:] = flat[[(b + j) % len(flat) for j in range(2, n + 1)]]
        return out


def detection_rows(root, tokenizer, examples, samplers) -> list[dict]:
    run_probe(examples, tokenizer, samplers, ProbeConfig([0.5], samples=4, batch=16, redundancy=False), root)
    return json.loads((root / SUMMARY_JSON).read_text())["detection"]


def row_of(rows, sampler, label="objects"):
    return next(r for r in rows if r["sampler"] == sampler and r["context"] == 0.5 and r["label"] == label)


@pytest.mark.parametrize("kind", ["patch", "trained"])
def test_errors_where_witnesses_disagree_are_detected_and_independent_ones_are_not(tmp_path, kind):
    write_world(ImageWorld(size=32, seed=3), tmp_path / "world", 32)
    tokenizer = PatchTokenizer("image", 32) if kind == "patch" else train_tokenizer("image", tmp_path, causal=True)
    examples, _ = load_examples(tmp_path / "world", tokenizer)
    aligned = Injected("aligned", wrong=lambda i: i % 2, disagree=lambda i: i % 2)
    independent = Injected("independent", wrong=lambda i: i // 2 % 2, disagree=lambda i: i % 2)
    rows = detection_rows(tmp_path / "run", tokenizer, examples, [aligned, independent])
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    labels = {r["index"]: r["metrics"]["detect_answer_hallucinated"] for r in records if r["sampler"] == "aligned"}
    assert sum(labels[i] == i % 2 for i in labels) >= 28  # the injected errors are what the labels see
    row = row_of(rows, "aligned")
    assert row["contexts"] == 32 and not row["approximate"] and not row["reference"]
    assert row["scores"]["semantic_entropy"]["auroc"]["mean"] > 0.85
    assert row["scores"]["object_disagreement"]["auroc"]["mean"] > 0.85
    assert row["scores"]["semantic_entropy"]["aurac"]["mean"] > row["aurac_chance"]["mean"]
    null = row_of(rows, "independent")["scores"]["semantic_entropy"]["auroc"]
    # Scored with the answer among the samples, this case read 0.61 (diversity) and 0.63 (spread_objects).
    assert null["lo"] < 0.5 < null["hi"] and abs(null["mean"] - 0.5) < 0.08
    features = row_of(rows, "aligned", "features")  # the approximate labels ride along on worlds
    same = [r["metrics"]["detect_answer_feature_wrong"] == r["metrics"]["detect_answer_hallucinated"]
            for r in records if r["sampler"] == "aligned"]
    assert features["approximate"] and features["label_agreement"]["mean"] == pytest.approx(np.mean(same))
    table = demo.detection_table([tmp_path / "run"]).splitlines()  # what the demo prints per modality
    assert sum(line.startswith("| image | GPT |") for line in table) == 2


def test_real_data_get_feature_labels_only_and_the_report_shows_them(tmp_path):
    write_world(ImageWorld(size=32, seed=4), tmp_path / "world", 16)
    tokenizer = PatchTokenizer("image", 32)
    examples, _ = load_examples(tmp_path / "world", tokenizer)
    photos = [replace(e, meta=None) for e in examples]  # no recorded state: no objects to count
    aligned = Injected("aligned", wrong=lambda i: i % 2, disagree=lambda i: i % 2)
    rows = detection_rows(tmp_path / "run", tokenizer, photos, [aligned])
    assert {r["label"] for r in rows} == {"features"} and all(r["approximate"] for r in rows)
    assert row_of(rows, "aligned", "features")["scores"]["feature_semantic_entropy"]["auroc"]["mean"] > 0.85
    report = write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "Detection: can the samples tell when they hallucinate?" in report and "approximate" in report


def test_only_models_and_the_oracle_get_detection_rows_and_the_oracle_is_the_reference():
    def record(sampler, settings, example, error, score):
        return {"kind": "image", "sampler": sampler, "context": 0.5, "example": example, **settings,
                "metrics": {"detect_answer_hallucinated": error, "detect_answer_object_errors": error,
                            "detect_semantic_entropy": score}}
    records = [record(s, settings, f"e{i}", float(i % 2), float(i % 2)) for i in range(6)
               for s, settings in [("oracle", {"gpt": "oracle"}), ("gpt", {"gpt": "gpt"}),
                                   ("copy-last", {"gpt": "gpt", "baseline": "copy-last"})]]
    rows = detection.detect(records)
    assert {(r["sampler"], r["reference"]) for r in rows} == {("oracle", True), ("gpt", False)}
    assert {r["context"] for r in rows} == {0.5, "all"}
    assert row_of(rows, "gpt")["scores"]["semantic_entropy"]["auroc"]["mean"] == 1
