"""`halluscope demo --quick`: the whole pipeline runs, writes its pictures, and a second run
reuses everything it trained."""

import json
import time

import pytest

from halluscope.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_reuses_its_models(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPT val loss" in printed and "unigram entropy" in printed
    grids = sorted(out.glob("samples/*/samples.png"))
    assert len(grids) == 2
    assert len((out / "gpt" / "metrics.jsonl").read_text().splitlines()) == 12

    weights = (out / "gpt" / "model" / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "gpt" / "model" / "model.safetensors").stat().st_mtime_ns == weights  # not retrained
    assert len((out / "gpt" / "metrics.jsonl").read_text().splitlines()) == 12
    assert json.loads((out / "tokens" / "manifest.json").read_text())["count"] == 32
    assert time.perf_counter() - t0 < 60
