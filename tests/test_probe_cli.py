"""`halluscope probe`, `probe-report` and `probe-recognition` end to end with a tiny untrained
tokenizer and GPT on small worlds: every output file, resume without duplicates, sweeps,
and one-line errors for bad flags."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from probe_helpers import one_thread  # noqa: F401 (autouse fixture)

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.data.token_cache import write_token_cache
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.gpt.settings import SamplingSettings
from halluscope.probes.samplers import GPTSampler
from halluscope.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset


def make_models(tmp_path: Path, kind: str) -> Path:
    """A tiny untrained tokenizer for 32² inputs (clips: 8 frames) and a GPT over its grid."""
    torch.manual_seed(0)
    overrides = {"resolution": 32} if kind == "image" else {"resolution": 32, "frames": 8}
    tokenizer = build_tokenizer(tokenizer_preset(kind, "tiny", **overrides))
    save_tokenizer(tokenizer, tmp_path / f"vq-{kind}")
    grid = tuple(tokenizer.grid)
    gpt = GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                         tokenizer=str(tmp_path / f"vq-{kind}")))
    save_gpt(gpt, tmp_path / f"gpt-{kind}")
    return tmp_path / f"gpt-{kind}"


def probe(tmp_path, gpt, data, out, *extra) -> int:
    return main(["probe", "--gpt", str(gpt), "--data", str(data), "--context", "0.25,0.5", "--samples", "3",
                 "--out", str(out), "--limit", "3", "--grids", "1", *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_probe_writes_every_output_and_resumes(tmp_path, capsys):
    gpt = make_models(tmp_path, "image")
    write_world(ImageWorld(size=32), tmp_path / "world", 4)
    out = tmp_path / "run"
    assert probe(tmp_path, gpt, tmp_path / "world", out, "--oracle", "--temperature", "1,0.5") == 0
    assert "18 records" in capsys.readouterr().out  # 3 examples x 2 contexts x (2 GPT settings + oracle)
    for name in ["records.jsonl", "summary.json", "summary.csv", "run.json", "report.html",
                 "plots/match_mean.png", "plots/diversity.png", "plots/entropy_maps.png"]:
        assert (out / name).is_file(), name
    assert len(list((out / "grids").glob("000_*.png"))) == 6 and not list((out / "grids").glob("001_*"))
    records = lines(out / "records.jsonl")
    keys = {(r["example"], r["context"], r["sampler"]) for r in records}
    assert len(keys) == 18 and {r["sampler"] for r in records} == {"gpt-image T=1", "gpt-image T=0.5", "oracle"}
    gpt_record = next(r for r in records if r["sampler"] == "gpt-image T=1")
    for metric in ["match_mean", "diversity", "nll_truth", "typicality_gap", "top1", "pixel_psnr_best",
                   "recon_ssim_mean", "feature_mse_best", "vendi", "retrieval"]:
        assert metric in gpt_record["metrics"], metric
    assert "nll_truth" not in next(r for r in records if r["sampler"] == "oracle")["metrics"]
    groups = json.loads((out / "summary.json").read_text())["groups"]
    assert len(groups) == 6 and all(g["examples"] == 3 for g in groups)
    ci = groups[0]["metrics"]["match_mean"]
    assert ci["lo"] <= ci["mean"] <= ci["hi"]
    assert "data:image/png;base64," in (out / "report.html").read_text()

    # An interrupted run: a record lost and the last line cut short; --resume redoes just that one.
    text = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(text[:-2]) + "\n" + text[-2][:20])
    assert probe(tmp_path, gpt, tmp_path / "world", out, "--oracle", "--temperature", "1,0.5", "--resume") == 0
    resumed = lines(out / "records.jsonl")
    assert len(resumed) == 18 and {(r["example"], r["context"], r["sampler"]) for r in resumed} == keys
    assert resumed[:16] == records[:16] and resumed[-1]["metrics"] == records[-1]["metrics"]  # same seed, same draw
    # Without --resume an existing run is never overwritten.
    assert probe(tmp_path, gpt, tmp_path / "world", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["probe-report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.slow
def test_probe_on_clips_writes_animated_grids(tmp_path):
    gpt = make_models(tmp_path, "video")
    write_world(VideoWorld(size=32, frames=8, randomness=0.2), tmp_path / "world", 2)
    assert probe(tmp_path, gpt, tmp_path / "world", tmp_path / "run", "--oracle", "--context", "0.5") == 0
    records = lines(tmp_path / "run" / "records.jsonl")
    assert len(records) == 4 and all(r["kind"] == "video" for r in records)
    assert records[0]["grid"] == [2, 8, 8] and len(records[0]["entropy_map"]) == 128
    assert len(list((tmp_path / "run" / "grids").glob("000_*.gif"))) == 2
    assert "data:image/gif;base64," in (tmp_path / "run" / "report.html").read_text()


def test_probe_recognition_on_violation_twins(tmp_path, capsys):
    gpt = make_models(tmp_path, "video")
    write_world(VideoWorld(size=32, frames=8, seed=0), tmp_path / "world", 3, violations=True)
    out = tmp_path / "rec"
    assert main(["probe-recognition", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(out)]) == 0
    assert "AUC" in capsys.readouterr().out
    summary = json.loads((out / "recognition.json").read_text())[str(gpt)]
    assert 0 <= summary["auc"] <= 1 and summary["pairs"] == 3
    records = lines(out / "recognition.jsonl")
    assert [r["gap"] for r in records] == pytest.approx([r["nll_violation"] - r["nll_real"] for r in records])
    preferred = sum(r["gap"] > 0 for r in records)
    assert summary["paired_accuracy_ci"]["mean"] == summary["paired_accuracy"] == preferred / 3
    # The generative test on the same pairs, and every figure per violation kind.
    assert all(0 <= r["generative"] <= 1 and r["kind"] in ("teleport", "vanish", "recolor") for r in records)
    assert summary["generative_accuracy"]["mean"] == pytest.approx(sum(r["generative"] for r in records) / 3)
    assert sum(k["pairs"] for k in summary["by_kind"].values()) == 3
    assert (out / "roc.png").is_file()
    # The same pairs given as a file of paths.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"real": f"world/clips/{i:06d}.mp4",
                                         "violation": f"world/violations/{i:06d}.mp4"}) + "\n" for i in range(3)))
    assert main(["probe-recognition", "--gpt", str(gpt), "--pairs", str(pairs), "--out", str(tmp_path / "rec2")]) == 0
    assert 0 <= json.loads((tmp_path / "rec2" / "recognition.json").read_text())[str(gpt)]["auc"] <= 1


def test_probe_mistakes_are_one_line_errors(tmp_path, capsys):
    gpt = make_models(tmp_path, "image")
    write_world(ImageWorld(size=32), tmp_path / "world", 2)
    write_world(VideoWorld(size=32, frames=8), tmp_path / "clips", 2)
    capsys.readouterr()
    cases = [
        (["probe", "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a")], "--gpt"),
        (["probe", "--oracle", "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a")], "--tokenizer"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--context", "1.5"], "strictly between"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--samples", "0"], "--samples"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--temperature", "1,0"], "temperature"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "clips"), "--out", str(tmp_path / "a")], "video world"),
        (["probe", "--gpt", str(tmp_path / "nope"), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a")],
         "nope"),
        (["probe-recognition", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "b")],
         "violation"),
        (["probe-recognition", "--gpt", str(gpt), "--out", str(tmp_path / "b")], "exactly one"),
        (["probe-report", str(tmp_path / "world"), "--out", str(tmp_path / "c")], "not a probe run"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--baselines", "copy-last,mode"], "unknown baseline 'mode'"),
        (["probe", "--oracle", "--tokenizer", str(tmp_path / "vq-image"), "--data", str(tmp_path / "world"),
          "--out", str(tmp_path / "a"), "--baselines", "marginal"], "--train-tokens"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--context", "0.25,0.75", "--target", "0.5"], "after every context"),
        (["probe", "--gpt", str(gpt), "--data", str(tmp_path / "world"), "--out", str(tmp_path / "a"),
          "--baselines", "copy-last", "--baselines-at", "0.3"], "must be among --context"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own type errors exit 2 too
        main(["probe", "--gpt", str(gpt), "--data", "x", "--out", "y", "--context", "half"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: the headless report check needs /usr/bin/chromium")
    gpt = make_models(tmp_path, "image")
    write_world(ImageWorld(size=32), tmp_path / "world", 2)
    assert probe(tmp_path, gpt, tmp_path / "world", tmp_path / "run") == 0
    shot = tmp_path / "shot.png"
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                             "--window-size=1400,2000", (tmp_path / "run" / "report.html").as_uri()],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]


@pytest.mark.slow
def test_probe_with_baselines_chance_levels_and_a_fixed_target(tmp_path, capsys):
    gpt = make_models(tmp_path, "image")
    write_world(ImageWorld(size=32), tmp_path / "world", 3)
    # The GPT's training tokens, found as train-gpt leaves them: train_config.json names the cache.
    tokenizer = load_tokenizer(tmp_path / "vq-image")
    with torch.no_grad():
        tokens = tokenizer.encode(torch.stack([ImageWorld(size=32, seed=1).example(i)[0] for i in range(8)]))
    write_token_cache(tmp_path / "tokens", tokens, tokenizer.vocab_size, [str(i) for i in range(8)])
    (gpt / "train_config.json").write_text(json.dumps({"tokens": str(tmp_path / "tokens"), "val_fraction": 0.25}))
    out = tmp_path / "run"
    assert probe(tmp_path, gpt, tmp_path / "world", out, "--oracle", "--baselines", "copy-last,marginal,shuffled",
                 "--target", "0.25") == 0
    assert "36 records" in capsys.readouterr().out  # 3 examples x 2 contexts x (GPT, oracle, 2 baselines, 2 twins)
    info = json.loads((out / "run.json").read_text())
    assert info["train_tokens"] == str(tmp_path / "tokens") and info["target"] == 0.25
    records = lines(out / "records.jsonl")
    assert {r["sampler"] for r in records} == {"gpt-image T=1", "oracle", "copy-last", "marginal",
                                                "gpt-image T=1 shuffled", "oracle shuffled"}
    assert all(r["target"] == 0.25 for r in records)
    assert {r.get("baseline") for r in records} == {None, "copy-last", "marginal", "shuffled"}
    groups = json.loads((out / "summary.json").read_text())["groups"]
    for g in groups:
        names = " ".join(g["metrics"])
        for part in ("objects_invented", "objects_dropped", "objects_recoloured", "chance_corrected_match"):
            assert part in names, (g["sampler"], part)
        assert ("normalised_skill" in names) == (g["sampler"] != "oracle"), g["sampler"]
        assert ("context_gain_energy_objects" in g["metrics"]) == (g["context"] == 0.5)
    gpt_row = next(g for g in groups if g["sampler"] == "gpt-image T=1" and g["context"] == 0.5)
    assert "context_effect_energy_pixels" in gpt_row["metrics"] and set(gpt_row["verdicts"]) == \
        {"pixels", "features", "objects"}
    assert "fixed: last 0.25" in (out / "summary.csv").read_text()
    html = (out / "report.html").read_text()
    assert html.index("Objects: hallucination") < html.index("Against baselines") < html.index("Calibration") \
        < html.index("Like for like") and "fixed: last 0.25" in html
    assert (out / "plots" / "objects_invented.png").is_file()
    # The target is part of what a resumed run must share.
    assert probe(tmp_path, gpt, tmp_path / "world", out, "--oracle", "--resume") == 2
    assert "target" in capsys.readouterr().err


def test_baselines_run_only_where_asked(tmp_path, capsys):
    gpt = make_models(tmp_path, "image")
    write_world(ImageWorld(size=32), tmp_path / "world", 3)
    out = tmp_path / "run"
    assert probe(tmp_path, gpt, tmp_path / "world", out, "--baselines", "copy-last,shuffled", "--baselines-at", "0.5",
                 "--no-report") == 0
    assert "12 records" in capsys.readouterr().out  # 3 examples x (the GPT at 2 contexts + 2 baselines at 0.5)
    seen = {(r["sampler"], r["context"]) for r in lines(out / "records.jsonl")}
    assert seen == {("gpt-image T=1", 0.25), ("gpt-image T=1", 0.5), ("copy-last", 0.5),
                    ("gpt-image T=1 shuffled", 0.5)}
    assert json.loads((out / "run.json").read_text())["baselines_at"] == [0.5]


def test_gpt_sampler_names_its_settings():
    gpt = GPT(gpt_preset("tiny", vocab_size=16, block_size=8))
    assert GPTSampler(gpt, "m").name == "m T=1"
    sampler = GPTSampler(gpt, "m", SamplingSettings(0.7, 50, 0.9))
    assert sampler.name == "m T=0.7 top-k=50 top-p=0.9"
    assert sampler.settings == {"gpt": "m", "temperature": 0.7, "top_k": 50, "top_p": 0.9, "cfg_scale": 1.0}
    assert GPTSampler(gpt, "m", SamplingSettings(cfg_scale=2), (3,)).name == "m T=1 cfg=2 cond=3"
    with pytest.raises(UserError, match="top_p"):
        SamplingSettings.from_flags(top_p=0.0)


@pytest.mark.slow
def test_probe_redundancy_puts_images_and_clips_on_one_figure(tmp_path, capsys):
    image, clip = make_models(tmp_path, "image"), make_models(tmp_path, "video")
    write_world(ImageWorld(size=32), tmp_path / "images", 2)
    write_world(VideoWorld(size=32, frames=8, randomness=0.2), tmp_path / "clips", 2)
    out = tmp_path / "red"
    assert main(["probe-redundancy", "--gpt", str(image), "--data", str(tmp_path / "images"), "--gpt", str(clip),
                 "--data", str(tmp_path / "clips"), "--context", "0.25,0.5", "--out", str(out)]) == 0
    curves = json.loads((out / "redundancy.json").read_text())
    assert sorted(curves) == ["image: gpt-image", "video: gpt-video"] and (out / "redundancy.png").is_file()
    assert [r["context"] for r in curves["video: gpt-video"]] == [0.0, 0.25, 0.5]
    assert "information_bits_per_second" in curves["video: gpt-video"][1]  # the world knows its fps
    assert "information_bits_per_second" not in curves["image: gpt-image"][1]
    image_curve = curves["image: gpt-image"]
    assert [r["world_redundancy"] for r in image_curve] == [0.0, None, 0.0]  # the independent halves at ½
    assert [s["contexts"] for s in image_curve[2]["by_marginal_contexts"]] == [1]  # 2 examples: 1 other context
    printed = capsys.readouterr().out
    assert "R(k)" in printed and "(by M 1: " in printed and "world's R 0.000" in printed
    assert main(["probe-redundancy", "--gpt", str(image), "--data", "a", "--data", "b", "--out", str(out)]) == 2
    assert "one --data per --gpt" in capsys.readouterr().err
    assert main(["probe-redundancy", "--gpt", str(image), "--data", str(tmp_path / "images"), "--marginal-contexts",
                 "0", "--out", str(out)]) == 2
    assert "--marginal-contexts must be at least 1" in capsys.readouterr().err
