"""`halluscope demo --quick`: the whole pipeline (both modalities, probes, oracle, recognition,
report, verdict) runs, prints its table, and a second run reuses everything it trained; then
`--seeds 2` on the same folder trains a second pair per modality and the verdict covers both."""

import json
import time

import pytest

from halluscope.cli import main


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("demo") / "demo"


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_reuses_its_models(out, capsys):
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sampler | modality | context | objects invented | objects dropped | objects recoloured |" in printed
    assert "verdict at context 0.5: " in printed and "report.html" in printed
    verdict = json.loads((out / "report" / "verdict.json").read_text())
    assert verdict["outcome"] in ("reproduced", "not reproduced", "inconclusive") and verdict["line"] in printed
    oracle = {}
    for modality, grid in (("image", [16, 16]), ("clip", [4, 8, 8])):
        assert json.loads((out / modality / "tokens" / "manifest.json").read_text())["grid"] == grid
        summary = json.loads((out / "probes" / modality / "summary.json").read_text())["groups"]
        oracle[modality] = {g["context"]: g["metrics"] for g in summary if g["sampler"] == "oracle"}
        # the GPT and the oracle at each context; the baselines (each of the two also shuffled) at ½
        baselines = ["copy-last", "marginal", "model T=1 shuffled", "oracle shuffled"]
        assert {(g["sampler"], g["context"]) for g in summary} == {
            *((s, c) for s in ("model T=1", "oracle") for c in (0.25, 0.5, 0.75)), *((b, 0.5) for b in baselines)}
        assert all(g["context_encoding"] == "visible" and g["metrics"]["context_leak"]["mean"] == 0
                   for g in summary)
    # A deterministic clip world: its continuation has no entropy of its own given the state, and
    # the clip oracle (the posterior given the shown frames) matches more than the image oracle.
    for context, clip in oracle["clip"].items():
        assert clip["sampler_conditional_entropy_bits"]["mean"] == 0 and clip["sampler_acceptance"]["mean"] > 0
        assert clip["match_mean"]["mean"] > oracle["image"][context]["match_mean"]["mean"], context
    grids = sorted(p.suffix for p in (out / "probes" / "clip" / "grids").iterdir())
    assert grids == [".gif"] * 2 * (3 * 2 + 4)  # examples with grids x (contexts x samplers + baselines at ½)
    assert json.loads((out / "recognition" / "recognition.json").read_text())
    assert (out / "report" / "report.html").stat().st_size > 10_000

    weights = {m: (out / m / "gpt" / "model" / "model.safetensors").stat().st_mtime_ns for m in ("image", "clip")}
    t0 = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 60
    for m, mtime in weights.items():  # not retrained
        assert (out / m / "gpt" / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    assert verdict["line"] in capsys.readouterr().out


@pytest.mark.slow
def test_seeds_train_more_pairs_and_the_verdict_covers_them(out, capsys):
    if not (out / "report" / "verdict.json").is_file():
        pytest.skip("needs the quick demo's folder (the test above)")
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    verdict = json.loads((out / "report" / "verdict.json").read_text())
    assert "2 image and 2 clip runs" in verdict["line"] and verdict["line"] in capsys.readouterr().out
    for modality in ("image", "clip"):
        seed1 = out / modality / "seed1"
        assert json.loads((seed1 / "gpt" / "train_config.json").read_text())["seed"] == 1
        assert json.loads((seed1 / "tokenizer" / "train_config.json").read_text())["seed"] == 1
        summary = json.loads((out / "probes" / f"{modality}-seed1" / "summary.json").read_text())["groups"]
        assert {g["context"] for g in summary} == {0.5}  # later seeds: the verdict's context only
    assert main(["demo", "--quick", "--seeds", "0", "--out", str(out)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
