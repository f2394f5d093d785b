"""Can a model's own samples tell when it is hallucinating? Semantic-entropy-style detection
(Farquhar, Kossen, Kuhn & Gal, Nature 2024; SelfCheckGPT, Manakul, Liusie & Gales 2023) for
images and clips, scored against the truth.

Of each context's N samples, sample 0 is the *answer* (what a user would be shown) and samples
1..N-1 are the *witnesses*: every uncertainty score reads the witnesses (and the answer's own
likelihood) only, never the truth, and the label is the answer's error. Scores and label come
from different draws, as in semantic entropy, where M samples judge a separate answer: had the
label been read from the same samples, disagreement would imply error (two samples with
different objects cannot both be right) and any disagreement score would look like a detector.

Per record (`detection_metrics`, every name prefixed detect_):

  labels (from the truth)
    answer_hallucinated     1 when the answer invents, drops or recolours more than
                            ERROR_TOLERANCE objects per frame (worlds; objects.py), else 0
    answer_object_errors    that count, the graded error
    hallucination_rate      the share of all N samples that hallucinate (a figure, not a label)
    answer_feature_wrong    1 when the answer's feature distance to the truth exceeds
                            FEATURE_TOLERANCE (any data: an approximation of the above)
    answer_feature_error    that distance, in units of the feature scale (below)
  scores (from the samples alone; high = uncertain)
    semantic_entropy        entropy (nats) of the witnesses' object-level classes: two
                            continuations are one class when their GOSPA per frame is at most
                            CLASS_TOLERANCE (same objects and colours, centroids within half a radius)
    object_classes          the number of those classes
    feature_semantic_entropy, feature_classes   the same with classes by feature distance at most
                            FEATURE_TOLERANCE (any data; an approximation)
    object_disagreement     mean pairwise GOSPA among the witnesses
    token_disagreement, pixel_disagreement, feature_disagreement   mean pairwise Hamming / MSE
    predictive_entropy      mean over witnesses of −log p(s) (nats per continuation)
    length_normalised_entropy   the same per token (Malinin & Gales 2021)
    token_entropy           mean predictive entropy along the witnesses' positions
    answer_nll              the answer's own −log p per token (the likelihood baseline)
    answer_objects          objects per frame in the answer (the analogue of answer length)
  feature_class_agreement   the share of witness pairs that feature and object classes judge
                            alike (Rand index): how good the approximation is, on worlds

The feature scale is the median feature distance (root mean square over channels and scored
positions) between the real continuations of the pool's other examples: an unrelated example
is about 1 away, whatever the tokenizer's feature units.

Per (kind, sampler, context) and over every context ("all"), for models and the oracle (whose
errors are the world's own ambiguity: the reference of what is knowable), `detect` gives each
score's AUROC (P(score of an erring answer > score of a right one), ties ½; chance 0.5), AURAC
(mean accuracy of the k least uncertain contexts over k = 1..n, ties in expectation over random
tie-breaks; chance = 1 − error rate, best = the errors rejected first) and Spearman correlation
with the graded error, with 95% bootstrap intervals over examples (a cluster bootstrap when one
example gives several contexts); on worlds the feature rows add `label_agreement`, the share of
answers whose feature label equals their object label."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats as scipy_stats

from halluscope.probes import metrics
from halluscope.probes.objects import Segmented
from halluscope.probes.skill import role
from halluscope.probes.stats import RESAMPLES, empty, interval

CLASS_TOLERANCE = 0.5  # GOSPA per frame within which two continuations hold the same objects
ERROR_TOLERANCE = 0.5  # objects invented + dropped + recoloured per frame beyond which an answer hallucinates
FEATURE_TOLERANCE = 0.5  # feature distance, in units of the feature scale, for "the same" and "wrong"
PREFIX = "detect_"
# label family -> (binary label, graded error): objects exact on worlds, features approximate anywhere
LABELS = {"objects": ("answer_hallucinated", "answer_object_errors"),
          "features": ("answer_feature_wrong", "answer_feature_error")}
SCORES = ("semantic_entropy", "object_classes", "object_disagreement", "feature_semantic_entropy",
          "feature_classes", "token_disagreement", "pixel_disagreement", "feature_disagreement",
          "predictive_entropy", "length_normalised_entropy", "token_entropy", "answer_nll", "answer_objects")
ROLES = ("model", "oracle")  # baselines' samples are not a model's beliefs: no detection rows


def equivalence_classes(d: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) class index of each of N continuations from their (N, N) distances: as in semantic
    entropy's clustering, each joins the first class whose first member is within `tolerance`,
    else opens a new class (order matters only where the relation is not transitive)."""
    heads: list[int] = []  # the first member of each class
    labels = np.zeros(len(d), dtype=np.int64)
    for i in range(len(d)):
        joined = next((c for c, h in enumerate(heads) if d[i, h] <= tolerance), None)
        if joined is None:
            heads.append(i)
            joined = len(heads) - 1
        labels[i] = joined
    return labels


def class_scores(d: np.ndarray, tolerance: float) -> tuple[float, float]:
    """(the number of classes, the entropy in nats of their frequencies) among continuations of
    distances d: discrete semantic entropy, every sample weighing the same."""
    labels = equivalence_classes(d, tolerance)
    return float(labels.max() + 1), float(scipy_stats.entropy(np.bincount(labels)))


def rms_distances(x: torch.Tensor) -> np.ndarray:
    """(N, N) root-mean-square distance between N items (N, ...)."""
    flat = x.double().flatten(1)
    return (torch.cdist(flat, flat) / math.sqrt(flat.shape[1])).cpu().numpy()


def feature_scale(pool: torch.Tensor) -> float:
    """The median RMS feature distance between the pool's real continuations (P, D, T); NaN
    for fewer than two."""
    if len(pool) < 2:
        return math.nan
    d = rms_distances(pool)
    return float(np.median(d[np.triu_indices(len(d), 1)]))


def off_diagonal_mean(d: np.ndarray) -> float:
    n = len(d)
    return float(d.sum() / (n * (n - 1)))


def object_part(seg: Segmented) -> dict[str, float]:
    """Object labels of the answer and object scores of the witnesses."""
    errors = np.array([c["invented"] + c["dropped"] + c["recoloured"] for c in seg.versus_truth])
    witnesses = seg.distances[2:, 2:]  # row 0 the truth, row 1 the answer
    return {"answer_hallucinated": float(errors[0] > ERROR_TOLERANCE), "answer_object_errors": float(errors[0]),
            "hallucination_rate": float(np.mean(errors > ERROR_TOLERANCE)),
            "answer_objects": float(np.mean([len(o) for o in seg.samples[0]])),
            "object_disagreement": off_diagonal_mean(witnesses),
            **dict(zip(("object_classes", "semantic_entropy"), class_scores(witnesses, CLASS_TOLERANCE)))}


def detection_metrics(tokens: torch.Tensor, pixels: torch.Tensor, features: torch.Tensor,
                      truth_features: torch.Tensor, pool_features: torch.Tensor,
                      logprobs: torch.Tensor | None = None, entropies: torch.Tensor | None = None,
                      seg: Segmented | None = None) -> dict[str, float]:
    """The labels and scores above (each prefixed detect_) of one context's N ≥ 3 samples (sample
    0 the answer): their scored tokens (N, T), decoded pixels (N, 3, ...) and features (N, D, T);
    the truth's features (D, T) and the pool's other real continuations' (P, D, T); the plain
    model's log-probabilities and predictive entropies of the samples' tokens (N, T) when it
    scores; the matched objects on worlds. Fewer than two witnesses: nothing (no disagreement)."""
    if len(tokens) < 3:
        return {}
    scale = feature_scale(pool_features)
    out = {"token_disagreement": metrics.token_diversity(tokens[1:]),
           "pixel_disagreement": metrics.pairwise_mse(pixels[1:]),
           "feature_disagreement": metrics.pairwise_mse(features[1:])}
    d = None  # feature distances in units of the scale, row 0 the truth, row 1 the answer
    if math.isfinite(scale) and scale > 0:
        d = rms_distances(torch.cat([truth_features[None], features])) / scale
        error = float(d[0, 1])
        out.update({"answer_feature_error": error, "answer_feature_wrong": float(error > FEATURE_TOLERANCE),
                    **dict(zip(("feature_classes", "feature_semantic_entropy"),
                               class_scores(d[2:, 2:], FEATURE_TOLERANCE)))})
    if logprobs is not None:
        nll = -logprobs.double().sum(1)  # (N,) nats per continuation
        out.update({"predictive_entropy": nll[1:].mean().item(),
                    "length_normalised_entropy": (nll[1:] / logprobs.shape[1]).mean().item(),
                    "token_entropy": entropies[1:].double().mean().item(),
                    "answer_nll": (nll[0] / logprobs.shape[1]).item()})
    if seg is not None:
        out.update(object_part(seg))
        if d is not None:
            out["feature_class_agreement"] = class_agreement(seg.distances[2:, 2:], d[2:, 2:])
    return {PREFIX + k: v for k, v in out.items()}


def class_agreement(objects_d: np.ndarray, features_d: np.ndarray) -> float:
    """The share of pairs that object and feature classes both put in one class or both apart."""
    a = equivalence_classes(objects_d, CLASS_TOLERANCE)
    b = equivalence_classes(features_d, FEATURE_TOLERANCE)
    i, j = np.triu_indices(len(a), 1)
    return float(np.mean((a[i] == a[j]) == (b[i] == b[j])))


# ----------------------------------------------------------------------------- the scores of scores

def auroc(scores: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """P(score of an error > score of a non-error) + ½ P(tie) (Mann–Whitney U / n₁n₀) over the
    last axis (rows of resamples allowed); NaN where one class is absent."""
    ranks = scipy_stats.rankdata(scores, axis=-1)
    n1 = errors.sum(-1)
    n0 = errors.shape[-1] - n1
    u = (ranks * errors).sum(-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n1 * n0 > 0, u / (n1 * n0), np.nan)


def aurac(scores: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Area under the rejection-accuracy curve over the last axis: the mean over k = 1..n of the
    accuracy of the k lowest scores, each member of a tied group cut by k counted with the
    chance it is kept under a random tie-break ((k − lower) / tied, clipped to [0, 1])."""
    lower = scipy_stats.rankdata(scores, method="min", axis=-1) - 1  # members with a strictly lower score
    tied = scipy_stats.rankdata(scores, method="max", axis=-1) - lower
    k = np.arange(1, scores.shape[-1] + 1)
    kept = np.clip((k[:, None] - lower[..., None, :]) / tied[..., None, :], 0, 1)  # (..., k, member)
    right = ((1 - errors)[..., None, :] * kept).sum(-1)
    return (right / k).mean(-1)


def best_aurac(errors: np.ndarray) -> np.ndarray:
    """The AURAC of a score that rejects every error first."""
    return aurac(errors.astype(float), errors)


def spearman(scores: np.ndarray, graded: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation over the last axis (NaN where either is constant)."""
    a, b = (scipy_stats.rankdata(x, axis=-1) for x in (scores, graded))
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def cluster_ci(columns: np.ndarray, clusters: np.ndarray, statistic, seed: int = 0) -> dict:
    """statistic(*columns) over the rows (n, k) and its 95% percentile interval over RESAMPLES
    bootstrap resamples of whole clusters (examples); resamples where it is undefined are left out."""
    if len(columns) == 0:
        return empty()
    mean = float(statistic(*columns.T))
    if not math.isfinite(mean):
        return empty(len(columns))
    ids, inverse = np.unique(clusters, return_inverse=True)
    if len(ids) < 2:
        return interval(mean, None, len(columns))
    members = [np.flatnonzero(inverse == c) for c in range(len(ids))]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), (RESAMPLES, len(ids)))
    if len({len(m) for m in members}) == 1:  # equal clusters: every resample has n rows, all at once
        rows = np.stack(members)[picks].reshape(RESAMPLES, -1)
        draws = statistic(*np.moveaxis(columns[rows], -1, 0))
    else:
        draws = np.array([statistic(*columns[np.concatenate([members[c] for c in p])].T) for p in picks])
    return interval(mean, draws[np.isfinite(draws)], len(columns))


def column(records: list[dict], name: str) -> list[float | None]:
    return [r["metrics"].get(PREFIX + name) for r in records]


def rows_where(records: list[dict], *names: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) values of the named detect_ metrics on the records where all are defined, and
    their examples (the bootstrap's clusters)."""
    values = [column(records, n) for n in names]
    keep = [i for i in range(len(records)) if all(v[i] is not None and math.isfinite(v[i]) for v in values)]
    return (np.array([[v[i] for v in values] for i in keep], dtype=float).reshape(-1, len(names)),
            np.array([records[i]["example"] for i in keep]))


def label_row(records: list[dict], family: str) -> dict | None:
    """One label family's figures on a group of records: the error rate, AURAC's chance and best
    levels, and per score its AUROC, AURAC and Spearman correlation with the graded error."""
    label, graded = LABELS[family]
    labels, clusters = rows_where(records, label)
    if len(labels) == 0:
        return None
    rate = lambda e: e.mean(-1)  # noqa: E731 (a statistic for cluster_ci)
    out = {"error_rate": cluster_ci(labels, clusters, rate),
           "aurac_chance": cluster_ci(labels, clusters, lambda e: 1 - e.mean(-1)),
           "aurac_best": cluster_ci(labels, clusters, best_aurac), "scores": {}}
    if family == "features":  # on worlds: how often the approximate label says what the exact one does
        both, c = rows_where(records, label, LABELS["objects"][0])
        if len(both):
            out["label_agreement"] = cluster_ci(both, c, lambda a, b: (a == b).mean(-1))
    for name in SCORES:
        v, c = rows_where(records, name, label, graded)
        if len(v):
            out["scores"][name] = {"auroc": cluster_ci(v[:, :2], c, auroc), "aurac": cluster_ci(v[:, :2], c, aurac),
                                   "spearman": cluster_ci(v[:, [0, 2]], c, spearman)}
    return out


def detect(records: list[dict]) -> list[dict]:
    """One row per (kind, sampler, context, label family) for models and the oracle, and per
    (kind, sampler, label family) over every context (context "all")."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if role(r) in ROLES and any(k.startswith(PREFIX) for k in r["metrics"]):
            for context in (r["context"], "all"):
                groups.setdefault((r["kind"], r["sampler"], context), []).append(r)
    rows = []
    for (kind, sampler, context), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        for family in LABELS:
            figures = label_row(rs, family)
            if figures is not None:
                rows.append({"kind": kind, "sampler": sampler, "context": context, "label": family,
                             "approximate": family == "features", "reference": role(rs[0]) == "oracle",
                             "contexts": len(rs), **figures})
    return rows
