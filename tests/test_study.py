"""`halluscope study`: a CI-sized plan runs from another working directory, writes one entry per
cell with seed intervals, reuses everything on a second run, refuses bad plans in one line,
and the oracle's dose-response follows the world's known answer."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from halluscope import study as study_module
from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld
from halluscope.data.answers import known_answer
from halluscope.probes.context import context_split

PLAN = {"worlds": [{"kind": "clip", "size": 32, "frames": 8, "randomness": [0.0, 1.0], "tokenizer_steps": 2},
                   {"kind": "image", "size": 32, "dependence": [0.0, 1.0], "tokenizer_steps": 2}],
        "train": 16, "heldout": 3, "presets": ["tiny"], "steps": [2, 4], "seeds": [0, 1], "contexts": [0.5],
        "samples": 2}


def write_plan(folder, plan):
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)  # paths are the plan's and --out's, not the working directory's
        assert main(["study", write_plan(root, PLAN), "--out", str(root / "out")]) == 0
    return root


def test_one_entry_per_cell_with_seed_intervals(study):
    out = study / "out"
    assert (out / "study.html").stat().st_size > 1000
    assert {p.name for p in (out / "plots").iterdir()} >= {"context-needed.png", "recognition.png", "dose-clip.png"}
    s = json.loads((out / "study.json").read_text())
    assert sorted((c["cell"]["kind"], c["cell"]["knob"], c["cell"]["seed"]) for c in s["cells"]) == [
        (kind, knob, seed) for kind in ("clip", "image") for knob in (0, 1) for seed in (0, 1)]
    assert len(s["models"]) == 4 * 2  # world variants x training lengths
    for m in s["models"]:
        assert m["seeds"] == [0, 1] and m["params"] > 0
        loss = m["val_loss"]
        assert loss["n"] == 2 and loss["lo"] <= loss["mean"] <= loss["hi"]
        values = [b["val_loss"] for b in m["by_seed"]]
        half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / np.sqrt(2)  # Student t over two seeds
        assert loss["mean"] == pytest.approx(np.mean(values)) and loss["hi"] - loss["mean"] == pytest.approx(half)
        invented = m["contexts"]["0.5"]["objects_invented"]
        assert invented["n"] == 2 and invented["lo"] <= invented["mean"] <= invented["hi"]
    assert sum("more redundant world" in h["sentence"] and h["interval"]["n"] == 2 for h in s["hypotheses"]) == 2
    assert all(h["verdict"] in ("supported", "contradicted", "not supported (the interval holds 0)",
                                "not testable (fewer than two seeds with a value)")
               or h["verdict"].startswith("not testable (the tokenizer's decodings keep") for h in s["hypotheses"])


def test_object_verdicts_need_a_tokenizer_that_keeps_the_objects():
    """A difference whose interval excludes 0 is supported, one holding 0 is not, one the wrong
    way contradicted; an object figure through a tokenizer that erases the objects (every
    sampler then invents and drops nothing) is not testable, whatever its interval."""
    ci = study_module.over_seeds([-0.5, -0.6, -0.55])
    assert study_module.finding("c", "f", ci, -1)["verdict"] == "supported"
    assert study_module.finding("c", "f", ci, +1)["verdict"] == "contradicted"
    assert study_module.finding("c", "f", study_module.over_seeds([-0.5, 0.4]), -1)["verdict"].startswith("not supp")
    kept = study_module.over_seeds([0.9, 0.95])
    assert study_module.finding("c", "f", ci, -1, kept)["verdict"] == "supported"
    erased = study_module.finding("c", "f", study_module.over_seeds([0.0, 0.0]), -1, study_module.over_seeds([0.0, 0.1]))
    assert erased["verdict"] == "not testable (the tokenizer's decodings keep 0.05 of the truth's objects)"


def test_the_oracle_follows_the_worlds_known_answer(study):
    """At randomness 0 a clip's continuation is fixed by its context (true entropy 0): the
    oracle's samples never differ; at randomness 1 the world's entropy is positive. At
    dependence 1 an image's bottom half is its top's mirror: the oracle's halves never differ."""
    rows = json.loads((study / "out" / "study.json").read_text())["oracle"]
    oracle = {o["knob"]: o["contexts"]["0.5"] for o in rows if o["kind"] == "clip"}
    for knob, row in oracle.items():
        # 8 frames, 2 latent frames: context 0.5 keeps the first 4 pixel frames.
        assert row["true_entropy_bits"] == pytest.approx(
            known_answer(VideoWorld(size=32, frames=8, randomness=knob), 4)["conditional_entropy_bits"])
    assert oracle[0.0]["true_entropy_bits"] == 0 and oracle[0.0]["diversity"]["hi"] == 0
    assert oracle[1.0]["true_entropy_bits"] > 0
    # The entropy is given the state at the cut; the oracle's draws vary only where the pixels
    # leave that state uncertain (or the world kicks): no differing state, no diversity at 0.
    for c, row in next(o for o in rows if o["kind"] == "clip" and o["knob"] == 0.0)["contexts"].items():
        assert 0 <= row["state_differs"]["mean"] <= 1
        assert row["diversity"]["mean"] == 0 or row["state_differs"]["mean"] > 0, c
    assert "state differs" in (study / "out" / "study.html").read_text()
    image = {o["knob"]: o["contexts"]["0.5"] for o in rows if o["kind"] == "image"}
    assert image[1.0]["true_entropy_bits"] == known_answer(ImageWorld(size=32, dependence=1.0), 16)[
        "conditional_entropy_bits"] == 0
    assert image[1.0]["diversity"]["hi"] == 0 < image[0.0]["diversity"]["mean"]
    assert image[0.0]["true_entropy_bits"] is None  # no closed form: occlusion


def test_a_second_run_reuses_everything(study, capsys):
    weights = sorted((study / "out" / "runs").rglob("model.safetensors"))
    assert len(weights) >= 2 * 2 * 2  # per world and seed: two checkpoints and the latest model (plus tokenizers)
    before = {p: p.stat().st_mtime_ns for p in weights}
    t0 = time.perf_counter()
    assert main(["study", write_plan(study, PLAN), "--out", str(study / "out")]) == 0
    assert time.perf_counter() - t0 < 10
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert "$ halluscope train-gpt" not in capsys.readouterr().out


def test_ranks_share_the_cells_and_rank_0_reports(tmp_path, monkeypatch):
    """WORLD_SIZE 2: rank 1 runs the second world variant and writes no report; rank 0 runs
    the first and, all cells there, reports both (run one after the other here)."""
    plan = write_plan(tmp_path, {**PLAN, "worlds": PLAN["worlds"][1:], "seeds": [0], "steps": [2]})
    out = tmp_path / "out"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the ranks pin their GPU; undone after the test
    first, second = "image-dependence0-s32-n16-tiny-seed0.json", "image-dependence1-s32-n16-tiny-seed0.json"
    for rank, cells in (("1", [second]), ("0", [first, second])):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["study", plan, "--out", str(out)]) == 0
        assert sorted(p.name for p in (out / "cells").iterdir()) == cells
        assert (out / "study.json").is_file() == (rank == "0")
    assert len(json.loads((out / "study.json").read_text())["cells"]) == 2


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "unknown key 'epochs'"),
    ({"seeds": []}, "plan key 'seeds' must be a non-empty list"),
    ({"worlds": [{"kind": "audio", "randomness": [0.0]}]}, "worlds[0].kind must be one of image, clip"),
    ({"worlds": [{"kind": "image", "randomness": [0.0]}]}, "unknown key 'randomness' for a image world"),
    ({"worlds": [{"kind": "clip", "frames": 8, "randomness": [0.0]}], "contexts": [0.2]}, "rounds to 0"),
    ({"presets": ["huge"]}, "unknown preset 'huge'"),
    ({"worlds": [{"kind": "clip", "randomness": [0.0], "downsample": "3,4,4"}]}, "downsample must be three powers"),
    ({"worlds": [{"kind": "image", "dependence": [0.0], "downsample": "4,4,4"}]}, "unknown key 'downsample' for an"),
    ({"worlds": [{"kind": "clip", "size": 32, "frames": 12, "randomness": [0.0], "downsample": "8,4,4"}]},
     "frames a multiple of 8"),
    ({"worlds": [{"kind": "clip", "size": 36, "randomness": [0.0]}]}, "size a multiple of 8 and frames a multiple"),
])
def test_a_bad_plan_is_one_line_before_anything_runs(tmp_path, capsys, change, message):
    out = tmp_path / "out"
    assert main(["study", write_plan(tmp_path, {**PLAN, **change}), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("halluscope study: error: ") and message in err and "\n" not in err
    assert not (out / "runs").exists()


def test_the_shipped_plan_is_valid_and_distinguishes_its_contexts():
    # The plan the README runs: it must parse, and each context must keep a different number of
    # latent frames / token rows (two contexts rounding to one cut would be one point twice).
    plan = study_module.read_plan(Path(__file__).parents[1] / "examples" / "study-small.yaml")
    assert len(study_module.cells(plan)) == 12
    for w in plan.worlds:
        units = study_module.clip_units(w.frames, w.downsample) if w.kind == "clip" else w.size // 4  # 8x8 images
        cuts = [context_split((units, 1, 1), c)[0] for c in plan.contexts]
        assert cuts == sorted(set(cuts)) and cuts[0] >= 1, (w, cuts)


def knowing(plan, needed):
    """Fake cells of one image world: needed[(preset, train)] lists, per seed, the context at
    which that model's skill first reaches the level (the larger preset has more parameters)."""
    results = []
    for (preset, train), per_seed in needed.items():
        for seed, at in enumerate(per_seed):
            contexts = {str(c): {"objects_invented": 1.0 - c, study_module.SKILL: 1.0 if c >= at else 0.0,
                                 "match_mean": 0.5, "diversity": 0.5} for c in plan.contexts}
            cell = study_module.Cell("image", 1.0, 32, 8, 10, train, preset, seed)
            results.append({"cell": dataclasses.asdict(cell), "tokenizer_objects_kept": 0.9,
                            "models": {str(plan.steps[-1]): {"params": {"tiny": 1000, "small": 5000}[preset],
                                                             "val_loss": 2.0 - seed / 10, "contexts": contexts,
                                                             "recognition_paired": None,
                                                             "recognition_generative": None}}})
    return study_module.hypotheses(study_module.model_rows(results, plan), plan)


@pytest.mark.parametrize("larger, verdict", [(0.75, "supported"), (0.5, "not supported (the interval holds 0)"),
                                             (0.25, "contradicted")])
def test_knowing_more_by_size_or_data_is_tested_paired_by_seed(larger, verdict):
    # Knowing more by a larger preset or by more training examples: the difference of context
    # needed, seed by seed, supports the claim, holds 0, or contradicts it (known answers).
    plan = study_module.parse_plan({**PLAN, "worlds": [{"kind": "image", "dependence": [1.0]}], "steps": [600],
                                    "presets": ["tiny", "small"], "train": [100, 1000],
                                    "contexts": [0.25, 0.5, 0.75], "seeds": [0, 1, 2]})
    found = knowing(plan, {("tiny", 100): [0.5] * 3, ("small", 100): [larger] * 3,
                           ("tiny", 1000): [larger] * 3, ("small", 1000): [0.5] * 3})
    by_size = [h for h in found if "tiny (1000 parameters) → small (5000)" in h["claim"]]
    by_data = [h for h in found if "tiny, step 600, n=100 → n=1000" in h["claim"]]
    assert len(by_size) == 2 and len(by_data) == 1 and len(found) == 4 + 2 + 2  # + more context, more redundant: none
    n100 = next(h for h in by_size if "n=100," in h["claim"])
    assert n100["verdict"] == verdict and n100["interval"]["n"] == 3
    assert n100["interval"]["mean"] == pytest.approx(larger - 0.5)
    assert by_data[0]["verdict"] == verdict
