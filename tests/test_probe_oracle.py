"""Known answers from the worlds' own posteriors (the oracle sampler), measured on a fixed
deterministic patch tokenizer: at randomness 0 a clip's continuation varies only as much as
its context leaves the state uncertain, less than with any randomness, while the world's
true conditional entropy rises strictly with randomness; image bottom halves are far more
diverse than clip continuations, and less so the more they depend on the top, down to
exactly the truth when they are its mirror image."""

import itertools

import pytest
from probe_helpers import PatchTokenizer, one_thread  # noqa: F401 (autouse fixture)

from halluscope.data import ImageWorld, VideoWorld, write_world
from halluscope.data.answers import known_answer
from halluscope.errors import UserError
from halluscope.probes.probe import ProbeConfig, run_probe, summarize
from halluscope.probes.report import line_label, load_runs, write_report
from halluscope.probes.samplers import OracleSampler, load_examples

EXAMPLES, SAMPLES = 8, 6


def oracle_run(tmp_path, world, name: str) -> list[dict]:
    write_world(world, tmp_path / name, EXAMPLES)
    tokenizer = PatchTokenizer(world.kind, world.size, getattr(world, "frames", None))
    examples, loaded = load_examples(tmp_path / name, tokenizer)
    assert loaded == world
    return run_probe(examples, tokenizer, [OracleSampler(loaded, tokenizer)], ProbeConfig([0.5], samples=SAMPLES),
                     tmp_path / f"run-{name}")


def mean(records: list[dict], metric: str) -> float:
    return summarize(records)[0]["metrics"][metric]["mean"]


def test_video_oracle_against_randomness(tmp_path):
    levels = [0.0, 0.1, 0.3, 1.0]
    world = [VideoWorld(size=32, frames=8, randomness=r, seed=0) for r in levels]
    entropy = [known_answer(w, 4)["conditional_entropy_bits"] for w in world]
    assert entropy[0] == 0 and all(a < b for a, b in itertools.pairwise(entropy)), entropy
    runs = [oracle_run(tmp_path, w, f"v{r}") for w, r in zip(world, levels)]
    for metric in ("diversity", "pixel_diversity"):
        values = [mean(records, metric) for records in runs]
        # At randomness 0 only the context's ambiguity about the sub-pixel state is left: small,
        # and less than with any randomness (which need not rise all the way: see docs/probes.md).
        assert values[0] < 0.1 and values[0] < min(values[1:]), (metric, values)
    best = [mean(records, "match_best") for records in runs]
    assert best[0] > max(best[1:]) and mean(runs[0], "exact_rate") > 0, best


def test_image_oracle_is_more_diverse_than_video_at_no_randomness(tmp_path):
    image = mean(oracle_run(tmp_path, ImageWorld(size=32, seed=0), "img"), "diversity")
    video = mean(oracle_run(tmp_path, VideoWorld(size=32, frames=8, randomness=0.0, seed=0), "vid"), "diversity")
    assert video < 0.1 and image > 0.1


def test_image_oracle_against_dependence(tmp_path):
    levels = [0.0, 0.5, 0.8, 1.0]
    runs = [oracle_run(tmp_path, ImageWorld(size=32, seed=0, dependence=p), f"i{p}") for p in levels]
    values = [mean(records, "diversity") for records in runs]
    assert all(a > b for a, b in itertools.pairwise(values)), values
    # The bottom half a function of the top: every sample is the truth.
    assert all(r["metrics"]["exact_rate"] == 1 for r in runs[-1]) and values[-1] == 0


def test_world_must_fit_the_tokenizer(tmp_path):
    write_world(ImageWorld(size=32), tmp_path / "w", 2)
    with pytest.raises(UserError, match="32px"):
        load_examples(tmp_path / "w", PatchTokenizer("image", 64))
    with pytest.raises(UserError, match="image world"):
        load_examples(tmp_path / "w", PatchTokenizer("video", 32, 8))


def test_shards_merge_into_the_unsharded_records(tmp_path):
    world = VideoWorld(size=32, frames=8, randomness=0.3, seed=1)
    write_world(world, tmp_path / "w", 5)
    tokenizer = PatchTokenizer("video", 32, 8)
    examples, loaded = load_examples(tmp_path / "w", tokenizer)
    sampler, config = OracleSampler(loaded, tokenizer), ProbeConfig([0.25, 0.5], samples=3, batch=2)
    whole = run_probe(examples, tokenizer, [sampler], config, tmp_path / "whole")
    assert run_probe(examples, tokenizer, [sampler], config, tmp_path / "sharded", shard=(1, 2)) == []
    merged = run_probe(examples, tokenizer, [sampler], config, tmp_path / "sharded", shard=(0, 2))
    def order(records):
        return sorted(records, key=lambda r: (r["index"], r["context"]))
    assert len(merged) == 10 and order(merged) == order(whole)  # seeds follow the block, not the rank
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["records.jsonl", "summary.csv", "summary.json"]


def test_report_compares_image_and_clip_runs(tmp_path):
    oracle_run(tmp_path, ImageWorld(size=32, seed=0), "img")
    oracle_run(tmp_path, VideoWorld(size=32, frames=8, seed=0), "vid")
    rows = load_runs([tmp_path / "run-img", tmp_path / "run-vid"])
    assert sorted(line_label(r, 2) for r in rows) == ["image: oracle", "video: oracle"]
    html = write_report([tmp_path / "run-img", tmp_path / "run-vid"], tmp_path / "both").read_text()
    assert not (tmp_path / "both" / "plots" / "diversity.png").exists()  # one context: a dot, not a curve
    # objects, known answers, context leak, chance, calibration and full tables: header + 2 rows each (no
    # baselines: no skill table), and detection's header + (image, video) × (0.5, all) × (object, feature
    # labels); the oracle has no entropies; the object figures lead
    assert html.count("<tr>") == 18 + 9 and "entropy_maps" not in html and "rank_histograms" in html
    assert html.index("Objects: hallucination") < html.index("Known answers") < html.index("Against chance") \
        < html.index("Calibration")
    assert "sampler_acceptance" in html and "the halves are drawn independently" in html
    known = html[html.index("Known answers"):html.index("Does the context leak")]
    assert "<th>diversity</th>" in known and "<th>exact_rate</th>" in known
    assert "Against baselines" not in html and "whole continuation" in html

