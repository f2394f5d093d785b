"""Contexts that do not leak the answer (probes/context.py), measured on *trained* tokenizers:
under `full` encoding a non-causal VQGAN's context tokens change when only the hidden pixels
change; under `visible` they never do, in the probe, `sample`, recognition and redundancy."""

import json
import math

import pytest
import torch
from probe_helpers import one_thread  # noqa: F401  (autouse: tiny models run fastest on one thread)
from trained import WORLDS, train_tokenizer

from halluscope.cli import main
from halluscope.data import VideoWorld, write_world
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.probes.context import context_leak, decode_context, encode_context, splice
from halluscope.probes.recognition import load_pairs, recognition
from halluscope.probes.redundancy import redundancy_curve
from halluscope.probes.samplers import load_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{kind: (tokenizer, its folder)} trained 60 steps, and the root holding them."""
    root = tmp_path_factory.mktemp("leak")
    out = {}
    for kind in ("image", "video"):
        tokenizer = train_tokenizer(kind, root)
        out[kind] = tokenizer, next(root.glob(f"{kind}-tokenizer-*")) / "model"
    return out, root


def pixels(kind: str, n: int, start: int = 0) -> torch.Tensor:
    return torch.stack([WORLDS[kind].example(i)[0] for i in range(start, start + n)])


@pytest.mark.parametrize("kind", ["image", "video"])
def test_full_encoding_leaks_and_visible_does_not(trained, kind):
    tokenizer, _ = trained[0][kind]
    x, other = pixels(kind, 8), pixels(kind, 8, start=100)
    noise = torch.rand_like(x) * 2 - 1
    for units in range(1, tokenizer.grid[0]):
        for replacement in (other, noise):
            assert context_leak(tokenizer, x, replacement, units, "visible").eq(0).all()
        assert context_leak(tokenizer, x, other, units, "full").mean() > 0  # the leak a trained VQGAN has
        # visible = the shown pixels cut out and encoded alone, whatever the hidden part holds
        shown_part = units * x.shape[2] // tokenizer.grid[0]  # pixel rows (images) or frames (clips)
        assert torch.equal(encode_context(tokenizer, splice(x, noise, tokenizer.grid, units), units, "visible"),
                           tokenizer.encode(x[:, :, :shown_part]).flatten(1))


def test_the_panel_is_the_decoding_of_the_context_tokens_alone(trained):
    tokenizer, _ = trained[0]["image"]
    x = pixels("image", 2)
    units = 3
    given = encode_context(tokenizer, x, units, "visible")
    seen = decode_context(tokenizer, given, x)
    rows = units * 32 // tokenizer.grid[0]
    expected = tokenizer.decode(given.view(2, units, -1)).clamp(-1, 1)
    assert torch.equal(seen[:, :, :rows], expected) and seen[:, :, rows:].eq(0).all()


def make_gpt(tokenizer, folder, root):
    grid = tuple(tokenizer.grid)
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                         tokenizer=str(folder)))
    save_gpt(gpt, root / "gpt")
    return gpt


def test_probe_reports_the_leak_of_each_encoding(trained, tmp_path, capsys):
    (tokenizer, folder), root = trained[0]["image"], trained[1]
    make_gpt(tokenizer, folder, tmp_path)
    data = root / "image-world"
    leaks = {}
    for encoding in ("visible", "full"):
        out = tmp_path / encoding
        args = ["probe", "--gpt", str(tmp_path / "gpt"), "--data", str(data), "--context", "0.5", "--samples", "2",
                "--limit", "4", "--batch", "4", "--out", str(out), "--grids", "1"]
        assert main(args + ([] if encoding == "visible" else ["--context-encoding", "full"])) == 0
        printed = capsys.readouterr().out
        assert f"context 0.5 ({encoding} encoding): context_leak" in printed
        leaks[encoding] = float(printed.split("context_leak ")[1].split()[0])
        summary = json.loads((out / "summary.json").read_text())["groups"][0]
        assert summary["context_encoding"] == encoding
        assert summary["metrics"]["context_leak"]["mean"] == pytest.approx(leaks[encoding], abs=1e-4)
        assert {"lo", "hi"} <= summary["metrics"]["context_leak"].keys()
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        assert {r["context_encoding"] for r in records} == {encoding}
        assert "context_leak" in (out / "summary.csv").read_text()
        report = (out / "report.html").read_text()
        assert "Does the context leak the answer?" in report and f"<td>{encoding}</td>" in report
    assert leaks["visible"] == 0 and leaks["full"] > 0
    with pytest.raises(SystemExit):  # an unknown mode is argparse's one line
        main(["probe", "--gpt", str(tmp_path / "gpt"), "--data", str(data), "--out", str(tmp_path / "x"),
              "--context-encoding", "half"])


def test_sample_gives_the_gpt_the_visible_context(trained, tmp_path):
    (tokenizer, folder), root = trained[0]["image"], trained[1]
    make_gpt(tokenizer, folder, tmp_path)
    image = next((root / "image-world").rglob("*.png"))
    assert main(["sample", "--gpt", str(tmp_path / "gpt"), "--input", str(image), "--context", "0.25",
                 "--samples", "2", "--out", str(tmp_path / "s")]) == 0
    record = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert record["context_encoding"] == "visible"
    name = image.relative_to(root / "image-world").as_posix()
    example = next(e for e in load_examples(root / "image-world", tokenizer)[0] if e.id == name)
    units = record["context_units"]
    expected = encode_context(tokenizer, example.pixels[None], units, "visible")[0].tolist()
    assert record["context_tokens_given"] == expected
    assert record["context_tokens_given"] != record["ground_truth_tokens"][:len(expected)]  # full would differ here


def test_recognition_twins_share_their_context_tokens(trained, tmp_path):
    tokenizer, folder = trained[0]["video"]
    world = VideoWorld(size=16, frames=8, seed=3)
    write_world(world, tmp_path / "twins", 12, violations=True)
    gpt = make_gpt(tokenizer, folder, tmp_path)
    pairs = load_pairs(tmp_path / "twins", None, tokenizer)
    _, visible = recognition(gpt, tokenizer, pairs, 0.5, "visible")
    _, full = recognition(gpt, tokenizer, pairs, 0.5, "full")
    assert visible["context_differs"] == 0 and visible["context_encoding"] == "visible"
    assert full["context_differs"] > 0  # the break after the cut reaches the 3D VQGAN's context tokens


def test_redundancy_scores_after_the_encoded_context(trained, tmp_path):
    tokenizer, folder = trained[0]["image"]
    gpt = make_gpt(tokenizer, folder, tmp_path)
    examples, _ = load_examples(trained[1] / "image-world", tokenizer, 4)
    visible = redundancy_curve(gpt, tokenizer, examples, [0.5], encoding="visible")
    full = redundancy_curve(gpt, tokenizer, examples, [0.5], encoding="full")
    assert visible[0] == full[0]  # no context: nothing to encode
    assert visible[1]["entropy_bits_per_token"] != full[1]["entropy_bits_per_token"]
    # H(Y) is scored given the other examples' contexts, encoded the same way
    assert visible[1]["marginal_bits_per_token"] != full[1]["marginal_bits_per_token"]
