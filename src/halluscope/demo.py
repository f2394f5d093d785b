"""`halluscope demo`: the main job, end to end on a laptop CPU with nothing to download.

It reproduces the image-vs-clip finding. For each modality it writes a synthetic world (a
training split and a held-out split), trains a tiny tokenizer, tokenizes, and trains a tiny
GPT; both token grids are 256 tokens long (images 16×16, clips 4×8×8), a fair comparison.
Then it probes both GPTs, and the worlds' exact posterior (the oracle: the known answer), on
held-out examples at three context fractions, and the baselines (copy-last, the training
marginal, shuffled contexts) at ½, where the verdict is read; scores physics-violating clip
twins (recognition), writes one HTML report and prints the table and the verdict.

Every stage is a `halluscope` command, printed as it runs so that a reader can re-run or
vary any of it, and every stage resumes: a second run reuses what the first trained
(`--retrain` starts over)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from halluscope.cli import main as halluscope
from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.errors import UserError
from halluscope.io import read_json, read_jsonl, write_json
from halluscope.probes.stats import fmt_interval


@dataclass
class DemoSize:
    """The same data, GPT and probe budget for both modalities: a fair comparison."""
    train: int  # training examples per modality
    heldout: int  # held-out examples per modality: the probes' sample size
    tokenizer_steps: dict[str, int]  # per modality: each trains until its decoded shapes can be counted
    gpt_steps: int
    samples: int  # continuations per example and context


# Sized to finish within 20 minutes on a 2-core CPU, install included (README). The clip
# tokenizer gets 400 steps: after 200 (PSNR 17.7 dB) its decoded clips' shapes were too blurred
# for the object figures to tell the GPT from its baselines; the image tokenizer's 200 suffice.
FULL = DemoSize(train=1000, heldout=24, tokenizer_steps={"image": 200, "clip": 400}, gpt_steps=700, samples=8)
QUICK = DemoSize(train=32, heldout=3, tokenizer_steps={"image": 4, "clip": 4}, gpt_steps=12, samples=2)
CONTEXTS = (0.25, 0.5, 0.75)
VERDICT_AT = 0.5  # the context the pre-registered verdict tests (docs/probes.md, "The verdict")


@dataclass
class Modality:
    """One half of the demo: a world and the tokenizer flags that give it a 256-token grid."""
    name: str  # "image" | "clip"
    world: ImageWorld | VideoWorld
    tokenizer_flags: tuple[str, ...]
    tokenizer_batch: int


# Both tokenizers make tokens that repeat when the picture repeats, since the probes count
# token matches: replicate padding (with zeros, even a blank image maps to dozens of codes near
# its borders) and 64 codes without restarts of unused ones (restarted codes split the flat
# background into near-identical codes). PSNR is not the point here. Causal encoders: a
# context's tokens depend on the shown pixels alone, and equal those of the whole example's
# encoding the GPT trained on (docs/probes.md, "The context must not contain the answer").
STABLE_TOKENS = ("--padding", "replicate", "--codebook-size", "64", "--restart-every", "0", "--causal")
IMAGE = Modality("image", ImageWorld(size=64), ("--kind", "image", *STABLE_TOKENS), tokenizer_batch=8)
# 16 frames of 64² at (4, 8, 8) pixels per token: a 4×8×8 grid, as long as the image's 16×16.
CLIP = Modality("clip", VideoWorld(size=64, frames=16, randomness=0.0),
                ("--kind", "video", "--downsample", "4,8,8", *STABLE_TOKENS), tokenizer_batch=4)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job: image vs clip continuations, trained and probed on the CPU")
    p.add_argument("--out", default="runs/demo", help="run folder (reused by a second run)")
    p.add_argument("--quick", action="store_true", help="a much smaller version (tests, a first look)")
    p.add_argument("--retrain", action="store_true", help="delete --out and start over")
    p.add_argument("--heldout", type=int,
                   help="held-out examples per modality, the probes' sample size (default 24; --quick 3)")
    p.add_argument("--seeds", type=int, default=1,
                   help="tokenizer+GPT pairs trained per modality (training seeds 0..K-1); the verdict's interval "
                        "resamples them; seeds after the first are probed at context 0.5 only (default 1)")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.retrain:
        shutil.rmtree(out, ignore_errors=True)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    size = QUICK if args.quick else FULL
    if args.heldout is not None:
        if args.heldout < 2:
            raise UserError(f"--heldout must be at least 2 (the shuffled baseline swaps contexts), got {args.heldout}")
        size = dataclasses.replace(size, heldout=args.heldout)
    t0 = time.perf_counter()
    result = run_demo(out, size, args.seeds)
    print(f"\n{result['table']}\n\n{result['detection']}\n\n{result['verdict']}\n")
    print(f"report: {result['report']}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s. Try the models interactively: halluscope app --models {out}")
    return 0


def run(*argv: str | Path) -> None:
    """Run one `halluscope` command in this process, showing it first; a failed stage stops the demo."""
    argv = [str(a) for a in argv]
    print(f"\n$ halluscope {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    if halluscope(argv) != 0:
        raise UserError(f"stage `halluscope {argv[0]}` failed (its error is above)")
    print(f"({argv[0]} took {time.perf_counter() - t0:.0f} s)", flush=True)  # where a demo's minutes go


def ensure_world(world: ImageWorld | VideoWorld, folder: Path, n: int, violations: bool = False) -> Path:
    """The world in `folder`, written unless a complete one (with world.json) of n examples is
    there (examples are a pure function of the world's seed and index: a probe resumed on a
    larger world keeps its records)."""
    spec = folder / "world.json"
    if not spec.is_file() or read_json(spec, "world description").get("n") != n:
        shutil.rmtree(folder, ignore_errors=True)
        write_world(world, folder, n, violations=violations)
    return folder


def train_modality(out: Path, m: Modality, size: DemoSize, seed: int = 0, gpt_name: str = "gpt",
                   gpt_flags: tuple[str | int | float, ...] = ()) -> dict[str, Path]:
    """World → tokenizer → token cache → GPT for one modality and training seed; returns the
    folders it made. Every seed trains on the same worlds; seeds after 0 live in seed{k}/.
    `gpt_name` and `gpt_flags` (appended, so they override the demo's) let a study train several
    GPTs on one tokenizer (halluscope.study)."""
    train = ensure_world(m.world, out / m.name / "world-train", size.train)
    heldout = ensure_world(dataclasses.replace(m.world, seed=1), out / m.name / "world-heldout", size.heldout,
                           violations=isinstance(m.world, VideoWorld))  # twins for the recognition probe
    root = out / m.name / (f"seed{seed}" if seed else "")
    steps = size.tokenizer_steps[m.name]
    run("train-tokenizer", *m.tokenizer_flags, "--data", train, "--out", root / "tokenizer", "--preset", "tiny",
        "--steps", steps, "--batch", m.tokenizer_batch, "--sample-every", max(1, steps // 2), "--seed", seed,
        "--resume")
    run("tokenize", "--tokenizer", root / "tokenizer" / "model", "--data", train, "--out", root / "tokens", "--resume")
    s = size.gpt_steps
    # One position table per grid axis: a clip's latent frames share their row and column embeddings.
    run("train-gpt", "--tokens", root / "tokens", "--out", root / gpt_name, "--preset", "tiny", "--factorized-pos",
        "--steps", s, "--batch", 32, "--lr", 3e-3, "--warmup", min(100, s // 4), "--min-lr", 3e-4,
        "--eval-every", max(1, s // 4), "--ckpt-every", max(1, s // 4), "--seed", seed, "--resume", "--no-progress",
        *gpt_flags)
    return {"heldout": heldout, "tokenizer": root / "tokenizer", "tokens": root / "tokens", "gpt": root / gpt_name}


def probe_folder(out: Path, m: Modality, seed: int) -> Path:
    return out / "probes" / (f"{m.name}-seed{seed}" if seed else m.name)


def probe_modality(out: Path, m: Modality, folders: dict[str, Path], size: DemoSize, seed: int = 0) -> Path:
    """The continuation probe of the GPT and the oracle on the held-out examples at every
    context, the baselines at the verdict's context (where the headline is read; a chance
    level comes with every context's match); a later seed's only at the verdict's context."""
    folder = probe_folder(out, m, seed)
    run("probe", "--gpt", folders["gpt"] / "model", "--oracle", "--baselines", "copy-last,marginal,shuffled",
        "--baselines-at", VERDICT_AT, "--data", folders["heldout"],
        "--context", ",".join(map(str, CONTEXTS if seed == 0 else (VERDICT_AT,))),
        "--samples", size.samples, "--grids", 0 if seed else 2, "--out", folder, "--resume", "--no-report")
    return folder


def last_logged(run_dir: Path, key: str) -> float:
    """The last value of `key` in a run's metrics.jsonl (also after a resumed, finished run)."""
    values = [r.get(key) for r in read_jsonl(run_dir / "metrics.jsonl")]
    return next((v for v in reversed(values) if v is not None), math.nan)


def run_demo(out: Path, size: DemoSize, seeds: int = 1) -> dict:
    """Train and probe both modalities for each training seed; the table is seed 0's, the
    verdict (probe-report's) is over every seed."""
    trained = {m.name: train_modality(out, m, size) for m in (IMAGE, CLIP)}
    done, plan = out / "report" / "demo.json", {"size": dataclasses.asdict(size), "seeds": seeds}
    finished = done.is_file() and read_json(done, "demo record") == plan  # a second run reuses every result

    def probed(m: Modality, folders: dict[str, Path], seed: int = 0) -> Path:
        return probe_folder(out, m, seed) if finished else probe_modality(out, m, folders, size, seed)

    runs = [probed(m, trained[m.name]) for m in (IMAGE, CLIP)]
    for seed in range(1, seeds):
        runs += [probed(m, train_modality(out, m, size, seed), seed) for m in (IMAGE, CLIP)]
    recognition = out / "recognition"
    if not finished or not (recognition / "recognition.json").is_file():  # a new plan may hold other pairs
        run("probe-recognition", "--gpt", trained["clip"]["gpt"] / "model", "--data", trained["clip"]["heldout"],
            "--out", recognition)
    verdict = out / "report" / "verdict.json"
    if not finished:
        run("probe-report", *runs, "--context", VERDICT_AT, "--out", out / "report")  # one report over all runs
        write_json(done, plan)
    rows = finding_rows(runs[:2], read_json(recognition / "recognition.json"))
    result = read_json(verdict, "verdict")
    training = {name: {"tokenizer PSNR (dB)": last_logged(f["tokenizer"], "psnr"),
                       "codebook usage": last_logged(f["tokenizer"], "usage"),
                       "GPT val loss (nats/token)": last_logged(f["gpt"], "val_loss")}
                for name, f in trained.items()}
    return {"table": format_table(rows, training), "verdict": f"{result['line']}\n{result['clip_against_oracle']}",
            "detection": detection_table(runs[:2]),
            "outcome": result["outcome"], "rows": rows,
            "training": training, "report": out / "report" / "report.html"}


# ----------------------------------------------------------------------------- the finding

# Objects first: what a tokenizer cannot fake (docs/probes.md); tokens after.
TABLE_METRICS = (("objects_invented", "objects invented"), ("objects_dropped", "objects dropped"),
                 ("objects_recoloured", "objects recoloured"), ("objects_position_error", "position error (px)"),
                 ("match_mean", "match rate"), ("chance_corrected_match", "match above chance"),
                 ("diversity", "diversity"), ("spread_skill_pixels", "spread–skill R (pixels)"),
                 ("redundancy", "redundancy"), ("context_leak", "context leak"))
SAMPLER_ORDER = ("GPT", "oracle", "GPT shuffled", "oracle shuffled", "copy-last", "marginal")


def sampler_label(group: dict) -> str:
    """GPT, oracle, copy-last, marginal, or "GPT shuffled" / "oracle shuffled"."""
    settings = group["settings"]
    if settings.get("baseline") == "shuffled":
        return ("oracle" if settings.get("of") == "oracle" else "GPT") + " shuffled"
    return settings.get("baseline") or ("oracle" if group["sampler"] == "oracle" else "GPT")


def finding_rows(runs: list[Path], recognition: dict) -> list[dict]:
    """One row per (modality, sampler, context) of the probes' summaries; the clip GPT's row at
    the context the recognition probe used also carries its paired preference for the real
    clip, how often its own samples are nearer the real clip than the twin (the same pairs),
    and its AUC (the image world has no violations to recognize)."""
    measured = next(iter(recognition.values()))
    at = measured["context"]
    figures = {"recognition_paired": measured.get("paired_accuracy_ci"),
               "recognition_generative": measured.get("generative_accuracy"), "recognition_auc": measured["auc_ci"]}
    rows = []
    for run_dir, modality in zip(runs, ("image", "clip")):
        for g in read_json(run_dir / "summary.json")["groups"]:
            sampler = sampler_label(g)
            rows.append({"modality": modality, "sampler": sampler, "context": g["context"],
                         **{name: g["metrics"].get(name) for name, _ in TABLE_METRICS},
                         **{name: value if (modality, sampler, g["context"]) == ("clip", "GPT", at) else None
                            for name, value in figures.items()}})
    return sorted(rows, key=lambda r: (SAMPLER_ORDER.index(r["sampler"]), r["context"], r["modality"]))


def fmt(ci: dict | None) -> str:
    return fmt_interval(ci, ".3f")  # a ratio's interval may be unbounded: ∞


def format_table(rows: list[dict], training: dict) -> str:
    """A markdown table: each value is the mean over held-out examples [95% bootstrap interval]."""
    names = ["sampler", "modality", "context", *(label for _, label in TABLE_METRICS), "real clip preferred (paired)",
             "own samples nearer the real clip", "recognition AUC"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        cells = [r["sampler"], r["modality"], f"{r['context']:g}", *(fmt(r[name]) for name, _ in TABLE_METRICS),
                 fmt(r["recognition_paired"]), fmt(r["recognition_generative"]), fmt(r["recognition_auc"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, values in training.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in values.items()))
    return "\n".join(lines)


# Semantic entropy and disagreement beside the likelihood baselines (probes/detection.py).
DETECTION_SCORES = ("semantic_entropy", "object_disagreement", "token_disagreement", "length_normalised_entropy",
                    "answer_nll", "answer_objects")


def detection_table(runs: list[Path]) -> str:
    """A markdown table per modality (image run, clip run) of the GPT's and the oracle's
    detection on object labels over every context: the answers' error rate and each score's
    AUROC [95% interval over examples] at predicting a hallucinating answer (0.5 = chance)."""
    names = ["modality", "sampler", "error rate", *DETECTION_SCORES]
    lines = ["Detection (AUROC at predicting a hallucinating answer, all contexts):",
             "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for run_dir, modality in zip(runs, ("image", "clip")):
        for row in read_json(run_dir / "summary.json").get("detection", []):
            if row["context"] == "all" and row["label"] == "objects":
                cells = [modality, "oracle" if row["reference"] else "GPT", fmt(row["error_rate"]),
                         *(fmt(row["scores"].get(s, {}).get("auroc")) for s in DETECTION_SCORES)]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 3 else "Detection: no rows (fewer than 3 samples per context)."
