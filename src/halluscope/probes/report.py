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
from halluscope.io import atomic_path, read_json, read_jsonl
from halluscope.probes.probe import RECORDS, SUMMARY_JSON
from halluscope.probes.recognition import roc_curve

matplotlib.use("Agg")  # files only; never a window
from matplotlib import pyplot as plt

# (metric, axis label): the curves a report shows when the runs measured them.
CURVES = [
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
]
SUMMARY_COLUMNS = ["match_mean", "match_best", "exact_rate", "diversity", "recon_psnr_best", "vendi", "retrieval",
                   "nll_truth", "typicality_gap"]
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


def line_label(row: dict, kinds: int) -> str:
    return f"{row['kind']}: {row['sampler']}" if kinds > 1 else row["sampler"]


def save_figure(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_curve(rows: list[dict], metric: str, label: str, path: Path) -> Path | None:
    """The metric against the context fraction, mean with its 95% band, one line per
    (domain, sampler); None when no run measured it."""
    kinds = len({r["kind"] for r in rows})
    lines: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        stats = row["metrics"].get(metric)
        if stats and stats["mean"] is not None:
            lines.setdefault(line_label(row, kinds), []).append((row["context"], stats))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in sorted(lines.items()):
        points.sort(key=lambda p: p[0])
        x = [p[0] for p in points]
        ax.plot(x, [p[1]["mean"] for p in points], marker="o", label=name)
        ax.fill_between(x, [p[1]["lo"] for p in points], [p[1]["hi"] for p in points], alpha=0.2)
    ax.set_xlabel("context fraction")
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_entropy_maps(records: list[dict], path: Path) -> Path | None:
    """Mean per-position predictive entropy along the ground truth, one panel per (sampler,
    context): where on the grid the model is unsure. Clip grids show their latent frames
    side by side."""
    maps: dict[tuple[str, float], list[np.ndarray]] = {}
    for r in records:
        if "entropy_map" in r:
            m = np.array([np.nan if v is None else v for v in r["entropy_map"]], dtype=float).reshape(r["grid"])
            maps.setdefault((r["sampler"], r["context"]), []).append(m)
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
        ax.set_title(f"{key[0]}\ncontext {key[1]:g}", fontsize=7)
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


def fmt(stats: dict | None) -> str:
    if not stats or stats["mean"] is None:
        return "–"
    return f"{stats['mean']:.3g} <small>[{stats['lo']:.3g}, {stats['hi']:.3g}]</small>"


def summary_table(rows: list[dict]) -> str:
    columns = [c for c in SUMMARY_COLUMNS if any(c in r["metrics"] for r in rows)]
    head = "".join(f"<th>{c}</th>" for c in ["run", "kind", "sampler", "context", "examples", *columns])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (r["run"], r["kind"], r["sampler"], r["context"],
                                                                     r["examples"]))
        + "".join(f"<td>{fmt(r['metrics'].get(c))}</td>" for c in columns) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img,video{max-width:100%;margin:4px}
.plots img{width:32%;min-width:380px}
.grids img{height:120px;image-rendering:pixelated}small{color:#666}h3{font-size:14px;margin:1em 0 0}"""


def write_report(runs: list[str | os.PathLike], out: str | os.PathLike, info: dict | None = None) -> Path:
    """Plots (out/plots/*.png) and out/report.html for one or more run folders (e.g. an image
    run and a clip run, to compare the domains on one set of curves)."""
    runs, out = [Path(r) for r in runs], Path(out)
    rows = load_runs(runs)
    records = [r for run in runs for r in read_jsonl(run / RECORDS)]
    plots = [plot_curve(rows, metric, label, out / "plots" / f"{metric}.png") for metric, label in CURVES]
    plots.append(plot_entropy_maps(records, out / "plots" / "entropy_maps.png"))
    plots = [p for p in plots if p is not None]
    grids = sorted(p for run in runs for p in (run / "grids").glob("*") if p.suffix.lower() in MEDIA)
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>halluscope probe report</title>"
              f"<style>{STYLE}</style></head><body><h1>halluscope probe report</h1>"),
             f"<p>runs: {html.escape(', '.join(str(r) for r in runs))}</p>"]
    if info:
        parts.append(f"<pre>{html.escape(json.dumps(info, indent=1, sort_keys=True))}</pre>")
    parts += ["<h2>Summary (mean [95% bootstrap interval] over examples)</h2>", summary_table(rows),
              "<h2>Curves</h2><div class='plots'>", *(embed(p, p.stem) for p in plots), "</div>",
              ("<h2>Samples</h2><p>Each row: the context shown, the ground truth, its reconstruction, then the "
               "samples.</p><div class='grids'>")]
    parts += [f"<h3>{html.escape(p.parent.parent.name)}: {html.escape(p.stem)}</h3>{embed(p, p.stem)}" for p in grids]
    parts.append("</div></body></html>\n")
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts))
    return path
