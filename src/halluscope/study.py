"""`halluscope study PLAN.yaml --out DIR`: sweeps over worlds, models, training lengths and
seeds, as one resumable command with one report (issue 23).

A plan (YAML, see examples/study-small.yaml and docs/study.md) names world variants (a kind
and a list of values of its knob: the dose), training-set sizes, GPT presets, training
lengths, training seeds, contexts and samples. A cell is one world variant × training size ×
preset × seed. Each cell runs the demo's stages (halluscope.demo: world, tokenizer, tokens,
GPT) as `halluscope` commands with --resume, then probes every checkpoint it names:

    train-gpt to the longest length, keeping the checkpoints at the named lengths. They are
    points on ONE run's schedule (the cosine has not decayed at a shorter one), not separately
    trained shorter runs; a checkpoint folder is a complete GPT folder, which `probe --gpt` loads.
    probe (every checkpoint, the oracle, the marginal baseline) and, for clips, probe-recognition.

Each cell's figures go to DIR/cells/CELL.json (a second run with the same cell reuses it), then
DIR/study.json, DIR/study.html and DIR/plots/*.png hold the figures over seeds: the mean over
training seeds and its 95% Student-t interval over them. Under torchrun (WORLD_SIZE > 1) rank r
runs the cells of the world variants and training sizes i ≡ r (mod WORLD_SIZE) (they share
world folders and tokenizers), each command alone on the rank's own GPU, and rank 0 aggregates once
every cell's file exists."""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import numpy as np
import yaml
from scipy import stats as scipy_stats
from matplotlib.figure import Figure

from halluscope.data import ImageWorld, VideoWorld
from halluscope.data.answers import known_answer
from halluscope.demo import CLIP, IMAGE, DemoSize, last_logged, run, train_modality
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import load_gpt
from halluscope.gpt.config import PRESETS
from halluscope.io import atomic_path, read_json, read_jsonl, write_json
from halluscope.probes.context import context_split
from halluscope.probes.stats import empty, fmt_interval, interval

KNOBS = {"image": "dependence", "clip": "randomness"}  # each world class's redundancy knob
MODALITIES = {"image": IMAGE, "clip": CLIP}
SKILL = "normalised_skill_objects_invented_vs_marginal"  # 1: as few invented objects as the oracle; 0: the marginal's
SKILL_LEVEL = 0.5  # "context needed": the smallest context whose mean skill (over seeds) reaches this
FIGURES = ("objects_invented", SKILL, "match_mean", "diversity")  # per sampler and context
IMAGE_DOWNSAMPLE = 4  # pixels per token side of the tiny image tokenizer (three levels, ch_mult (1, 1, 2))
MIN_KEPT = 0.5  # an object hypothesis needs a tokenizer that keeps at least this share of the objects
POLL_S = 5.0  # rank 0's wait between looks for the other ranks' cells


# ----------------------------------------------------------------------------- the plan


@dataclass
class WorldPlan:
    kind: str  # "image" | "clip"
    values: list[float]  # the knob's values (KNOBS[kind]): the dose
    size: int = 32
    frames: int = 8  # clips only
    tokenizer_steps: int = 100
    downsample: str = ""  # clips only: "T,H,W" pixels per token; "" = the demo's (4,8,8)


@dataclass
class Plan:
    worlds: list[WorldPlan]
    train: list[int]  # training examples (one world per size)
    heldout: int  # held-out examples: the probes' sample size
    presets: list[str]
    steps: list[int]  # training lengths: checkpoints of one run to the longest
    seeds: list[int]
    contexts: list[float]
    samples: int  # continuations per example and context


@dataclass(frozen=True)
class Cell:
    kind: str
    knob: float
    size: int
    frames: int
    tokenizer_steps: int
    train: int
    preset: str
    seed: int
    downsample: str = ""  # clips: "T,H,W", "" the demo's

    @property
    def variant(self) -> str:
        frames = f"x{self.frames}" if self.kind == "clip" else ""
        tokens = f"-d{self.downsample.replace(',', 'x')}" if self.downsample else ""
        return f"{self.kind}-{KNOBS[self.kind]}{self.knob:g}-s{self.size}{frames}{tokens}"

    @property
    def name(self) -> str:
        return f"{self.variant}-n{self.train}-{self.preset}-seed{self.seed}"

    def world(self) -> ImageWorld | VideoWorld:
        if self.kind == "clip":
            return VideoWorld(size=self.size, frames=self.frames, randomness=self.knob)
        return ImageWorld(size=self.size, dependence=self.knob)


def fields_of(cls: type, raw: object, where: str) -> dict:
    """raw as a mapping of cls's fields: one UserError naming an unknown or missing key."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    return dict(raw)


def numbers(raw: object, key: str, kind: type, least: float | None = None) -> list:
    """A non-empty list of numbers (a lone number is a list of one), each >= least."""
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"plan key {key!r} must be a non-empty list of numbers, got {raw!r}")
    if kind is int and not all(float(v).is_integer() for v in values):
        raise UserError(f"plan key {key!r} must hold whole numbers, got {raw!r}")
    if least is not None and min(values) < least:
        raise UserError(f"plan key {key!r} must hold values of at least {least:g}, got {raw!r}")
    if len(set(values)) != len(values):
        raise UserError(f"plan key {key!r} repeats a value: {raw!r}")
    return [kind(v) for v in values]


def parse_world(raw: object, i: int) -> WorldPlan:
    where = f"worlds[{i}]"
    if not isinstance(raw, dict) or raw.get("kind") not in KNOBS:
        kind = raw.get("kind") if isinstance(raw, dict) else raw
        raise UserError(f"{where}.kind must be one of {', '.join(KNOBS)}, got {kind!r}")
    knob = KNOBS[raw["kind"]]
    other = next((k for k in KNOBS.values() if k != knob and k in raw), None)
    if other:
        raise UserError(f"{where}: unknown key {other!r} for a {raw['kind']} world (its knob is {knob!r})")
    for key in ("frames", "downsample") if raw["kind"] == "image" else ():
        if key in raw:
            raise UserError(f"{where}: unknown key {key!r} for an image world")
    if "values" in raw:
        raise UserError(f"{where}: unknown key 'values'; name the knob: {knob}: [...]")
    d = {("values" if k == knob else k): v for k, v in raw.items()}
    d.setdefault("values", [0.0])  # no knob named: the world's default only
    w = WorldPlan(**fields_of(WorldPlan, d, where))
    w.values = numbers(w.values, f"{where}.{knob}", float, 0.0)
    if max(w.values) > 1:
        raise UserError(f"plan key '{where}.{knob}' is a probability in [0, 1], got {w.values}")
    w.size, w.frames, w.tokenizer_steps = (numbers(getattr(w, k), f"{where}.{k}", int, 1)[0]
                                           for k in ("size", "frames", "tokenizer_steps"))
    try:
        Cell(w.kind, w.values[0], w.size, w.frames, 1, 1, "tiny", 0).world()  # the world's own checks
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    w.downsample = parse_downsample(w.downsample, where) if w.kind == "clip" else ""
    dt, dh, _ = clip_downsample(w.downsample) if w.kind == "clip" else (1, IMAGE_DOWNSAMPLE, 1)
    if w.size % dh or w.frames % dt:
        raise UserError(f"{where}: the {w.kind} tokenizer needs size a multiple of {dh}"
                        + (f" and frames a multiple of {dt}" if w.kind == "clip" else "") + f", got size {w.size}"
                        + (f", frames {w.frames}" if w.kind == "clip" else ""))
    return w


def parse_downsample(raw: object, where: str) -> str:
    """A clip tokenizer's "T,H,W" pixels per token (each a power of two, as the 3D VQGAN's
    strides are), normalised; "" keeps the demo's."""
    if raw in ("", None):
        return ""
    parts = str(raw).replace(" ", "").split(",")
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 and int(p) & (int(p) - 1) == 0 for p in parts):
        raise UserError(f"{where}.downsample must be three powers of two 'T,H,W', got {raw!r}")
    return ",".join(str(int(p)) for p in parts)


def clip_downsample(downsample: str = "") -> tuple[int, ...]:
    """(frames, rows, columns) per token of a clip tokenizer: the plan's, else the demo's."""
    flags = CLIP.tokenizer_flags
    return tuple(int(v) for v in (downsample or flags[flags.index("--downsample") + 1]).split(","))


def clip_units(frames: int, downsample: str = "") -> int:
    """Latent frames of a clip world under the plan's clip tokenizer."""
    return frames // clip_downsample(downsample)[0]


def parse_plan(raw: object) -> Plan:
    """The plan, every key checked before anything runs."""
    d = fields_of(Plan, raw, "plan")
    if not isinstance(d["worlds"], list) or not d["worlds"]:
        raise UserError("plan key 'worlds' must be a non-empty list of worlds")
    presets = d["presets"] if isinstance(d["presets"], list) else [d["presets"]]
    bad = next((p for p in presets if p not in PRESETS), None) if presets else "(none)"
    if bad is not None:
        raise UserError(f"plan key 'presets': unknown preset {bad!r}; choose among {', '.join(PRESETS)}")
    contexts = numbers(d["contexts"], "contexts", float)
    if not all(0 < c < 1 for c in contexts):
        raise UserError(f"plan key 'contexts' must hold fractions strictly between 0 and 1, got {d['contexts']!r}")
    worlds = [parse_world(w, i) for i, w in enumerate(d["worlds"])]
    for i, w in enumerate(worlds):
        for c in contexts if w.kind == "clip" else ():
            try:
                context_split((clip_units(w.frames, w.downsample), 1, 1), c)  # a clip grid: (t, h, w)
            except UserError as e:
                raise UserError(f"plan key 'contexts' for worlds[{i}] ({w.frames} frames): {e}") from None
    return Plan(worlds=worlds,
                train=numbers(d["train"], "train", int, 2), heldout=numbers(d["heldout"], "heldout", int, 2)[0],
                presets=list(presets), steps=sorted(numbers(d["steps"], "steps", int, 1)),
                seeds=numbers(d["seeds"], "seeds", int, 0), contexts=sorted(contexts),
                samples=numbers(d["samples"], "samples", int, 2)[0])


def read_plan(path: Path) -> Plan:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the plan {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"the plan {path} is not YAML: {str(e).splitlines()[0]}") from None
    return parse_plan(raw)


def cells(plan: Plan) -> list[Cell]:
    return [Cell(w.kind, v, w.size, w.frames, w.tokenizer_steps, n, p, s, w.downsample)
            for w in plan.worlds for v in w.values for n in plan.train for p in plan.presets for s in plan.seeds]


# ----------------------------------------------------------------------------- one cell


def gpt_flags(preset: str, steps: list[int]) -> tuple:
    """train-gpt's flags beyond the demo's: the longest length, a checkpoint (and a val loss)
    every gcd of the lengths, all of them kept, so each named length is a loadable GPT folder."""
    every = math.gcd(*steps)
    return "--preset", preset, "--steps", steps[-1], "--ckpt-every", every, "--eval-every", every, \
        "--keep", steps[-1] // every


def train_cell(out: Path, cell: Cell, plan: Plan) -> dict[str, Path]:
    """The demo's stages for one cell; the tokenizer is shared by the presets of a seed."""
    base = MODALITIES[cell.kind]
    shape = ("--resolution", str(cell.size), *(("--frames", str(cell.frames)) if cell.kind == "clip" else ()),
             *(("--downsample", cell.downsample) if cell.downsample else ()))  # after the demo's: argparse keeps the last
    m = dataclasses.replace(base, world=cell.world(), tokenizer_flags=(*base.tokenizer_flags, *shape))
    size = DemoSize(train=cell.train, heldout=plan.heldout, tokenizer_steps={m.name: cell.tokenizer_steps},
                    gpt_steps=plan.steps[-1], samples=plan.samples)
    return train_modality(out / "runs" / f"{cell.variant}-n{cell.train}", m, size, cell.seed,
                          gpt_name=f"gpt-{cell.preset}", gpt_flags=gpt_flags(cell.preset, plan.steps))


def checkpoint(gpt: Path, step: int) -> Path:
    return gpt / "checkpoints" / f"step_{step:08d}"


def probe_cell(out: Path, cell: Cell, plan: Plan, folders: dict[str, Path]) -> dict:
    """Probe every named checkpoint (and recognition for clips); return the cell's figures."""
    gpts = [checkpoint(folders["gpt"], s) for s in plan.steps]
    probe = out / "probes" / cell.name
    run("probe", *(a for g in gpts for a in ("--gpt", g)), "--oracle", "--baselines", "marginal",
        "--train-tokens", folders["tokens"], "--data", folders["heldout"],
        "--context", ",".join(map(str, plan.contexts)), "--samples", plan.samples, "--grids", 0,
        "--out", probe, "--resume", "--no-report")
    recognition = out / "recognition" / cell.name / "recognition.json"
    if cell.kind == "clip" and not recognition.is_file():  # probe-recognition has no --resume
        run("probe-recognition", *(a for g in gpts for a in ("--gpt", g)), "--data", folders["heldout"],
            "--samples", plan.samples, "--out", recognition.parent)
    return cell_figures(cell, plan, folders, read_json(probe / "summary.json", "probe summary")["groups"],
                        read_json(recognition, "recognition summary") if cell.kind == "clip" else {})


def mean_of(metric: dict | None) -> float | None:
    return None if not metric else metric.get("mean")


def val_loss_at(gpt: Path, step: int) -> float | None:
    """The validation loss logged at this step (None: none, or not finite; JSON has no NaN)."""
    loss = next((r["val_loss"] for r in read_jsonl(gpt / "metrics.jsonl")
                 if r.get("step") == step and r.get("val_loss") is not None), None)
    return loss if loss is not None and math.isfinite(loss) else None


def cell_figures(cell: Cell, plan: Plan, folders: dict[str, Path], groups: list[dict], recognition: dict) -> dict:
    """One cell's figures: per checkpoint its size, val loss, per-context GPT figures and
    recognition; per context the oracle's figures and the world's true conditional entropy."""
    def group(sampler: str, context: float) -> dict:
        return next(g for g in groups if g["sampler"] == sampler and g["context"] == context)

    def at(sampler: str, context: float) -> dict:
        return {f: mean_of(group(sampler, context)["metrics"].get(f)) for f in FIGURES}

    labels = {g["settings"].get("gpt"): g["sampler"] for g in groups}
    oracle = next(g["sampler"] for g in groups if g["settings"].get("gpt") == "oracle")
    models = {}
    for step in plan.steps:
        ckpt = checkpoint(folders["gpt"], step)
        label = next(v for k, v in labels.items() if k and Path(str(k)).name == ckpt.name)
        rec = recognition.get(str(ckpt), {})
        models[str(step)] = {"params": load_gpt(ckpt).num_params(), "val_loss": val_loss_at(folders["gpt"], step),
                             "contexts": {str(c): at(label, c) for c in plan.contexts},
                             "recognition_paired": mean_of(rec.get("paired_accuracy_ci")),
                             "recognition_generative": mean_of(rec.get("generative_accuracy"))}
    world, grid = cell.world(), read_json(folders["tokens"] / "manifest.json", "token manifest")["grid"]
    return {"cell": dataclasses.asdict(cell), "plan": plan_key(plan), "models": models,
            "oracle": {str(c): {**at(oracle, c), "true_entropy_bits": true_entropy(world, grid, c),
                                "state_differs": mean_of(group(oracle, c)["metrics"].get("sampler_state_differs"))}
                       for c in plan.contexts},
            "tokenizer_psnr": finite(last_logged(folders["tokenizer"], "psnr")),
            "tokenizer_objects_kept": objects_kept(next(g for g in groups if g["sampler"] == oracle))}


def objects_kept(group: dict) -> float | None:
    """The share of the truth's objects its reconstruction keeps: near 0, every object figure
    is 0 for any sampler (nothing left to invent or drop) and says nothing."""
    truth, dropped = (mean_of(group["metrics"].get(k)) for k in ("objects_truth", "tokenizer_objects_dropped"))
    return None if not truth or dropped is None else 1 - dropped / truth


def finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def true_entropy(world: ImageWorld | VideoWorld, grid: list[int], context: float) -> float | None:
    """known_answer's conditional entropy (bits) of the continuation after this context, which
    the token grid rounds to whole rows / latent frames; None where it has no closed form."""
    length = world.frames if isinstance(world, VideoWorld) else world.size
    keep, _ = context_split(tuple(grid), context)
    bits = known_answer(world, keep * length // grid[0])["conditional_entropy_bits"]
    return None if bits is None else bits + 0.0  # no -0.0 in the report


def plan_key(plan: Plan) -> dict:
    """What a cell's figures depend on beyond the cell itself: a changed plan reprobes."""
    return {"heldout": plan.heldout, "steps": plan.steps, "contexts": plan.contexts, "samples": plan.samples}


def run_cell(out: Path, cell: Cell, plan: Plan) -> dict:
    """The cell's figures, reused from DIR/cells/ when the plan asks the same of it."""
    done = out / "cells" / f"{cell.name}.json"
    if done.is_file():
        figures = read_json(done, "cell figures")
        if figures["plan"] == plan_key(plan):
            return figures
        for stale in (out / "probes" / cell.name, out / "recognition" / cell.name):  # asked with other settings
            shutil.rmtree(stale, ignore_errors=True)
    figures = probe_cell(out, cell, plan, train_cell(out, cell, plan))
    write_json(done, figures)
    return figures


# ----------------------------------------------------------------------------- over seeds


def over_seeds(values: list[float | None]) -> dict:
    """Mean over training seeds and its 95% Student-t interval over them (n: seeds with a value).
    Seeds are few (2 or 3): a bootstrap over them would give [min, max] and call that 95%; t with
    n − 1 degrees of freedom is honestly wide (±12.7 s/√2 for two seeds)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return empty()
    if len(v) == 1:
        return interval(float(v[0]), None, 1)
    half = float(scipy_stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "n": len(v)}


def context_needed(contexts: dict[str, dict]) -> float | None:
    """The smallest context whose skill reaches SKILL_LEVEL; None if none does."""
    return next((float(c) for c, f in sorted(contexts.items(), key=lambda x: float(x[0]))
                 if f[SKILL] is not None and f[SKILL] >= SKILL_LEVEL), None)


def model_rows(results: list[dict], plan: Plan) -> list[dict]:
    """One row per (world variant, training size, preset, training length): its figures over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["cell"]
        groups.setdefault((Cell(**c).variant, c["kind"], c["knob"], c["train"], c["preset"]), []).append(r)
    rows = []
    for (variant, kind, knob, train, preset), seeds in groups.items():
        for step in map(str, plan.steps):
            per_seed = [s["models"][step] for s in seeds]
            rows.append({"variant": variant, "kind": kind, "knob": knob, "train": train, "preset": preset,
                         "step": int(step), "seeds": [s["cell"]["seed"] for s in seeds],
                         "tokenizer_objects_kept": over_seeds([s.get("tokenizer_objects_kept") for s in seeds]),
                         "params": per_seed[0]["params"], "val_loss": over_seeds([m["val_loss"] for m in per_seed]),
                         "context_needed": over_seeds([context_needed(m["contexts"]) for m in per_seed]),
                         "contexts": {c: {f: over_seeds([m["contexts"][c][f] for m in per_seed]) for f in FIGURES}
                                      for c in per_seed[0]["contexts"]},
                         **{k: over_seeds([m[k] for m in per_seed]) for k in ("recognition_paired",
                                                                                "recognition_generative")},
                         "by_seed": per_seed})
    return rows


def oracle_rows(results: list[dict]) -> list[dict]:
    """One row per world variant: the oracle's figures over seeds (its tokenizer is the seed's),
    the world's true conditional entropy, and (clips) how often the oracle's posterior state at
    the cut differs from the recorded one: the entropy is given that state, a lower bound on the
    entropy given the context's pixels, which is what the oracle samples from."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(Cell(**r["cell"]).variant, []).append(r)
    return [{"variant": v, "kind": rs[0]["cell"]["kind"], "knob": rs[0]["cell"]["knob"],
             "contexts": {c: {**{f: over_seeds([r["oracle"][c][f] for r in rs]) for f in (*FIGURES, "state_differs")},
                              "true_entropy_bits": rs[0]["oracle"][c]["true_entropy_bits"]}
                          for c in rs[0]["oracle"]}}
            for v, rs in groups.items()]


# ----------------------------------------------------------------------------- hypotheses


def verdict(ci: dict, expect: int) -> str:
    """What an interval of a difference says of a predicted sign (+1 / −1)."""
    lo, hi = ci.get("lo"), ci.get("hi")
    if ci.get("mean") is None or lo is None or hi is None or ci["n"] < 2:
        return "not testable (fewer than two seeds with a value)"
    if lo * expect > 0 and hi * expect > 0:
        return "supported"
    if lo * expect < 0 and hi * expect < 0:
        return "contradicted"
    return "not supported (the interval holds 0)"


def finding(claim: str, what: str, ci: dict, expect: int, kept: dict | None = None) -> dict:
    """A hypothesis's figure and verdict; an object figure (with `kept`, the share of objects
    the tokenizer keeps) is not testable where the tokenizer keeps under MIN_KEPT of them."""
    v = verdict(ci, expect)
    if kept is not None and (kept.get("mean") is None or kept["mean"] < MIN_KEPT):
        share = "–" if kept.get("mean") is None else f"{kept['mean']:.2f}"
        v = f"not testable (the tokenizer's decodings keep {share} of the truth's objects)"
    return {"claim": claim, "figure": what, "interval": ci, "verdict": v,
            "sentence": f"{claim}: {what} = {fmt_interval(ci)} (mean over {ci['n']} seeds [95% t interval]): {v}."}


def hypotheses(models: list[dict], plan: Plan) -> list[dict]:
    """Each hypothesis tested as a per-seed difference with its interval over seeds."""
    final = [m for m in models if m["step"] == plan.steps[-1]]
    return [*more_context(final, plan), *knows_more(models, final, plan), *recognition_first(models, plan),
            *more_redundant(final, plan)]


def more_context(final: list[dict], plan: Plan) -> list[dict]:
    """More context, fewer invented objects: at the largest context minus at the smallest."""
    lo_c, hi_c = str(plan.contexts[0]), str(plan.contexts[-1])
    out = []
    for m in final if lo_c != hi_c else ():
        d = [diff(b["contexts"][hi_c]["objects_invented"], b["contexts"][lo_c]["objects_invented"])
             for b in m["by_seed"]]
        out.append(finding(f"more context, fewer invented objects ({m['variant']}, {m['preset']}, n={m['train']})",
                           f"objects invented at context {hi_c} minus at {lo_c}", over_seeds(d), -1,
                           m["tokenizer_objects_kept"]))
    return out


def knows_more(models: list[dict], final: list[dict], plan: Plan) -> list[dict]:
    """The more a model knows, the more context it needs: knowing more by longer training, a
    larger model (the plan's presets) or more training examples (its sizes)."""
    first, last = plan.steps[0], plan.steps[-1]
    early = {(m["variant"], m["train"], m["preset"]): m for m in models if m["step"] == first}
    out = [needs_more_context(m, early[(m["variant"], m["train"], m["preset"])],
                              f"{m['preset']}, n={m['train']}, step {first} → {last}")
           for m in (final if first != last else ())]
    for small, large in extremes(final, lambda m: (m["variant"], m["train"]), lambda m: m["params"]):
        out.append(needs_more_context(large, small, f"n={large['train']}, step {last}, {small['preset']} "
                                      f"({small['params']} parameters) → {large['preset']} ({large['params']})"))
    for few, many in extremes(final, lambda m: (m["variant"], m["preset"]), lambda m: m["train"]):
        out.append(needs_more_context(many, few, f"{many['preset']}, step {last}, "
                                      f"n={few['train']} → n={many['train']}"))
    return out


def recognition_first(models: list[dict], plan: Plan) -> list[dict]:
    """Recognition comes before generation (clips): paired minus generative at the shortest length."""
    first = plan.steps[0]
    return [finding(f"recognition comes before generation ({m['variant']}, {m['preset']}, n={m['train']}, "
                    f"step {first})", "paired recognition accuracy minus the generative two-alternative figure",
                    over_seeds([diff(b["recognition_paired"], b["recognition_generative"]) for b in m["by_seed"]]),
                    +1, m["tokenizer_objects_kept"])  # generation is read in decoded pixels
            for m in models if m["kind"] == "clip" and m["step"] == first]


def more_redundant(final: list[dict], plan: Plan) -> list[dict]:
    """A more redundant world, fewer invented objects: at the knob's two ends, paired by seed."""
    hi_c, out = str(plan.contexts[-1]), []
    for kind, expect in (("clip", +1), ("image", -1)):  # more randomness / less dependence: less redundant
        mine = [m for m in final if m["kind"] == kind]
        for low, high in extremes(mine, lambda m: (m["train"], m["preset"]), lambda m: m["knob"]):
            d = paired(high, low, lambda b: b["contexts"][hi_c]["objects_invented"])
            out.append(finding(f"a more redundant world, fewer invented objects ({kind}, {KNOBS[kind]} "
                               f"{low['knob']:g} → {high['knob']:g}, {low['preset']}, n={low['train']}, "
                               f"context {hi_c})", f"objects invented at {KNOBS[kind]} {high['knob']:g} minus at "
                               f"{low['knob']:g}", over_seeds(d), expect, worst_kept(low, high)))
    return out


def extremes(models: list[dict], group, order) -> list[tuple[dict, dict]]:
    """For each group of models (equal group(m), in sorted order) of more than one, its two
    ends by order(m): (least, most)."""
    ends = []
    for key in sorted({group(m) for m in models}):
        ranked = sorted((m for m in models if group(m) == key), key=order)
        if len(ranked) > 1:
            ends.append((ranked[0], ranked[-1]))
    return ends


def needs_more_context(more: dict, less: dict, change: str) -> dict:
    """"The more a model knows, the more context it needs", for two models of one world that
    differ in one way (`change`, from `less` to `more`): the difference of their context needed,
    paired by seed; their val losses say whether `more` does know more."""
    d = paired(more, less, lambda b: context_needed(b["contexts"]))
    return finding(f"the more a model knows, the more context it needs ({more['variant']}, {change}; val loss "
                   f"{fmt_interval(less['val_loss'])} → {fmt_interval(more['val_loss'])})",
                   f"context needed (skill ≥ {SKILL_LEVEL}) after the change minus before", over_seeds(d), +1,
                   worst_kept(more, less))  # the skill counts invented objects


def paired(a: dict, b: dict, value) -> list[float | None]:
    """value(a's figures) − value(b's) for each training seed both models have."""
    at, bt = (dict(zip(m["seeds"], m["by_seed"])) for m in (a, b))
    return [diff(value(at[s]), value(bt[s])) for s in sorted(set(at) & set(bt))]


def worst_kept(*models: dict) -> dict:
    """Of several models' tokenizer_objects_kept, the lowest (an unknown one first)."""
    return min((m["tokenizer_objects_kept"] for m in models), key=lambda k: -1 if k.get("mean") is None else k["mean"])


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# ----------------------------------------------------------------------------- figures


def errorbar(ax, xs: list[float], cis: list[dict], **kw) -> None:
    """Means with their intervals over seeds; a missing value is left out."""
    pts = [(x, c) for x, c in zip(xs, cis) if c.get("mean") is not None]
    if not pts:
        return
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1]["mean"] for p in pts], dtype=float)
    lo = np.array([p[1]["mean"] if p[1]["lo"] is None else p[1]["lo"] for p in pts], dtype=float)
    hi = np.array([p[1]["mean"] if p[1]["hi"] is None else p[1]["hi"] for p in pts], dtype=float)
    ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]).clip(0), capsize=3, marker="o", **kw)


def save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a reader sees the old plot or the new one, never half
        fig.savefig(tmp, format="png", dpi=90)
    return path


def label(m: dict) -> str:
    return f"{m['preset']} n={m['train']} step {m['step']}"


def plot_context(models: list[dict], oracles: list[dict], variant: str, path: Path) -> Path:
    """(a) objects invented and the normalised skill against context, one line per model."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, f in zip(axes, ("objects_invented", SKILL)):
        for m in (m for m in models if m["variant"] == variant):
            cs = sorted(m["contexts"], key=float)
            errorbar(ax, list(map(float, cs)), [m["contexts"][c][f] for c in cs], label=label(m))
        o = next(o for o in oracles if o["variant"] == variant)
        cs = sorted(o["contexts"], key=float)
        if f != SKILL:  # the oracle's skill is 1 by definition
            errorbar(ax, list(map(float, cs)), [o["contexts"][c][f] for c in cs], label="oracle", color="k", ls="--")
        ax.set(xlabel="context (fraction)", ylabel=f, title=variant)
    return save(fig, path)


def plot_context_needed(models: list[dict], path: Path) -> Path:
    """(b) context needed against val loss, model size and training examples."""
    fig = Figure(figsize=(13, 4))
    for ax, (x, name) in zip(fig.subplots(1, 3), ((lambda m: m["val_loss"]["mean"], "GPT val loss (nats/token)"),
                                                  (lambda m: m["params"], "parameters"),
                                                  (lambda m: m["train"], "training examples"))):
        for variant in sorted({m["variant"] for m in models}):
            mine = [m for m in models if m["variant"] == variant and x(m) is not None]
            errorbar(ax, [x(m) for m in mine], [m["context_needed"] for m in mine], label=variant, ls="none")
        ax.set(xlabel=name, ylabel=f"context needed (skill ≥ {SKILL_LEVEL})")
    return save(fig, path)


def plot_recognition(models: list[dict], path: Path) -> Path | None:
    """(c) paired recognition and the generative two-alternative figure against training steps."""
    clips = [m for m in models if m["kind"] == "clip"]
    if not clips:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key in sorted({(m["variant"], m["preset"], m["train"]) for m in clips}):
        mine = sorted((m for m in clips if (m["variant"], m["preset"], m["train"]) == key), key=lambda m: m["step"])
        name = f"{key[0]} {key[1]} n={key[2]}"
        errorbar(ax, [m["step"] for m in mine], [m["recognition_paired"] for m in mine], label=f"{name}: paired")
        errorbar(ax, [m["step"] for m in mine], [m["recognition_generative"] for m in mine], ls="--",
                 label=f"{name}: generative")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set(xlabel="training steps", ylabel="accuracy (real clip preferred)", ylim=(0, 1))
    return save(fig, path)


def plot_dose(models: list[dict], oracles: list[dict], kind: str, step: int, path: Path) -> Path | None:
    """(d) each figure against the world's knob: the GPTs' (longest training) beside the oracle's,
    and the world's true conditional entropy."""
    mine = [m for m in models if m["kind"] == kind and m["step"] == step]
    ors = sorted((o for o in oracles if o["kind"] == kind), key=lambda o: o["knob"])
    if len(ors) < 2:
        return None
    fig = Figure(figsize=(4 * (len(FIGURES) + 1), 4))
    axes = fig.subplots(1, len(FIGURES) + 1)
    contexts = sorted(ors[0]["contexts"], key=float)
    for ax, f in zip(axes, FIGURES):
        for key in sorted({(m["preset"], m["train"]) for m in mine}):
            ms = sorted((m for m in mine if (m["preset"], m["train"]) == key), key=lambda m: m["knob"])
            for c in contexts:
                errorbar(ax, [m["knob"] for m in ms], [m["contexts"][c][f] for m in ms],
                         label=f"GPT {key[0]} n={key[1]} ctx {c}")
        for c in contexts if f != SKILL else ():
            errorbar(ax, [o["knob"] for o in ors], [o["contexts"][c][f] for o in ors], ls="--",
                     label=f"oracle ctx {c}")
        ax.set(xlabel=KNOBS[kind], ylabel=f)
    for c in contexts:
        pts = [(o["knob"], o["contexts"][c]["true_entropy_bits"]) for o in ors]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            axes[-1].plot(*zip(*pts), marker="s", label=f"ctx {c}")
    axes[-1].set(xlabel=KNOBS[kind], ylabel="true conditional entropy (bits)", title="the world's known answer")
    return save(fig, path)


def bits(entropy: float | None) -> str:
    return "–" if entropy is None else f"{entropy:.3g}"


def write_html(study: dict, plots: list[Path], out: Path) -> Path:
    """study.html: the hypotheses' sentences, the figures and a table of every model."""
    rows = "".join(f"<tr><td>{html.escape(m['variant'])}</td><td>{m['preset']}</td><td>{m['train']}</td>"
                   f"<td>{m['step']}</td><td>{m['params']}</td><td>{fmt_interval(m['val_loss'])}</td>"
                   f"<td>{fmt_interval(m['context_needed'])}</td><td>{fmt_interval(m['recognition_paired'])}</td>"
                   f"<td>{fmt_interval(m['recognition_generative'])}</td></tr>" for m in study["models"])
    oracle = "".join(f"<tr><td>{html.escape(o['variant'])}</td><td>{c}</td>"
                     + "".join(f"<td>{fmt_interval(o['contexts'][c][f])}</td>"
                               for f in ("diversity", "match_mean", "state_differs"))
                     + f"<td>{bits(o['contexts'][c]['true_entropy_bits'])}</td></tr>"
                     for o in study["oracle"] for c in sorted(o["contexts"], key=float))
    found = "".join(f"<li>{html.escape(h['sentence'])}</li>" for h in study["hypotheses"])
    images = "".join(f'<p><img src="plots/{p.name}" alt="{p.stem}" style="max-width:100%"></p>' for p in plots)
    page = (f"<!doctype html><meta charset='utf-8'><title>halluscope study</title><h1>Study</h1>"
            f"<p>{len(study['cells'])} cells; every figure is the mean over training seeds [95% Student-t interval "
            f"over seeds]. Skill: {SKILL}; context needed: the smallest context whose skill reaches "
            f"{SKILL_LEVEL}.</p><h2>What the study found</h2><ul>{found}</ul><h2>Figures</h2>{images}"
            "<h2>Models</h2><table border=1><tr><th>world</th><th>preset</th><th>train</th><th>step</th>"
            "<th>parameters</th><th>val loss</th><th>context needed</th><th>recognition (paired)</th>"
            f"<th>generative</th></tr>{rows}</table>"
            "<h2>The oracle and the world's known answer</h2><p>The true entropy is the world's, given the "
            "shapes' state at the cut (data.answers.known_answer); the oracle samples the exact posterior "
            "given the context's pixels, which need not pin that state down (state differs: the share of "
            "its draws whose state at the cut is not the recorded one), so its diversity may exceed what "
            "the entropy alone implies.</p><table border=1><tr><th>world</th><th>context</th><th>diversity</th>"
            f"<th>match</th><th>state differs</th><th>true entropy (bits)</th></tr>{oracle}</table>")
    with atomic_path(out / "study.html") as tmp:
        tmp.write_text(page)
    return out / "study.html"


def aggregate(out: Path, plan: Plan, results: list[dict]) -> dict:
    """study.json, study.html and plots/ from every cell's figures."""
    models, oracles = model_rows(results, plan), oracle_rows(results)
    study = {"plan": dataclasses.asdict(plan), "skill": SKILL, "skill_level": SKILL_LEVEL, "cells": results,
             "models": models, "oracle": oracles, "hypotheses": hypotheses(models, plan)}
    variants = sorted({o["variant"] for o in oracles})
    plots = [plot_context(models, oracles, v, out / "plots" / f"context-{v}.png") for v in variants]
    plots += [plot_context_needed(models, out / "plots" / "context-needed.png"),
              plot_recognition(models, out / "plots" / "recognition.png"),
              *(plot_dose(models, oracles, k, plan.steps[-1], out / "plots" / f"dose-{k}.png") for k in KNOBS)]
    plots = [p for p in plots if p is not None]
    write_json(out / "study.json", study)
    write_html(study, plots, out)
    for h in study["hypotheses"]:
        print(h["sentence"])
    return study


# ----------------------------------------------------------------------------- the command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="train and probe a plan's sweep of worlds, models, lengths and seeds; "
                                            "one report with intervals over seeds (runs under torchrun)")
    p.add_argument("plan", help="the plan, a YAML file (see examples/study-small.yaml)")
    p.add_argument("--out", required=True, help="study folder (a second run reuses what is in it)")
    p.set_defaults(func=study_command)


def alone() -> tuple[int, int]:
    """(rank, world size) under torchrun; then forget the process group, so each cell's
    commands run alone (train-gpt would join it), each rank on its own GPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else None
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[local % len(devices)] if devices else str(local)
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                     "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)
    return rank, world


def study_command(args: argparse.Namespace) -> int:
    plan, out = read_plan(Path(args.plan)), Path(args.out)
    rank, world = alone()
    todo = cells(plan)
    t0 = time.perf_counter()
    mine = [run_cell(out, c, plan) for c in todo if share(c, plan) % world == rank]
    if rank != 0:
        return 0
    while world > 1 and not all(matching(out, c, plan) for c in todo):  # the other ranks' cells
        time.sleep(POLL_S)
    results = mine if world == 1 else [read_json(out / "cells" / f"{c.name}.json") for c in todo]
    aggregate(out, plan, results)
    print(f"study: {len(todo)} cells in {time.perf_counter() - t0:.0f} s; report {out / 'study.html'}")
    return 0


def share(cell: Cell, plan: Plan) -> int:
    """The index of the cell's world variant and training size: a rank runs all of one, since
    its cells share a world folder (and a seed's cells a tokenizer) that two writers would mix."""
    groups = list(dict.fromkeys((c.variant, c.train) for c in cells(plan)))
    return groups.index((cell.variant, cell.train))


def matching(out: Path, cell: Cell, plan: Plan) -> bool:
    done = out / "cells" / f"{cell.name}.json"
    return done.is_file() and read_json(done, "cell figures")["plan"] == plan_key(plan)
