"""The known answers as numbers: the oracle's figures on each world knob and context, printed
as the markdown table docs/probes.md quotes. Run from the repository root:

    .venv/bin/python tests/oracle_figures.py [EXAMPLES] [SAMPLES]

Worlds are 32 px (clips 8 frames), probed with the tests' fixed patch tokenizer, so the
figures are the worlds', not a trained tokenizer's."""

import sys
import tempfile
from pathlib import Path

import torch
from probe_helpers import PatchTokenizer

from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.probes.probe import ProbeConfig, run_probe, summarize
from halluscope.probes.samplers import OracleSampler, load_examples

CONTEXTS = [0.25, 0.5, 0.75]
COLUMNS = ["diversity", "pixel_diversity", "match_mean", "exact_rate", "objects_invented", "sampler_acceptance",
           "sampler_state_differs", "sampler_conditional_entropy_bits", "sampler_mutual_information_bits"]


def rows(world, knob: str, root: Path, examples: int, samples: int) -> list[str]:
    write_world(world, root / knob, examples)
    tokenizer = PatchTokenizer(world.kind, world.size, getattr(world, "frames", None))
    loaded, _ = load_examples(root / knob, tokenizer)
    records = run_probe(loaded, tokenizer, [OracleSampler(world, tokenizer)],
                        ProbeConfig(CONTEXTS, samples=samples), root / f"run-{knob}")
    out = []
    for row in summarize(records):
        cells = [fmt(row["metrics"].get(m)) for m in COLUMNS]
        out.append(f"| {world.kind} | {knob} | {row['context']} | " + " | ".join(cells) + " |")
    return out


def fmt(stats: dict | None) -> str:
    if not stats or stats["mean"] is None:
        return "–"
    if stats["lo"] is None or stats["lo"] == stats["hi"]:
        return f"{stats['mean']:.3g}"
    return f"{stats['mean']:.3g} [{stats['lo']:.3g}, {stats['hi']:.3g}]"


def main(examples: int = 16, samples: int = 8) -> None:
    torch.set_num_threads(1)
    worlds = [(ImageWorld(size=32, seed=0, dependence=p), f"dependence {p:g}") for p in (0.0, 0.5, 0.8, 1.0)]
    worlds += [(VideoWorld(size=32, frames=8, randomness=r, seed=0), f"randomness {r:g}") for r in (0.0, 0.1, 0.3, 1.0)]
    lines = ["| world | knob | context | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 3)]
    with tempfile.TemporaryDirectory() as root:
        for world, knob in worlds:
            lines += rows(world, knob, Path(root), examples, samples)
    print("\n".join(lines))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
