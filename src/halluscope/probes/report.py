"""What a person looks at after a probe run: curves of each metric against the context
fraction (one line per sampler, and per domain when image and clip runs are shown together),
mean entropy maps, sample grids, and one self-contained report.html that embeds all of them
(base64), so it can be mailed or opened anywhere without the run folder."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import warnings
from pathlib import Path

import matplotlib
import numpy as np

from halluscope.errors import UserError
from halluscope.io import atomic_path, read_json, read_jsonl, write_json
from halluscope.probes.detection import SCORES
from halluscope.probes.memorization import GROUPS, group_contrast
from halluscope.probes.probe import RECORDS, SUMMARY_JSON
from halluscope.probes.recognition import roc_curve
from halluscope.probes.skill import BASELINES, JOINT, MARGIN
from halluscope.probes.stats import empty
from halluscope.probes.target import describe

matplotlib.use("Agg")  # files only; never a window
from matplotlib import pyplot as plt

# (metric, axis label): the curves a report shows when the runs measured them; objects first.
CURVES = [
    ("objects_invented", "objects invented per frame (vs the decoded truth)"),
    ("objects_dropped", "objects dropped per frame"),
    ("objects_recoloured", "objects recoloured per frame"),
    ("objects_position_error", "position error of matched objects (pixels)"),
    ("energy_objects", "energy score, objects (GOSPA; lower is better)"),
    ("spread_skill_objects", "spread-skill ratio R, objects (1 = calibrated)"),
    ("chance_corrected_match", "chance-corrected token match (0 = the marginal's)"),
    ("match_mean", "ground-truth token match (mean of N)"),
    ("match_best", "ground-truth token match (best of N)"),
    ("diversity", "pairwise token Hamming diversity"),
    ("pixel_diversity", "pairwise pixel MSE"),
    ("recon_psnr_best", "PSNR vs reconstruction, best of N (dB)"),
    ("recon_ssim_best", "SSIM vs reconstruction, best of N"),
    ("feature_diversity", "pairwise feature MSE"),
    ("vendi", "Vendi score (effective samples)"),
    ("retrieval", "retrieval rate (nearest real continuation is the truth)"),
    ("nll_truth", "NLL of the ground truth (nats/token)"),
    ("typicality_gap", "NLL(truth) − NLL(own samples)"),
    ("entropy", "mean predictive entropy (nats)"),
    ("spread_skill_tokens", "spread-skill ratio R, tokens (marginals only)"),
    ("spread_skill_pixels", "spread-skill ratio R, pixels (1 = calibrated)"),
    ("energy_pixels", "energy score, pixels (RMS; lower is better)"),
    ("typicality_z", "typicality z: (NLL(truth) − mean NLL(samples)) / sd"),
    ("floor_rate", "samples within the tokenizer's reconstruction floor"),
    ("redundancy", "redundancy R(k) = 1 − H(Y|C_k)/H(Y)"),
]
# The lead table: hallucination counted in objects, against the oracle's level and the tokenizer's floor.
OBJECT_COLUMNS = ["objects_truth", "objects_invented", "objects_dropped", "objects_recoloured",
                  "objects_position_error", "energy_objects", "relative_energy_objects", "tokenizer_objects_invented",
                  "tokenizer_objects_dropped", "tokenizer_objects_recoloured"]
KNOWN_COLUMNS = ["diversity", "pixel_diversity", "match_mean", "exact_rate", "sampler_acceptance",
                 "sampler_state_differs", "sampler_conditional_entropy_bits", "sampler_mutual_information_bits"]
CHANCE_COLUMNS = ["match_mean", "chance_match", "chance_corrected_match", "foreground_share", "foreground_match_mean",
                  "foreground_chance_corrected_match", "retrieval", "retrieval_chance"]
SKILL_METRICS = ["energy_objects", "objects_invented", "energy_pixels", "chance_corrected_match"]
SKILL_COLUMNS = [f"normalised_skill_{m}_vs_{b}" for m in SKILL_METRICS for b in BASELINES] + \
    [f"context_effect_{m}" for m in SKILL_METRICS]
# Calibration: verdicts only from distances that see joint structure; token R is shown, never judged.
CALIBRATION_COLUMNS = ["spread_skill_pixels", "spread_skill_features", "spread_skill_objects", "relative_energy_pixels",
                       "relative_energy_features", "relative_energy_objects", "spread_skill_tokens", "typicality_z",
                       "redundancy"]
GAIN_COLUMNS = [f"context_gain_{m}" for m in ["energy_objects", "objects_invented", "objects_position_error",
                                              "energy_pixels", "chance_corrected_match"]]
SUMMARY_COLUMNS = ["match_mean", "match_best", "exact_rate", "floor_rate", "diversity", "recon_psnr_best", "vendi",
                   "retrieval", "nll_truth", "typicality_gap"]
# Memorization against the training set (probes/memorization.py): samples' level beside the truth's.
MEMORIZATION_COLUMNS = ["train_copy", "train_copy_truth", "train_copy_excess", "train_closer", "train_tokens_nearest",
                        "train_tokens_truth", "train_pixels_nearest", "train_pixels_truth", "train_features_nearest",
                        "train_features_truth", "train_objects_nearest", "train_objects_truth"]
MEDIA = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def load_runs(runs: list[Path]) -> list[dict]:
    """Summary rows of every run, each tagged with the run it came from."""
    rows = []
    for run in runs:
        if not (run / SUMMARY_JSON).is_file():
            raise UserError(f"{run} is not a probe run folder (no {SUMMARY_JSON})")
        rows += [{**row, "run": run.name} for row in read_json(run / SUMMARY_JSON, "probe summary")["groups"]]
    return rows


def kind_of(rows: list[dict], run: str) -> str:
    return next((r["kind"] for r in rows if r["run"] == run), "")


def line_label(row: dict, kinds: int) -> str:
    return f"{row['kind']}: {row['sampler']}" if kinds > 1 else row["sampler"]


def save_figure(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def values(stats: list[dict], key: str | None, field: str) -> list[float]:
    """One field of each summary statistic (of each row's `key`), NaN where undefined (an
    unbounded interval), so that a line or band just stops there."""
    picked = [s if key is None else s[key] for s in stats]
    return [np.nan if s[field] is None else s[field] for s in picked]


def plot_curve(rows: list[dict], metric: str, label: str, path: Path) -> Path | None:
    """The metric against the context fraction, mean with its 95% band, one line per
    (domain, sampler) measured at two or more contexts; None when there is no such line."""
    kinds = len({r["kind"] for r in rows})
    by_run = len({r["run"] for r in rows}) > kinds  # several runs of a kind (seeds): one line per run
    lines: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        stats = row["metrics"].get(metric)
        if stats and stats["mean"] is not None:
            label = f"{row['run']}: {row['sampler']}" if by_run else line_label(row, kinds)
            lines.setdefault(label, []).append((row["context"], stats))
    lines = {name: points for name, points in lines.items() if len(points) > 1}  # a lone dot is no curve
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in sorted(lines.items()):
        points.sort(key=lambda p: p[0])
        x = [p[0] for p in points]
        ax.plot(x, values([p[1] for p in points], None, "mean"), marker="o", label=name)
        ax.fill_between(x, values([p[1] for p in points], None, "lo"), values([p[1] for p in points], None, "hi"),
                        alpha=0.2)
    ax.set_xlabel("context fraction")
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_entropy_maps(records: list[dict], path: Path) -> Path | None:
    """Mean per-position predictive entropy along the ground truth, one panel per (kind,
    sampler, context): where on the grid the model is unsure. Clip grids show their latent
    frames side by side."""
    maps: dict[tuple[str, str, float], list[np.ndarray]] = {}
    for r in records:
        if "entropy_map" in r:
            m = np.array([np.nan if v is None else v for v in r["entropy_map"]], dtype=float).reshape(r["grid"])
            maps.setdefault((r["kind"], r["sampler"], r["context"]), []).append(m)
    if not maps:
        return None
    keys = sorted(maps)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        with warnings.catch_warnings():  # the context's cells are NaN in every map: an empty mean, on purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.stack(maps[key]), 0)
        if mean.ndim == 3:  # (t, h, w) -> frames side by side
            mean = np.concatenate(list(mean), axis=1)
        im = ax.imshow(mean, cmap="magma")
        ax.set_title(f"{key[0]}: {key[1]}\ncontext {key[2]:g}", fontsize=7)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(records: dict[str, list[dict]], aucs: dict[str, float], path: Path) -> Path:
    """ROC curve of each model's continuation NLL as a detector of physics violations."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, rs in records.items():
        fpr, tpr = roc_curve([r["nll_real"] for r in rs], [r["nll_violation"] for r in rs])
        ax.plot(fpr, tpr, label=f"{Path(name).name} (AUC {aucs[name]:.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (violation flagged)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    mime = MEDIA[path.suffix.lower()]
    if mime.startswith("video"):
        return f'<video controls loop muted src="data:{mime};base64,{data}" title="{html.escape(alt)}"></video>'
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def fmt(stats: dict | None, interval: bool = True) -> str:
    """mean [lo, hi] (a None bound unbounded), with a paired test's p when there is one; a
    value without an interval (a test's p-value) with interval=False."""
    if not stats or stats["mean"] is None:
        return "–"
    if not interval:
        return f"{stats['mean']:.3g}"
    bound = [f"{stats[k]:.3g}" if stats[k] is not None else ("−∞" if k == "lo" else "∞") for k in ("lo", "hi")]
    p = f" p {stats['p']:.2g}" if stats.get("p") is not None else ""
    return f"{stats['mean']:.3g} <small>[{bound[0]}, {bound[1]}]{p}</small>"


def summary_table(rows: list[dict], columns: list[str], verdicts: bool = False) -> str:
    """Rows × the columns any row has, each cell mean [95% interval]; with `verdicts`, each
    spread-skill column of a joint distance is followed by its calibration verdict."""
    columns = [c for c in columns if any(c in r["metrics"] for r in rows)]
    if not columns:
        return ""
    heads = []
    for c in columns:
        heads.append(c)
        if verdicts and c.removeprefix("spread_skill_") in JOINT:
            heads.append("verdict")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", "kind", "sampler", "context", "target", "examples",
                                                           *heads])

    def cells(r: dict) -> str:
        run = f"{r['run']} ({r['group']})" if r.get("group") else r["run"]  # held-out or training examples
        out = "".join(f"<td>{html.escape(str(v))}</td>" for v in (run, r["kind"], r["sampler"], r["context"],
                                                                  describe(r.get("target")), r["examples"]))
        for c in columns:
            out += f"<td>{fmt(r['metrics'].get(c), interval=not c.endswith('_p'))}</td>"
            if verdicts and c.removeprefix("spread_skill_") in JOINT:
                out += f"<td>{html.escape((r.get('verdicts') or {}).get(c.removeprefix('spread_skill_'), '–'))}</td>"
        return out

    body = "".join(f"<tr>{cells(r)}</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def section(title: str, text: str, table: str) -> str:
    """A report section, or nothing when its table is empty (no run measured its figures)."""
    return f"<h2>{html.escape(title)}</h2><p>{text}</p>{table}" if table else ""


def plot_rank_histograms(rows: list[dict], path: Path) -> Path | None:
    """The pooled rank of the truth among its samples, one panel per (run, sampler, context),
    one line per pre-rank; flat = exchangeable, piled at the top = the truth lies outside the
    samples (overconfident), at the bottom = it is more central than they are (over-dispersed)."""
    panels = [r for r in rows if r.get("rank_histograms")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 2.8), squeeze=False)
    for ax, row in zip(axes[0], panels):
        for name, h in sorted(row["rank_histograms"].items()):
            counts = np.asarray(h["counts"], dtype=float)
            p = "–" if h["p"] is None else f"{h['p']:.2g}"
            ax.step(np.arange(len(counts)), counts / max(counts.sum(), 1), where="mid", label=f"{name} (p {p})")
        ax.axhline(1 / len(counts), color="k", lw=0.8, ls=":")
        ax.set_title(f"{row['kind']}: {row['sampler']}\ncontext {row['context']:g}", fontsize=7)
        ax.set_xlabel("rank of the truth (0 = most typical)", fontsize=7)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("share of examples")
    fig.tight_layout()
    return save_figure(fig, path)



STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img,video{max-width:100%;margin:4px}
.plots img{width:32%;min-width:380px}
.grids img{height:120px;image-rendering:pixelated}small{color:#666}h3{font-size:14px;margin:1em 0 0}"""


def leak_table(rows: list[dict]) -> str:
    """Per run, kind and context (the leak is the tokenizer's, the same for every sampler): how
    the context was encoded, its measured leak and its agreement with the full encoding."""
    seen, body = set(), []
    for r in rows:
        key = (r["run"], r["kind"], r["context"])
        if key in seen or "context_leak" not in r["metrics"]:
            continue
        seen.add(key)
        cells = [*key, r.get("context_encoding", "full"), fmt(r["metrics"]["context_leak"]),
                 fmt(r["metrics"].get("context_agreement"))]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells[:4])
                    + "".join(f"<td>{c}</td>" for c in cells[4:]) + "</tr>")
    if not body:
        return ""
    head = "".join(f"<th>{c}</th>" for c in ["run", "kind", "context", "encoding", "context_leak",
                                              "context_agreement"])
    return ("<h2>Does the context leak the answer?</h2><p>context_leak: share of the context tokens that change "
            "when only the continuation's pixels are replaced by another example's (0: the context depends on "
            "the shown pixels alone). context_agreement: share of the context tokens equal to those of the whole "
            "example's encoding (the GPT trained on whole-example encodings; below 1, visible contexts are "
            f"new to it).</p><table><tr>{head}</tr>{''.join(body)}</table>")


def contrast_table(contrast: list[dict]) -> str:
    """Per sampler and context: each contrast metric in the training and the held-out group and
    their difference (training − held-out) with its unpaired interval and Mann–Whitney p."""
    metrics = sorted({m for row in contrast for m in row["metrics"]})
    if not metrics:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["kind", "sampler", "context", "examples (training / held-out)",
                                                           *[f"{m}: {g}" for m in metrics for g in
                                                             (*GROUPS[::-1], "difference")]])
    body = ""
    for row in contrast:
        cells = [row["kind"], row["sampler"], row["context"], " / ".join(str(row["examples"][g]) for g in GROUPS[::-1])]
        body += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "".join(
            f"<td>{fmt(row['metrics'].get(m, {}).get(g))}</td>" for m in metrics for g in (*GROUPS[::-1], "difference"))
        body += "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def memorization_section(rows: list[dict], records: list[dict]) -> str:
    """The memorization figures of every group, then the training group against the held-out one."""
    table = summary_table([r for r in rows if "train_copy" in r["metrics"]], MEMORIZATION_COLUMNS)
    contrast = contrast_table(group_contrast(records))
    text = ("Each continuation against the continuation of every training example at the same positions: "
            "train_*_nearest, the samples' mean distance to their nearest one (tokens: Hamming share; pixels and "
            "features: MSE of decodings; objects: GOSPA per frame), train_*_truth the truth's. train_copy: the share "
            "of samples within the copy threshold (tokens) of a training continuation; train_copy_truth, the same "
            "of the truth: the level a repetitive world gives without any copying (the oracle's copy share is that "
            "level in expectation). In the training group each example's own entry is left out.")
    if contrast:
        table += ("<p>Memorized against novel contexts: the same sampler on training examples and on held-out "
                  "ones; difference = training − held-out, with its bootstrap interval and Mann–Whitney p.</p>"
                  + contrast)
    return section("Memorization: copies of the training set", text, table)


def load_detection(runs: list[Path]) -> list[dict]:
    """Every run's detection rows (summary.json's "detection"; a run written before it has none)."""
    return [{**row, "run": run.name} for run in runs
            for row in read_json(run / SUMMARY_JSON, "probe summary").get("detection", [])]


def detection_label(row: dict) -> str:
    return (f"{row['run']} {row['kind']} {row['sampler']}" + (" (reference)" if row["reference"] else "")
            + f", {row['label']} labels" + (" (approximate)" if row["approximate"] else ""))


def plot_detection(rows: list[dict], path: Path) -> Path | None:
    """Each score's AUROC at predicting a hallucinating answer over every context, with its 95%
    interval: one marker series per (run, kind, sampler, label family); 0.5 is chance."""
    pooled = [r for r in rows if r["context"] == "all" and r["scores"]]
    if not pooled:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(SCORES) + 1.5 + 0.2 * len(pooled)), layout="constrained")
    for i, row in enumerate(pooled):
        y = np.arange(len(SCORES)) + (i - (len(pooled) - 1) / 2) * 0.8 / len(pooled)
        stats = [row["scores"].get(name, {}).get("auroc", empty()) for name in SCORES]
        mean, lo, hi = (np.asarray(values(stats, None, f), dtype=float) for f in ("mean", "lo", "hi"))
        ax.errorbar(mean, y, xerr=[mean - lo, hi - mean], fmt="o", ms=4, capsize=2, label=detection_label(row))
    ax.axvline(0.5, color="k", ls=":", lw=1)
    ax.set_yticks(np.arange(len(SCORES)), list(SCORES))
    ax.set_xlabel("AUROC at predicting a hallucinating answer, all contexts (0.5 = chance)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.08))  # below: the markers fill the axes
    return save_figure(fig, path)


def detection_table(rows: list[dict]) -> str:
    """Rows × scores, each cell the score's AUROC with its interval, after the error rate and
    AURAC's chance and best levels."""
    names = [n for n in SCORES if any(n in r["scores"] for r in rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", "kind", "sampler", "labels", "context", "contexts",
                                                           "error rate", "AURAC chance / best", *names])
    body = ""
    for r in rows:
        sampler = r["sampler"] + (" (reference)" if r["reference"] else "")
        labels = r["label"] + (" (approximate)" if r["approximate"] else "")
        body += "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (r["run"], r["kind"], sampler, labels,
                                                                              r["context"], r["contexts"]))
        body += f"<td>{fmt(r['error_rate'])}</td><td>{fmt(r['aurac_chance'], False)} / {fmt(r['aurac_best'], False)}</td>"
        body += "".join(f"<td>{fmt(r['scores'].get(n, {}).get('auroc'))}</td>" for n in names) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def detection_section(rows: list[dict], plot: Path | None) -> str:
    """How well each uncertainty score, computed from the samples alone, flags the contexts whose
    answer hallucinates (probes/detection.py)."""
    if not rows:
        return ""
    text = ("Of each context's samples, sample 0 is the answer and the others the witnesses; every score reads "
            "the witnesses (and the answer's own likelihood), never the truth: semantic_entropy over object-level "
            "classes (GOSPA per frame within the class tolerance), object_classes, the witnesses' pairwise object / "
            "token / pixel / feature disagreement, feature_semantic_entropy (classes by feature distance: an "
            "approximation), the GPT's likelihoods (predictive_entropy per continuation, "
            "length_normalised_entropy and token_entropy per token, answer_nll) and answer_objects (the analogue "
            "of answer length). Object labels: the answer invents, drops or recolours objects beyond the error "
            "tolerance (worlds only). Feature labels: the answer's feature distance to the truth exceeds the "
            "tolerance in units of the distance between unrelated examples — approximate. Cells: AUROC [95% "
            "bootstrap interval over examples] at predicting the answer's error, 0.5 = chance. The oracle's rows "
            "(reference) are what the world's own ambiguity lets any sampler know. AURACs are in summary.json.")
    return section("Detection: can the samples tell when they hallucinate?", text,
                   detection_table(rows) + (embed(plot, plot.stem) if plot else ""))


def write_report(runs: list[str | os.PathLike], out: str | os.PathLike, info: dict | None = None,
                 verdict: dict | None = None, records: list[dict] | None = None) -> Path:
    """Plots (out/plots/*.png) and out/report.html for one or more run folders (e.g. an image
    run and a clip run, to compare the domains on one set of curves). It leads with the
    verdict (probes/verdict.py) when there is one, the object table and the sample grids; the
    run's settings `info` sit in a collapsed block. `records`: the runs' records, when the
    caller has already read them."""
    runs, out = [Path(r) for r in runs], Path(out)
    rows = load_runs(runs)
    records = [r for run in runs for r in read_jsonl(run / RECORDS)] if records is None else records
    plots = [plot_curve(rows, metric, label, out / "plots" / f"{metric}.png") for metric, label in CURVES]
    detections = load_detection(runs)
    plots.append(plot_entropy_maps(records, out / "plots" / "entropy_maps.png"))
    plots.append(plot_rank_histograms(rows, out / "plots" / "rank_histograms.png"))
    curves = {f"{run.name}: {kind_of(rows, run.name)} {gpt}": curve for run in runs
              for gpt, curve in read_json(run / SUMMARY_JSON, "probe summary").get("redundancy", {}).items()}
    plots.append(plot_redundancy(curves, out / "plots" / "redundancy.png") if curves else None)
    plots = [p for p in plots if p is not None]
    grids = sorted(p for run in runs for p in (run / "grids").glob("*") if p.suffix.lower() in MEDIA)
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>halluscope probe report</title>"
              f"<style>{STYLE}</style></head><body><h1>halluscope probe report</h1>"),
             f"<p>runs: {html.escape(', '.join(str(r) for r in runs))}</p>"]
    if verdict:
        parts.append(f"<h2>Verdict: {html.escape(verdict['outcome'])}</h2><p>{html.escape(verdict['line'])}</p>"
                     f"<p>{html.escape(verdict['clip_against_oracle'])}</p><p>The test was stated before the runs: "
                     "docs/probes.md, “The verdict”.</p>")
    plain, tempered = [r for r in rows if r.get("plain", True)], [r for r in rows if not r.get("plain", True)]
    parts += [section("Objects: hallucination counted in objects",
                      "Each decoded continuation is segmented by the world's palette and its objects matched to those "
                      "of the decoded truth: per frame, objects <b>invented</b> (in the sample, not the truth), "
                      "<b>dropped</b>, <b>recoloured</b>, and the position error (pixels) of the matched ones. Where "
                      "the truth is uncertain even the oracle invents and drops objects: its row is the level "
                      "uncertainty alone explains, and relative_energy_objects = a sampler's object energy score / "
                      "the oracle's (1: as good). tokenizer_objects_*: the decoded truth against the raw truth, the "
                      "tokenizer's own floor.", summary_table(rows, OBJECT_COLUMNS)),
              ("<h2>Samples</h2><p>Each row: what the model saw (its context tokens decoded), the ground truth, its "
               "reconstruction, then the samples.</p><div class='grids'>" if grids else ""),
              *(f"<h3>{html.escape(p.parent.parent.name)}: {html.escape(p.stem)}</h3>{embed(p, p.stem)}"
                for p in grids),
              "</div>" if grids else "",
              section("Known answers: what the world itself says",
                      "The oracle draws from the world's exact posterior given the shown pixels. sampler_acceptance: "
                      "its rejection sampler's acceptance rate; sampler_state_differs (clips): the share of its draws "
                      "whose state at the last shown frame is not the recorded one (the context's own ambiguity). "
                      "sampler_conditional_entropy_bits / sampler_mutual_information_bits: the world's entropy of the "
                      "continuation given the context and its information about it, where its definition gives them "
                      "exactly (–: no closed form; the oracle's diversity is then the known answer). "
                      + html.escape(" ".join(sorted({n for r in rows for n in r.get("sampler_notes", [])}))),
                      summary_table([r for r in rows if "sampler_acceptance" in r["metrics"]], KNOWN_COLUMNS)),
              leak_table(rows),
              section("Against chance", "chance_match: the match rate expected of a sampler drawing each position "
                      "from the training tokens' marginal; chance_corrected_match = (match − chance) / (1 − chance), "
                      "0 at chance level. foreground_*: the positions whose true patch holds a shape. "
                      "retrieval_chance: 1 / (pool + 1).", summary_table(rows, CHANCE_COLUMNS)),
              section("Against baselines", "normalised_skill_m_vs_b = (m(sampler) − m(b)) / (m(oracle) − m(b)): 1 "
                      "as good as the oracle, 0 no better than the baseline b (shuffled: the same sampler given "
                      "another example's context); an interval [−∞, ∞]: the data cannot tell the oracle from b. "
                      "context_effect_m = m(sampler) − m(its shuffled twin), with the Wilcoxon signed-rank p.",
                      summary_table(rows, SKILL_COLUMNS)),
              memorization_section(rows, records),
              detection_section(detections, plot_detection(detections, out / "plots" / "detection.png")),
              section("Calibration: plain sampling (temperature 1, no top-k / top-p)",
                      "Verdicts come only from distances that see joint structure (pixels, features, objects): "
                      f"<b>calibrated</b> when R's 95% interval lies inside [{MARGIN[0]:g}, {MARGIN[1]:g}], "
                      "<b>inconclusive</b> when it holds 1 but reaches outside, <b>under-dispersed</b> (R &gt; 1, "
                      "confidently wrong) or <b>over-dispersed</b> (R &lt; 1) otherwise. Token R depends only on each "
                      "position's marginal (the marginal baseline scores 1), so it gets no verdict. "
                      "relative_energy_d: the energy score over the oracle's.",
                      summary_table(plain, CALIBRATION_COLUMNS, verdicts=True)),
              section("Tempered or truncated sampling", "Reported apart: it narrows samples and inflates matches.",
                      summary_table(tempered, CALIBRATION_COLUMNS)),
              section("Like for like across contexts (fixed target)", "Every context scores the same target; "
                      "context_gain_m = m(this context) − m(the run's shortest context), paired over examples, with "
                      "the Wilcoxon signed-rank p.", summary_table([r for r in rows if "reference_context" in r],
                                                                   GAIN_COLUMNS))]
    parts += ["<h2>All summaries (mean [95% bootstrap interval] over examples)</h2>",
              summary_table(rows, SUMMARY_COLUMNS),
              "<h2>Curves</h2><div class='plots'>", *(embed(p, p.stem) for p in plots), "</div>"]
    if info:
        settings = html.escape(json.dumps(info, indent=1, sort_keys=True))
        parts.append(f"<details><summary>Run settings</summary><pre>{settings}</pre></details>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts))
    return path


def plot_redundancy(curves: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """R(k) (with the world's true R as stars where it is known) and I(C_k; Y) in bits per
    pixel against the context fraction, one line (with its 95% band) per curve, e.g.
    {"image": ..., "clip": ...}: modalities with different tokenizers on one scale; and R
    against M, the other contexts its marginal mixes, one line per curve and context."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, key, label in [(axes[0], "redundancy", "redundancy R(k) = 1 − H(Y|C_k)/H(Y)"),
                           (axes[1], "information_bits_per_pixel", "I(C_k; Y), bits per pixel")]:
        for name, rows in sorted(curves.items()):
            x = [r["context"] for r in rows]
            line, = ax.plot(x, values(rows, key, "mean"), marker="o", label=name)
            ax.fill_between(x, values(rows, key, "lo"), values(rows, key, "hi"), alpha=0.2)
            known = [(r["context"], r["world_redundancy"]) for r in rows if r.get("world_redundancy") is not None]
            if key == "redundancy" and known:
                ax.scatter(*zip(*known), marker="*", s=90, color=line.get_color(), label=f"{name}: the world's")
        ax.set_xlabel("context fraction (0 = none)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for name, rows in sorted(curves.items()):
        for r in rows:
            steps = r.get("by_marginal_contexts", [])
            if r["context"] > 0 and steps:
                axes[2].plot([s["contexts"] for s in steps], values(steps, "redundancy", "mean"), marker=".",
                             label=f"{name}, context {r['context']:g}")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("M, other contexts in H(Y)'s marginal")
    axes[2].set_ylabel("R(k) (falls towards the model's as M grows)", fontsize=8)
    axes[2].grid(alpha=0.3)
    if axes[2].lines:
        axes[2].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def write_redundancy(curves: dict[str, list[dict]], out: str | os.PathLike) -> list[Path]:
    """out/redundancy.json (the curves) and out/redundancy.png (their plot)."""
    out = Path(out)
    write_json(out / "redundancy.json", curves)
    return [out / "redundancy.json", plot_redundancy(curves, out / "redundancy.png")]
