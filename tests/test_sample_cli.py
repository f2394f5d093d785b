"""`halluscope sample` end to end on a world image and a world clip, with a tiny untrained
tokenizer and GPT, and the context arithmetic it shares with the probes."""

import json
import math

import pytest
import torch
from PIL import Image

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld
from halluscope.errors import UserError
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.probes.context import context_split, shown
from halluscope.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

SAMPLES = 3


def make_models(tmp_path, kind: str):
    """A tiny untrained tokenizer for 32² inputs (clips: 8 frames) and a GPT over its grid."""
    torch.manual_seed(0)
    overrides = {"resolution": 32} if kind == "image" else {"resolution": 32, "frames": 8}
    tokenizer = build_tokenizer(tokenizer_preset(kind, "tiny", **overrides))
    save_tokenizer(tokenizer, tmp_path / "vq")
    tokenizer = load_tokenizer(tmp_path / "vq")
    grid = tuple(tokenizer.grid)
    gpt = GPT(gpt_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=math.prod(grid), grid=grid,
                         tokenizer=str(tmp_path / "vq")))
    save_gpt(gpt, tmp_path / "gpt")
    return grid


def run_sample(tmp_path, input_path, *extra) -> int:
    return main(["sample", "--gpt", str(tmp_path / "gpt"), "--input", str(input_path), "--context", "0.5",
                 "--samples", str(SAMPLES), "--out", str(tmp_path / "out"), "--seed", "1", *extra])


def test_context_split_keeps_whole_rows_or_frames():
    assert context_split((8, 8), 0.5) == (4, 32)
    assert context_split((16, 16), 0.25) == (4, 64)
    assert context_split((4, 16, 16), 0.5) == (2, 512)
    assert context_split((4, 16, 16), 0.3) == (1, 256)  # 1.2 latent frames -> 1
    assert context_split((8, 8), 0.0625) == (1, 8)  # half a row rounds up
    for fraction, message in [(0.0, "strictly between"), (1.0, "strictly between"), (-0.5, "strictly between"),
                              (0.05, "rounds to 0"), (0.95, "rounds to 8")]:
        with pytest.raises(UserError, match=message):
            context_split((8, 8), fraction)
    with pytest.raises(UserError, match="latent frames"):
        context_split((2, 8, 8), 0.2)


def test_hidden_part_is_grey():
    image = torch.ones(3, 32, 32)
    seen = shown(image, (8, 8), 3)
    assert seen[:, :12].eq(1).all() and seen[:, 12:].eq(0).all() and image.eq(1).all()
    clip = torch.ones(2, 3, 8, 4, 4)  # a batch of clips
    seen = shown(clip, (2, 1, 1), 1)
    assert seen[:, :, :4].eq(1).all() and seen[:, :, 4:].eq(0).all()


def test_sample_on_a_world_image(tmp_path, capsys):
    grid = make_models(tmp_path, "image")
    world = ImageWorld(size=32, seed=0)
    image, _ = world.example(0)
    world.write(image, tmp_path / "input.png")
    assert run_sample(tmp_path, tmp_path / "input.png", "--top-k", "50") == 0
    assert "continuations of" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    n_ctx = grid[0] // 2 * grid[1]
    assert record["grid"] == list(grid) and record["context_tokens"] == n_ctx
    assert len(record["ground_truth_tokens"]) == math.prod(grid)
    assert torch.tensor(record["sample_tokens"]).shape == (SAMPLES, math.prod(grid) - n_ctx)
    assert torch.tensor(record["sample_logprobs"]).shape == (SAMPLES, math.prod(grid) - n_ctx)
    assert record["top_k"] == 50 and record["ground_truth_logprob"] < 0
    with Image.open(tmp_path / "out" / "samples.png") as png:  # context, truth, reconstruction, 3 samples
        assert png.size == (6 * (32 + 4), 32 + 4)


def test_sample_on_a_world_clip(tmp_path):
    grid = make_models(tmp_path, "video")
    world = VideoWorld(size=32, frames=8, seed=0)
    clip, _ = world.example(0)
    world.write(clip, tmp_path / "input.mp4")
    assert run_sample(tmp_path, tmp_path / "input.mp4") == 0
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert record["grid"] == list(grid) and record["context_units"] == grid[0] // 2
    per_frame = grid[1] * grid[2]
    assert torch.tensor(record["sample_tokens"]).shape == (SAMPLES, (grid[0] - grid[0] // 2) * per_frame)
    with Image.open(tmp_path / "out" / "samples.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (6 * (32 + 4), 32 + 4)


def test_sample_mistakes_are_one_line_errors(tmp_path, capsys):
    make_models(tmp_path, "image")
    ImageWorld(size=32).write(ImageWorld(size=32).example(0)[0], tmp_path / "input.png")
    for extra, message in [(["--context", "1.0"], "strictly between"), (["--top-p", "0"], "top_p"),
                           (["--temperature", "0"], "temperature")]:
        assert run_sample(tmp_path, tmp_path / "input.png", *extra) == 2
        assert message in capsys.readouterr().err
    assert run_sample(tmp_path, tmp_path / "missing.png") == 2
    assert "missing.png" in capsys.readouterr().err
