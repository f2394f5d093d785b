"""Probe commands: `halluscope sample` (one example, N continuations), `halluscope probe`
(batch continuation probe with sweeps, records, summaries, plots and a report),
`halluscope probe-report` (one report over several runs, e.g. images vs clips) and
`halluscope probe-recognition` (real clips vs physics-violating twins)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from halluscope.data import load_clip, load_image
from halluscope.errors import UserError
from halluscope.gpt.settings import SamplingSettings
from halluscope.io import atomic_path, read_json, read_jsonl, write_json
from halluscope.probes.baselines import make_baselines, parse_baselines, training_marginal
from halluscope.probes.context import ENCODINGS, context_split, decode_context
from halluscope.probes.memorization import COPY_THRESHOLD, Memory, encode_training, group_contrast, trained_ids
from halluscope.probes.probe import RECORDS, ProbeConfig, run_probe
from halluscope.probes.recognition import load_pairs, recognition, summary_line
from halluscope.probes.redundancy import redundancy_curve
from halluscope.probes.report import plot_roc, slug, write_redundancy, write_report
from halluscope.probes.sample import check_pair, continue_example, load_pair, write_continuations, write_panels
from halluscope.probes.samplers import GPTSampler, OracleSampler, load_examples
from halluscope.probes.target import check_target
from halluscope.probes.verdict import verdict_of_runs
from halluscope.tokenizers import load_tokenizer

ENCODING_HELP = ("how the context's tokens are encoded: visible (default) encodes only the pixels the model is "
                 "shown, cut out and encoded alone, so they cannot leak the answer; full encodes the whole example and "
                 "keeps its first rows / latent frames (the peers' practice: leaks when the tokenizer is not causal)")


CFG_HELP = ("classifier-free guidance scale s, logits u + s(c - u) from the condition c and the null condition u "
            "(default 1: no guidance; needs a GPT with a null condition, e.g. LlamaGen)")
COND_HELP = ("condition tokens of a class-conditional GPT, e.g. 3 or 3,7 (default: its null condition where it has "
             "one, i.e. unconditional sampling)")


def add_encoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context-encoding", choices=ENCODINGS, default="visible", help=ENCODING_HELP)


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    register_probe(subparsers)
    register_recognition(subparsers)
    register_redundancy(subparsers)
    p = subparsers.add_parser("sample", help="continue the first part of an image or clip with a GPT, N times")
    p.add_argument("--gpt", required=True, help="GPT folder (its config names its tokenizer)")
    p.add_argument("--input", required=True, help="an image file, or a video file for a clip tokenizer")
    p.add_argument("--context", type=float, default=0.5,
                   help="fraction of leading token rows (images) or latent frames (clips) given (default 0.5)")
    p.add_argument("--samples", type=int, default=8, help="continuations to draw (default 8)")
    p.add_argument("--out", required=True, help="output folder: samples.png / .gif / .mp4 and samples.json")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample only among the most likely tokens holding this probability")
    p.add_argument("--cfg-scale", type=float, default=1.0, help=CFG_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond", type=parse_ints, help=COND_HELP)
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the GPT config names)")
    p.add_argument("--video-format", choices=["gif", "mp4"], default="gif", help="sample grid format for clips")
    add_encoding(p)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(func=sample_command)


def sample_command(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise UserError(f"--samples must be at least 1, got {args.samples}")
    settings = SamplingSettings.from_flags(args.temperature, args.top_k, args.top_p, args.cfg_scale)  # before loading
    gpt, tokenizer = load_pair(args.gpt, args.tokenizer, args.device)
    if tokenizer.kind == "image":
        x = load_image(args.input, tokenizer.resolution)
    else:
        x = load_clip(args.input, tokenizer.resolution, tokenizer.frames)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    result = continue_example(gpt, tokenizer, x, args.context, args.samples, settings, generator, cond=args.cond,
                              progress=True, encoding=args.context_encoding)
    info = {"gpt": str(args.gpt), "tokenizer": str(args.tokenizer or gpt.config.tokenizer), "input": str(args.input),
            "context": args.context, "context_encoding": args.context_encoding, "samples": args.samples,
            **settings.as_dict(), "seed": args.seed, "cond": args.cond}
    paths = write_continuations(result, args.out, args.video_format, info)
    print(f"{args.samples} continuations of {result.context_units}/{result.grid[0]} "
          f"{'token rows' if len(result.grid) == 2 else 'latent frames'} "
          f"({result.context_tokens} tokens) -> {', '.join(str(p) for p in paths)}")
    return 0


def register_probe(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="continuation probe over a dataset: diversity and closeness to the truth "
                                             "vs context, sampling settings and models; records, summary, report")
    p.add_argument("--gpt", action="append", default=[], help="GPT folder; repeat to compare several models")
    p.add_argument("--oracle", action="store_true",
                   help="also (or only) sample from the world's own generative process (--data must be a world)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the first GPT names; needed for --oracle "
                                       "alone)")
    p.add_argument("--data", required=True, help="world folder (halluscope world ...) or image / video folder")
    p.add_argument("--context", type=parse_floats, default=[0.25, 0.5, 0.75],
                   help="context fractions, comma-separated (default 0.25,0.5,0.75)")
    p.add_argument("--samples", type=int, default=8, help="continuations per example and setting (default 8)")
    p.add_argument("--out", required=True, help="run folder (new, or an earlier one with --resume)")
    p.add_argument("--limit", type=int, help="use only the first N examples")
    p.add_argument("--batch", type=int, default=8, help="examples sampled together in one GPT call (default 8; it sets the seeds, so "
                                         "--resume needs the same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=parse_floats, default=[1.0], help="comma-separated sweep (default 1.0)")
    p.add_argument("--top-k", type=parse_ints, default=[0], help="comma-separated sweep; 0 = no top-k (default 0)")
    p.add_argument("--top-p", type=parse_floats, default=[1.0], help="comma-separated sweep; 1 = no top-p (default 1)")
    p.add_argument("--cfg-scale", type=parse_floats, default=[1.0], help="comma-separated sweep of the " + CFG_HELP)
    p.add_argument("--cond", type=parse_ints, help="the same condition for every example: " + COND_HELP)
    p.add_argument("--pool", type=int, default=16,
                   help="other examples' real continuations in each retrieval pool (default 16)")
    p.add_argument("--baselines", default="",
                   help="baseline samplers, comma-separated: copy-last (repeat the last context row / latent frame), "
                        "marginal (each position from the training tokens' marginal), shuffled (each GPT setting "
                        "and the oracle given another example's context)")
    p.add_argument("--baselines-at", type=parse_floats,
                   help="context fractions, some of --context, where the baselines run (default: every --context); "
                        "e.g. only where the headline figure is read")
    p.add_argument("--train-tokens", help="token cache of the training data, for the marginal baseline and the chance "
                                          "levels (default: the cache the first --gpt was trained on)")
    p.add_argument("--train-data", help="world or media folder the GPT was trained on: each sample's and the truth's "
                                        "nearest training continuation, the share of samples that copy one, and a "
                                        "second group of training examples probed like the held-out ones "
                                        "(docs/probes.md, Memorization); only the GPT's own training split is used "
                                        "where its token cache names it")
    p.add_argument("--train-probe", type=int,
                   help="training examples probed as the second group (default: as many as held-out examples; 0: none)")
    p.add_argument("--copy-threshold", type=float, default=COPY_THRESHOLD,
                   help=f"token Hamming share at or below which a continuation copies a training one "
                        f"(default {COPY_THRESHOLD})")
    p.add_argument("--target", type=float,
                   help="score only the last fraction of token rows / latent frames, at every context (like-for-like "
                        "comparisons across contexts); default: the whole continuation")
    p.add_argument("--grids", type=int, default=2, help="examples whose sample grids are written (default 2)")
    p.add_argument("--video-format", choices=["gif", "mp4"], default="gif", help="sample grid format for clips")
    p.add_argument("--resume", action="store_true", help="keep the records already in --out and add the missing ones")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip this run's report.html and plots (e.g. when probe-report makes one over several runs)")
    add_encoding(p)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(func=probe_command)

    r = subparsers.add_parser("probe-report", help="one report.html over several probe runs (e.g. images vs clips)")
    r.add_argument("runs", nargs="+", help="probe run folders")
    r.add_argument("--out", required=True, help="folder for report.html and plots/")
    r.add_argument("--context", type=float, default=0.5,
                   help="the context fraction the verdict tests, with image runs against clip runs (default 0.5)")
    r.add_argument("--image-sampler", help="the image runs' sampler the verdict tests (default: their plain GPT)")
    r.add_argument("--clip-sampler", help="the clip runs' sampler the verdict tests (default: their plain GPT)")
    r.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    """One report over the runs and, given image and clip runs, the pre-registered verdict
    (probes/verdict.py), printed and written to verdict.json."""
    runs = [Path(r) for r in args.runs]
    records = [read_jsonl(run / RECORDS) for run in runs]
    result = verdict_of_runs(records, args.context, args.image_sampler, args.clip_sampler)
    if result is not None:
        write_json(Path(args.out) / "verdict.json", result)
        print(f"{result['line']}\n{result['clip_against_oracle']}")
    print(write_report(runs, args.out, verdict=result, records=[r for run in records for r in run]))
    return 0


# What a resumed run must share with the run it continues, or its records would not be comparable.
RESUME_KEYS = ("data", "samples", "seed", "batch", "pool", "tokenizer", "context_encoding", "target", "train_tokens",
               "train_data", "copy_threshold")
# What runs written before a key existed did; any other key such a run lacks is not compared.
OLD_DEFAULTS = {"context_encoding": "full"}


def check_run_folder(out: Path, info: dict, resume: bool) -> None:
    previous = out / "run.json"
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty; pass --resume to continue that run, or choose a new folder")
        return
    if previous.is_file():
        before = read_json(previous, "run description")
        was = {k: before.get(k, OLD_DEFAULTS.get(k)) for k in RESUME_KEYS if k in before or k in OLD_DEFAULTS}
        changed = [k for k in was if was[k] != info[k]]
        if changed:
            raise UserError(f"--resume with a different {changed[0]} than the run in {out} "
                            f"({was[changed[0]]!r} there, {info[changed[0]]!r} now)")


def distributed() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier): under torchrun (WORLD_SIZE > 1) a gloo process group, which
    only synchronizes (records travel through files), so it works on CPU and GPU alike."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, lambda: None
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), world, torch.distributed.barrier


TRAINING_GROUP = "training-group"  # the run folder, inside --out, of the training examples' probe


def training_memory(args: argparse.Namespace, tokenizer: torch.nn.Module, heldout: int) \
        -> tuple[Memory, list, object]:
    """(the encoded training set, the training examples probed as the second group, the
    training folder's world or None) for --train-data: only the examples the first GPT
    trained on when its token cache says which."""
    if not 0 <= args.copy_threshold < 1:
        raise UserError(f"--copy-threshold is a share of tokens in [0, 1), got {args.copy_threshold}")
    if args.train_probe is not None and args.train_probe < 0:
        raise UserError(f"--train-probe must be at least 0, got {args.train_probe}")
    train, world = load_examples(args.train_data, tokenizer)
    used = trained_ids(args.gpt[0]) if args.gpt else None
    if used is not None and any(e.id in used for e in train):
        left = len(train)
        train = [e for e in train if e.id in used]
        print(f"--train-data: {len(train)} examples the GPT trained on ({left - len(train)} of its validation split or "
              "not in its token cache left out)")
    elif args.gpt:
        print("--train-data: the GPT's token cache does not say which examples it trained on; all of them count")
    if not train:
        raise UserError(f"--train-data {args.train_data} holds no examples")
    memory = Memory(encode_training(train, tokenizer, args.batch, str(args.train_data)), args.copy_threshold)
    count = heldout if args.train_probe is None else args.train_probe
    return memory, train[:count], world


def probe_command(args: argparse.Namespace) -> int:
    if not args.gpt and not args.oracle:
        raise UserError("give at least one --gpt DIR, or --oracle")
    for flag, value, least in [("--samples", args.samples, 1), ("--batch", args.batch, 1), ("--pool", args.pool, 0),
                               ("--grids", args.grids, 0)]:
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    baselines = parse_baselines(args.baselines)
    settings = [SamplingSettings.from_flags(*flags)
                for flags in itertools.product(args.temperature, args.top_k, args.top_p, args.cfg_scale)]
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun rank
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    if not args.gpt and args.tokenizer is None:
        raise UserError("name the tokenizer the metrics use: --tokenizer DIR")
    pairs = [load_pair(g, args.tokenizer, args.device) for g in args.gpt]
    tokenizer = pairs[0][1] if pairs else load_tokenizer(args.tokenizer).to(args.device)
    tokenizer_dir = args.tokenizer or pairs[0][0].config.tokenizer
    for c in args.context:
        context_split(tuple(tokenizer.grid), c)
    check_target(tuple(tokenizer.grid), args.context, args.target)
    names = [Path(g).name for g in args.gpt]
    labels = names if len(set(names)) == len(names) else [str(g) for g in args.gpt]
    samplers = []
    for (gpt, _), label in zip(pairs, labels):
        check_pair(gpt, tokenizer)  # every GPT is measured with the first one's tokenizer
        samplers += [GPTSampler(gpt, label, s, tuple(args.cond) if args.cond else None) for s in settings]
    examples, data_world = load_examples(args.data, tokenizer, args.limit)
    if args.oracle:
        if data_world is None:
            raise UserError(f"--oracle needs a world folder (with world.json); {args.data} is not one")
        samplers.append(OracleSampler(data_world, tokenizer))
    found = training_marginal(tokenizer, args.train_tokens, args.gpt[0] if args.gpt else None,
                              required="marginal" in baselines)
    marginal, train_tokens = found if found else (None, None)
    if marginal is None:
        print("no training tokens found (pass --train-tokens CACHE): no chance levels or marginal baseline")
    made = make_baselines(baselines, samplers, examples, tokenizer, marginal, args.context_encoding)
    samplers += made
    baselines_at = args.context if args.baselines_at is None else args.baselines_at
    if set(baselines_at) - set(args.context):
        raise UserError(f"--baselines-at {','.join(map(str, baselines_at))} must be among --context "
                        f"{','.join(map(str, args.context))}")
    memory, train_examples, train_world = training_memory(args, tokenizer, len(examples)) if args.train_data else (None, [], None)
    rank, ranks, barrier = distributed()
    out = Path(args.out)
    info = {"data": str(args.data), "tokenizer": str(tokenizer_dir), "gpt": [str(g) for g in args.gpt],
            "oracle": args.oracle, "contexts": args.context, "context_encoding": args.context_encoding,
            "samples": args.samples, "seed": args.seed, "batch": args.batch, "pool": args.pool,
            "samplers": [s.name for s in samplers], "examples": len(examples), "baselines": baselines,
            "train_tokens": train_tokens, "target": args.target, "baselines_at": baselines_at,
            **({"train_data": str(args.train_data), "copy_threshold": args.copy_threshold,
                "train_examples": len(memory.train.ids), "train_probe": len(train_examples)} if memory else {})}
    check_run_folder(out, info, args.resume)
    barrier()  # every rank has seen the folder as it was before rank 0 writes into it
    if rank == 0:
        write_json(out / "run.json", info)

    def keep_grid(k: int, context: float, sampler, pixels: torch.Tensor, truth) -> None:
        if k < args.grids:
            units, _ = context_split(tuple(truth.tokens.shape), context)
            seen = decode_context(tokenizer, truth.context[units][None], truth.pixels[None])[0]
            write_panels(seen, truth.pixels, truth.reconstruction, pixels,
                         out / "grids" / f"{k:03d}_context{context:g}_{slug(sampler.name)}", args.video_format)

    config = ProbeConfig(contexts=args.context, samples=args.samples, seed=args.seed, batch=args.batch, pool=args.pool,
                         encoding=args.context_encoding, target=args.target,
                         marginal=None if marginal is None else marginal.to(args.device),
                         only_at={s.name: list(baselines_at) for s in made}, memory=memory)
    records = run_probe(examples, tokenizer, samplers, config, out, resume=args.resume, on_samples=keep_grid,
                        shard=(rank, ranks), barrier=barrier)
    runs, both = [out], list(records)
    if train_examples:  # the second group: training examples, probed by the same samplers
        group = [s for s in samplers if s not in made and not isinstance(s, OracleSampler)]
        if args.oracle and train_world is not None:
            group.append(OracleSampler(train_world, tokenizer))
        group += make_baselines(baselines, group, train_examples, tokenizer, marginal, args.context_encoding)
        runs.append(out / TRAINING_GROUP)
        both += run_probe(train_examples, tokenizer, group, replace(config, memory=replace(memory, group="training")),
                             runs[-1], resume=args.resume, shard=(rank, ranks), barrier=barrier)
        if rank == 0:
            write_json(out / "memorization.json", {"threshold": args.copy_threshold, "training": memory.train.source,
                                                   "contrast": group_contrast(both)})
    if ranks > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    report = write_report(runs, out, info, records=both) if args.report else "no report.html (--no-report)"
    for context in args.context:
        leaks = [r["metrics"]["context_leak"] for r in records if r["context"] == context
                 and r["metrics"]["context_leak"] is not None]  # null: one example, nothing to swap in
        mean = f"{sum(leaks) / len(leaks):.4f}" if leaks else "unmeasured (one example)"
        print(f"context {context:g} ({args.context_encoding} encoding): context_leak {mean}")
    at = "" if baselines_at == args.context else f", baselines at {','.join(map(str, baselines_at))} only"
    print(f"{len(records)} records ({len(examples)} examples x {len(args.context)} contexts x {len(samplers)} "
          f"samplers{at}) -> {out / 'records.jsonl'}, summary.json, summary.csv, {report}")
    return 0


def register_recognition(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe-recognition",
                              help="score real clips against their physics-violating twins and lawful controls: "
                                   "paired accuracy, NLL gap (Wilcoxon), PMI, per frame after the break, ROC AUC")
    p.add_argument("--gpt", action="append", required=True, help="GPT folder; repeat to compare models")
    p.add_argument("--data", help="world folder written with --violations")
    p.add_argument("--pairs", help='JSONL file of {"real": path, "violation": path[, "kind": name, "control": path, '
                                   '"frame": break frame]} (paths relative to it)')
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the first GPT names)")
    p.add_argument("--context", type=float, default=0.5,
                   help="fraction shown to the model before scoring; the rest is scored (default 0.5)")
    p.add_argument("--out", required=True, help="folder for recognition.json / .jsonl and roc.png")
    p.add_argument("--limit", type=int, help="use only the first N pairs")
    p.add_argument("--samples", type=int, default=8,
                   help="continuations the GPT draws per pair for the generative two-alternative test (0: skip it)")
    p.add_argument("--seed", type=int, default=0, help="seed of those draws")
    p.add_argument("--marginal-contexts", type=int, default=8,
                   help="other pairs' real contexts M over which each continuation's marginal log p(Y) is averaged "
                        "for the PMI figures (0: skip them; at most pairs - 1 are used)")
    add_encoding(p)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(func=recognition_command)


def recognition_command(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.samples < 0:
        raise UserError(f"--samples must be at least 0, got {args.samples}")
    if args.marginal_contexts < 0:
        raise UserError(f"--marginal-contexts must be at least 0, got {args.marginal_contexts}")
    models = [load_pair(g, args.tokenizer, args.device) for g in args.gpt]
    tokenizer = models[0][1]
    context_split(tuple(tokenizer.grid), args.context)
    pairs = load_pairs(args.data, args.pairs, tokenizer, args.limit)
    out = Path(args.out)
    summaries, lines = {}, []
    for (gpt, _), name in zip(models, args.gpt):
        check_pair(gpt, tokenizer)  # every GPT is scored with the first one's tokenizer
        records, summary = recognition(gpt, tokenizer, pairs, args.context, args.context_encoding, args.samples,
                                       args.seed, args.marginal_contexts)
        summaries[name] = summary
        lines += [{"gpt": name, **r} for r in records]
        print(summary_line(name, summary, args.context_encoding))
    plot_roc({name: [r for r in lines if r["gpt"] == name] for name in args.gpt},
             {name: s["auc"] for name, s in summaries.items()}, out / "roc.png")
    with atomic_path(out / "recognition.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in lines))
    write_json(out / "recognition.json", summaries)
    return 0


def register_redundancy(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe-redundancy",
                              help="teacher-forced redundancy curve of one or more GPTs (e.g. an image GPT and a clip "
                                   "GPT) on one figure: for each context C_k, Y_k is every token after it, scored in "
                                   "place given C_k (H(Y_k|C_k)) and given M other examples' contexts (H(Y_k), the "
                                   "model's marginal by log-mean-exp); R(k) = 1 - H(Y_k|C_k)/H(Y_k), with the world's "
                                   "true R where it knows it")
    p.add_argument("--gpt", action="append", required=True, help="GPT folder (its config names its tokenizer); repeat")
    p.add_argument("--data", action="append", required=True,
                   help="world or media folder for the GPT given at the same place; repeat as often as --gpt")
    p.add_argument("--context", type=parse_floats, default=[0.25, 0.5, 0.75],
                   help="context fractions, one point each (and 0: none); default 0.25,0.5,0.75")
    p.add_argument("--marginal-contexts", type=int, default=16, metavar="M",
                   help="at most M other examples' contexts estimate each Y_k's marginal (at most examples - 1); "
                        "the curve also reports M = 1, 2, 4, ... to show whether it has converged (default 16)")
    p.add_argument("--limit", type=int, help="use only the first N examples of each folder")
    p.add_argument("--fps", type=float, help="frame rate of media clips, for bits per second (worlds know theirs)")
    p.add_argument("--out", required=True, help="folder for redundancy.json and redundancy.png")
    add_encoding(p)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(func=redundancy_command)


def redundancy_command(args: argparse.Namespace) -> int:
    if len(args.gpt) != len(args.data):
        raise UserError(f"give one --data per --gpt ({len(args.gpt)} --gpt, {len(args.data)} --data)")
    if args.marginal_contexts < 1:
        raise UserError(f"--marginal-contexts must be at least 1, got {args.marginal_contexts}")
    curves = {}
    for gpt_dir, data in zip(args.gpt, args.data):
        gpt, tokenizer = load_pair(gpt_dir, device=args.device)
        examples, world = load_examples(data, tokenizer, args.limit)
        fps = (examples[0].meta or {}).get("fps", args.fps)
        label = f"{tokenizer.kind}: {Path(gpt_dir).name}"
        curves[label] = curve = redundancy_curve(gpt, tokenizer, examples, args.context, fps,
                                                 encoding=args.context_encoding, world=world,
                                                 max_contexts=args.marginal_contexts)
        for row in curve:
            by_m = ", ".join(f"{step['contexts']}: {as_text(step['redundancy']['mean'])}"
                             for step in row["by_marginal_contexts"])
            known = f", world's R {as_text(row['world_redundancy'])}" if "world_redundancy" in row else ""
            print(f"{label} context {row['context']:g}: R(k) {as_text(row['redundancy']['mean'])} (by M {by_m})"
                  f"{known}, "
                  f"I {as_text(row['information_bits_per_token']['mean'])} bits/token, "
                  f"{as_text(row['information_bits_per_pixel']['mean'], 4)} bits/pixel")
    print(" ".join(str(p) for p in write_redundancy(curves, args.out)))
    return 0


def as_text(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"
