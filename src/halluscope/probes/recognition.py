"""The recognition probe: can a model tell a real clip from its twin whose second half breaks
physics, even if it cannot generate the real one? Each clip's continuation after a shared
context is scored by teacher forcing; a model that recognizes the break finds the twin's
continuation less likely. Every comparison is paired: a real clip against its own twin.

    nll(x)   = -1/L Σ_{l > context} log p(x_l | x_<l)           (nats per token)
    paired   = 1/P Σ_pairs [nll(violation) > nll(real)] + ½ [nll(violation) = nll(real)]
    paired_accuracy_ci = the sign test: the share of the P' untied pairs, its exact
               (Clopper-Pearson) 95% interval and two-sided binomial p of ½ (also `paired_p`)
    gap      = 1/P Σ_pairs nll(violation) - nll(real), bootstrap interval, and `p`: the two-sided
               Wilcoxon signed-rank test (zero differences dropped before ranking)
    AUC      = P(nll(v) > nll(r)) + ½ P(nll(v) = nll(r)) over all (real, violation) clips,
               unpaired (Mann-Whitney): differences between clips can swamp the effect
    generative = 1/P Σ_pairs 1/N Σ_samples [mse(sample, real) < mse(sample, violation)]
               (+ ½ on ties): recognition's question asked of the model's own continuations, on
               the same pairs; 0.5 = its samples side with neither
    pmi(x)   = 1/L (log p(Y|C) - log p̂(Y)), log p̂(Y) = log 1/M Σ_m p(Y | C_m) over M other
               clips' real contexts (marginal_logprob): how much more likely the context makes
               Y than other contexts do, so a continuation simple under any context (a vanish)
               gains nothing. The paired figures on -pmi sit beside those on nll (`pmi`).
    by_window  the paired NLL figures on the tokens of each latent frame from the one holding the
               break on ("break+0", "break+1", ...) and of all of them ("from_break"), so a break
               in the last frame is not diluted; "unit u" per scored frame where the break is unknown
    control  the same figures for a lawful alternative with a similar pixel change (world twins:
               the same shape kicked at the same frame, VideoWorld.control), and
               `violation_vs_control`, the violation against it: a model that "recognizes" the
               control as often as the violation detects change, not physics

Every figure but the AUC is also given per violation kind (`by_kind`): a vanish removes
content and can lower the NLL where a teleport or a recolour adds surprise.

A twin shares its real clip's context pixels; its context tokens are encoded from the shown
pixels alone (`visible`, the default), so both are scored after the same context tokens, and
the summary says in how many pairs they differ (`context_differs`: 0 under `visible`; under
`full` a non-causal tokenizer lets the break leak into the context).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
from halluscope.gpt.base import TokenModel
from halluscope.probes.context import context_split, cut, encode_context, pixel_cut
from halluscope.probes.samplers import check_world_fits, world_from_folder, world_lines
from halluscope.probes.stats import (
    bootstrap_ci,
    interval,
    paired_difference,
    proportion_ci,
    resampled,
)


def roc_auc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative), ties counting one half: the area under the ROC
    curve of the score as a detector of positives (the Mann-Whitney U of the positives over
    the number of pairs)."""
    if len(negatives) == 0 or len(positives) == 0:
        raise UserError("the recognition probe needs at least one real clip and one violation")
    u = stats.mannwhitneyu(np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)).statistic
    return float(u / (len(negatives) * len(positives)))


def auc_ci(negatives: list[float], positives: list[float], seed: int = 0) -> dict:
    """The AUC of paired scores and its 95% percentile-bootstrap interval, resampling pairs
    (a real clip with its own twin) with replacement."""
    v = np.column_stack([negatives, positives]).astype(np.float64)
    draws = resampled(v, roc_auc, seed, vectorized=False) if len(v) > 1 else None
    return interval(roc_auc(negatives, positives), draws, len(v))


def roc_curve(negatives: list[float], positives: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every threshold, from (0, 0) to (1, 1)."""
    thresholds = np.unique(np.concatenate([negatives, positives]))[::-1]
    fpr = [0.0] + [float((np.asarray(negatives) >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((np.asarray(positives) >= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


@dataclass
class Pair:
    id: str  # the real clip's file
    real: torch.Tensor  # pixels, (3, T, H, W) or (3, H, W)
    violation: torch.Tensor
    kind: str = "unknown"  # teleport / vanish / recolor for world twins, else what the pairs file says
    control: torch.Tensor | None = None  # a lawful alternative with a similar change (world twins: a kick)
    frame: int | None = None  # the pixel frame (row, images) where the break starts, where known
    lawful: bool | None = None  # whether the control is lawful in its world (None: not known)


def world_pairs(data: str | os.PathLike, tokenizer: torch.nn.Module, limit: int | None) -> list[Pair]:
    """The (real, violation, kick control) triples of a world folder written with --violations."""
    world = world_from_folder(data)
    if world is None:
        raise UserError(f"{data} is not a world folder (no world.json); use --pairs for your own clips")
    check_world_fits(world, tokenizer, data)
    lines = world_lines(data)
    by_file = {m["file"]: m for m in lines}
    out = []
    for m in lines:
        if m.get("twin") in by_file and len(out) != limit:
            real, violation = by_file[m["twin"]], m["violation"]
            control, _ = world.control(real, violation)
            out.append(Pair(real["file"], world.render(real), world.render(m), violation["kind"], control,
                            violation["frame"], world.randomness > 0))
    if not out:
        raise UserError(f"{data} holds no violation twins; write the world with --violations")
    return out


def load_pairs(data: str | os.PathLike | None, pairs: str | os.PathLike | None, tokenizer: torch.nn.Module,
               limit: int | None = None) -> list[Pair]:
    """Real / violation pixel pairs: from a world folder written with --violations (each with
    its kick control and break frame), or a JSONL file of {"real": path, "violation": path[,
    "kind": name, "control": path, "frame": pixel frame of the break]} (paths relative to it)."""
    if (data is None) == (pairs is None):
        raise UserError("give exactly one of --data WORLD_DIR (written with --violations) or --pairs FILE.jsonl")
    if data is not None:
        return world_pairs(data, tokenizer, limit)
    path = Path(pairs)
    load = load_image if tokenizer.kind == "image" else lambda p, r: load_clip(p, r, tokenizer.frames)
    try:
        specs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"pairs file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON lines: {e}") from None
    out = []
    for k, spec in enumerate(specs[:limit]):
        if not isinstance(spec, dict) or not {"real", "violation"} <= spec.keys():
            raise UserError(f"{path} line {k + 1}: expected {{\"real\": path, \"violation\": path}}")
        frame = spec.get("frame")
        if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool) or frame < 0):
            raise UserError(f"{path} line {k + 1}: \"frame\" must be a whole number >= 0, got {frame!r}")
        real, violation = (load(path.parent / spec[name], tokenizer.resolution) for name in ("real", "violation"))
        if frame is not None and frame >= real.shape[1]:  # the break must lie within the rows / frames
            raise UserError(f"{path} line {k + 1}: \"frame\" {frame} is past the last of {real.shape[1]}")
        control = load(path.parent / spec["control"], tokenizer.resolution) if "control" in spec else None
        out.append(Pair(spec["real"], real, violation, str(spec.get("kind", "unknown")), control, frame))
    return out


@torch.no_grad()
def marginal_logprob(gpt: TokenModel, contexts: torch.Tensor, continuations: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The model's marginal log p(Y) (nats, summed over Y's tokens) of each continuation Y
    (B, L_y), estimated in place: log 1/M Σ_m p(Y | C_m) over its M contexts (B, M, n_ctx), each
    Y scored right after C_m as the probe scores it after its own context. With C_m other real
    examples' contexts, encoded as the probe encodes contexts (probes/context.py), this is
    log E_C p(Y | C) = log p(Y) under the model, without moving Y from its place in the grid.
    By Jensen the estimate is low on average for finite M (so a PMI built on it is high) and
    consistent as M grows. One function on purpose: the redundancy probe's H(Y_k) needs the
    same estimator (issue 22, item 2); the two should be merged into one.
    Any object with `score(tokens, start)` -> {"logprob": (B, L - start)} will do for gpt."""
    b, m, n_ctx = contexts.shape
    seqs = torch.cat([contexts, continuations[:, None].expand(-1, m, -1)], 2).flatten(0, 1)  # (B·M, n_ctx + L_y)
    logp = torch.cat([gpt.score(chunk, n_ctx)["logprob"].double().sum(1) for chunk in seqs.split(batch)])
    return torch.logsumexp(logp.view(b, m), 1) - math.log(m)  # (B,)


@torch.no_grad()
def encode_pair(tokenizer: torch.nn.Module, pair: Pair, units: int, encoding: str,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(context tokens (k, n_ctx), whole sequences (k, L)) of the real clip, its violating twin
    and, where there is one, its control (k = 2 or 3), each after its own encoded context."""
    x = torch.stack([pair.real, pair.violation, *([] if pair.control is None else [pair.control])]).to(device)
    given = encode_context(tokenizer, x, units, encoding)  # (k, n_ctx)
    return given, torch.cat([given, tokenizer.encode(x).flatten(1)[:, given.shape[1]:]], 1)


@torch.no_grad()
def recognition(gpt: TokenModel, tokenizer: torch.nn.Module, pairs: list[Pair], context: float, encoding: str = "visible",
                samples: int = 8, seed: int = 0, marginal_contexts: int = 8) -> tuple[list[dict], dict]:
    """Per-pair records and the summary for one GPT: the paired figures (paired accuracy with
    its exact interval, NLL gap with the Wilcoxon test), AUC, the share of pairs whose context
    tokens differ, the generative two-alternative test on the same pairs (the share of the
    GPT's own `samples` continuations closer in pixels to the real continuation than to the
    violating one, ties ½; 0 samples: not run), the paired figures on PMI (its marginal over
    `marginal_contexts` other pairs' real contexts; 0: not run), per window after the break
    and for the controls — overall and per violation kind."""
    device = gpt.device
    grid = tuple(tokenizer.grid)
    units, n_ctx = context_split(grid, context)
    generator = torch.Generator(device).manual_seed(seed)
    encoded = [encode_pair(tokenizer, pair, units, encoding, device) for pair in pairs]
    m = min(marginal_contexts, len(pairs) - 1)
    records = []
    for i, (pair, (given, tokens)) in enumerate(tqdm(list(zip(pairs, encoded)), desc="scoring pairs", unit="pair")):
        logprob = gpt.score(tokens, n_ctx)["logprob"].double()  # (k, L - n_ctx)
        others = torch.stack([encoded[(i + 1 + j) % len(pairs)][0][0] for j in range(m)]) if m else None  # (m, n_ctx)
        pmi = ((logprob.sum(1) - marginal_logprob(gpt, others.expand(len(tokens), -1, -1), tokens[:, n_ctx:]))
               / logprob.shape[1]).tolist() if m else None
        axis, _ = pixel_cut(pair.real, grid, units)
        records.append({"pair": pair.id, "kind": pair.kind, "context": context, "context_encoding": encoding,
                        **scores(logprob, pmi, math.prod(grid[1:])), "first_unit": units,
                        "break_unit": None if pair.frame is None else pair.frame * grid[0] // pair.real.shape[axis],
                        "context_differs": bool((given[0] != given[1]).any()), "marginal_contexts": m,
                        **changes(pair, grid, units),
                        "generative": closer_to_real(gpt, tokenizer, torch.stack([pair.real, pair.violation]).to(device),
                                                     tokens[0, :n_ctx], units, samples, generator)
                        if samples else None})
    summary = {"pairs": len(records), "context": context, "context_encoding": encoding, "samples": samples,
               "marginal_contexts": m, "context_differs": float(np.mean([r["context_differs"] for r in records])),
               **figures(records),
               "by_kind": {kind: figures([r for r in records if r["kind"] == kind], auc=False)
                           for kind in sorted({r["kind"] for r in records})}}
    return records, summary


NAMES = ("real", "violation", "control")  # the rows of a pair's sequences, in encode_pair's order


def scores(logprob: torch.Tensor, pmi: list[float] | None, per_unit: int) -> dict:
    """A pair's record fields from its continuations' token logprobs (k, L_y): nll_NAME (nats
    per token), unit_nll_NAME (per scored row / latent frame), pmi_NAME (or None), gap."""
    nll = (-logprob.mean(1)).tolist()
    unit = (-logprob.view(len(logprob), -1, per_unit).mean(2)).tolist()  # (k, scored units)
    out = {"gap": nll[1] - nll[0]}
    for k, name in enumerate(NAMES[:len(logprob)]):
        out |= {f"nll_{name}": nll[k], f"unit_nll_{name}": unit[k], f"pmi_{name}": None if pmi is None else pmi[k]}
    return out


def changes(pair: Pair, grid: tuple[int, ...], units: int) -> dict:
    """How much the violation and the control change the real continuation's pixels (MSE after
    the cut), so the control's "similar pixel change" can be checked."""
    real = cut(pair.real, grid, units)
    out = {"change_violation": float(((cut(pair.violation, grid, units) - real) ** 2).mean())}
    if pair.control is not None:
        out |= {"change_control": float(((cut(pair.control, grid, units) - real) ** 2).mean()),
                "control_lawful": pair.lawful}
    return out


def paired_figures(real: list[float], other: list[float]) -> dict:
    """Paired figures of per-pair surprises (higher: less likely; NLL, or -PMI) of real
    continuations and their alternatives: paired_accuracy, the share of pairs where the
    alternative's is higher, ties ½ (a scorer that cannot tell gives 0.5, as the AUC does);
    paired_accuracy_ci, the sign test's share over the pairs whose surprises differ with its
    exact (Clopper-Pearson) interval and binomial `p` (= paired_p); ties; and gap =
    mean(other - real) with its bootstrap interval and `p`, the two-sided Wilcoxon signed-rank
    test (zero differences dropped, as the sign test drops ties)."""
    d = np.asarray(other, dtype=np.float64) - np.asarray(real, dtype=np.float64)
    preferred, ties = int((d > 0).sum()), int((d == 0).sum())
    untied = proportion_ci(preferred, len(d) - ties)
    return {"pairs": len(d), "paired_accuracy": (preferred + 0.5 * ties) / len(d), "paired_p": untied["p"],
            "paired_accuracy_ci": untied, "ties": ties, "gap": paired_difference(other, real)}


def column(records: list[dict], key: str, sign: float = 1.0) -> list[float] | None:
    """sign * record[key] of every record, or None where any lacks it."""
    values = [r.get(key) for r in records]
    return None if any(v is None for v in values) else [sign * v for v in values]


def versus(records: list[dict], other: str) -> dict | None:
    """The paired figures of the real continuation against `other` (violation / control) on
    NLL, with those on PMI (surprise -pmi, so gap = pmi(real) - pmi(other)) under "pmi"."""
    nll = column(records, f"nll_{other}")
    if nll is None:
        return None
    pmi_real, pmi_other = column(records, "pmi_real", -1), column(records, f"pmi_{other}", -1)
    return {**paired_figures(column(records, "nll_real"), nll),
            "pmi": None if pmi_real is None or pmi_other is None else paired_figures(pmi_real, pmi_other)}


def windows(record: dict, name: str) -> dict[str, float]:
    """Continuation `name`'s NLL (nats per token) in each window of one pair: "break+d", the
    d-th row / latent frame from the one holding the break, and "from_break", all of them;
    "unit u" per scored one where the break is unknown."""
    unit, first, b = record[f"unit_nll_{name}"], record["first_unit"], record["break_unit"]
    if b is None:
        return {f"unit {first + j}": v for j, v in enumerate(unit)}
    after = {f"break+{first + j - b}": v for j, v in enumerate(unit) if first + j >= b}
    return {**after, "from_break": float(np.mean(list(after.values())))}


def window_order(key: str) -> tuple[int, int]:
    """"break+d" / "unit u" by their number, "from_break" last."""
    return (1, 0) if key == "from_break" else (0, int(key.replace("+", " ").split()[-1]))


def window_figures(records: list[dict]) -> dict:
    """Per window, the paired NLL figures of real against violation, and against the control
    under "control" (None where a pair has no control)."""
    per_pair = [{name: windows(r, name) for name in NAMES if f"unit_nll_{name}" in r} for r in records]
    out = {}
    for key in sorted({k for w in per_pair for k in w["real"]}, key=window_order):
        rows = [w for w in per_pair if key in w["real"]]
        real = [w["real"][key] for w in rows]
        out[key] = {**paired_figures(real, [w["violation"][key] for w in rows]),
                    "control": paired_figures(real, [w["control"][key] for w in rows])
                    if all("control" in w for w in rows) else None}
    return out


def control_figures(records: list[dict]) -> dict | None:
    """The real continuation against its lawful control (NLL and PMI), the violation against the
    control (`violation_vs_control`: recognized when the violation is the less likely), the
    pixel changes of both, and whether the controls are lawful (None: mixed or unknown)."""
    control = versus(records, "control")
    if control is None:
        return None
    lawful = {r["control_lawful"] for r in records}
    return {**control, "lawful": lawful.pop() if len(lawful) == 1 else None,
            "violation_vs_control": paired_figures(column(records, "nll_control"), column(records, "nll_violation")),
            "change_violation": bootstrap_ci([r["change_violation"] for r in records]),
            "change_control": bootstrap_ci([r["change_control"] for r in records])}


def figures(records: list[dict], auc: bool = True) -> dict:
    """The recognition figures of some pairs: the paired ones on NLL (top level) and PMI
    (`pmi`), the generative test, the control, per window; the AUC and the NLL means with
    `auc`. Records without PMI, controls or unit NLLs leave those out (None / {})."""
    real, bad = column(records, "nll_real"), column(records, "nll_violation")
    out = {**versus(records, "violation"), "generative_accuracy": bootstrap_ci([r.get("generative") for r in records]),
           "control": control_figures(records),
           "by_window": window_figures(records) if all("unit_nll_real" in r for r in records) else {}}
    if auc:
        out |= {"auc": roc_auc(real, bad), "auc_ci": auc_ci(real, bad),
                "auc_p": float(stats.mannwhitneyu(bad, real).pvalue),
                "nll_real": bootstrap_ci(real), "nll_violation": bootstrap_ci(bad)}
    return out


def summary_line(name: str, summary: dict, encoding: str) -> str:
    """One GPT's recognition figures in one line, for the CLI."""
    def ci(f: dict, digits: int = 3) -> str:
        if f["mean"] is None:
            return "– (no pair tells them apart)"
        return f"{f['mean']:.{digits}f} [{f['lo']:.{digits}f}, {f['hi']:.{digits}f}]"
    gap, paired, drawn = summary["gap"], summary["paired_accuracy_ci"], summary["generative_accuracy"]
    p = "" if paired["p"] is None else f", sign test p {paired['p']:.2g}"
    wilcoxon = "" if gap["p"] is None else f" (Wilcoxon p {gap['p']:.2g})"
    text = (f"{name}: real clip preferred in {ci(paired)} of the {paired['n']} of {summary['pairs']} pairs whose NLLs "
            f"differ{p}; NLL gap {ci(gap, 4)} nats/token{wilcoxon}")
    if drawn["mean"] is not None:
        text += f"; its own samples nearer the real clip {ci(drawn)}"
    if summary["pmi"] is not None:
        text += f"; on PMI preferred in {ci(summary['pmi']['paired_accuracy_ci'])}"
    if "from_break" in summary["by_window"]:
        text += f"; from the break's frame on {ci(summary['by_window']['from_break']['paired_accuracy_ci'])}"
    control = summary["control"]
    if control is not None:
        lawful = {True: "lawful", False: "NOT lawful in this world", None: "lawfulness unknown"}[control["lawful"]]
        text += (f"; control ({lawful}) 'recognized' in {ci(control['paired_accuracy_ci'])}, violation less likely "
                 f"than control in {ci(control['violation_vs_control']['paired_accuracy_ci'])}")
    return (text + f"; AUC {summary['auc']:.3f}; context tokens differ in {summary['context_differs']:.0%} of pairs "
            f"({encoding} encoding)")


def closer_to_real(gpt: TokenModel, tokenizer: torch.nn.Module, x: torch.Tensor, given: torch.Tensor, units: int, n: int,
                   generator: torch.Generator) -> float:
    """Generation on a recognition pair x = (real, violation): the share of n continuations the
    GPT draws after the shared context tokens `given` whose decoded pixels after the cut are
    nearer (mean squared error) the real clip's than the violating twin's; ties count ½."""
    grid = tuple(tokenizer.grid)
    new, _ = gpt.generate(given[None], math.prod(grid) - len(given), n, generator=generator)
    drawn = cut(tokenizer.decode(torch.cat([given.expand(n, -1), new], 1).view(n, *grid)).clamp(-1, 1), grid, units)
    real, violation = (((drawn - truth) ** 2).flatten(1).mean(1) for truth in cut(x, grid, units))  # each (n,)
    return float(((real < violation).double() + 0.5 * (real == violation).double()).mean())
