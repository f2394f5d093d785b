"""Synthetic worlds: examples are pure functions of (seed, index); the image world's halves
are independent at dependence 0 and mirror images at 1; the video world's physics is
deterministic at randomness 0, so the second half of a clip follows from the first state;
the oracle samplers keep the context and draw the rest; violations break exactly the second
half; and `halluscope world` writes folders the loaders read back (old ones included)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from halluscope.cli import main
from halluscope.data import (
    ImageFolder,
    ImageWorld,
    VideoFolder,
    VideoWorld,
    load_clip,
    write_clip_grid,
    write_image_grid,
)
from halluscope.data.shapes import from_dicts, render, simulate, to_dicts
from halluscope.data.worlds import VIOLATIONS
from halluscope.errors import UserError
from halluscope.probes.samplers import world_from_folder


def json_round_trip(meta: dict) -> dict:
    return json.loads(json.dumps(meta))


def test_image_world_is_a_pure_function_of_seed_and_index():
    x, meta = ImageWorld(seed=3).example(5)
    y, again = ImageWorld(seed=3).example(5)
    assert x.shape == (3, 64, 64) and torch.equal(x, y) and meta == again
    assert not torch.equal(x, ImageWorld(seed=3).example(6)[0])
    assert not torch.equal(x, ImageWorld(seed=4).example(5)[0])
    assert torch.equal(ImageWorld(seed=3).render(json_round_trip(meta)), x)


def test_image_halves_are_drawn_independently():
    world = ImageWorld(size=32)
    for i in range(20):
        x, meta = world.example(i)
        top, bottom = from_dicts(meta["top"]), from_dicts(meta["bottom"])
        assert all(s.y - s.r >= 0 and s.y + s.r <= 16 for s in top)
        assert all(s.y - s.r >= 16 and s.y + s.r <= 32 for s in bottom)
        pixels = render(top + bottom, 32)
        assert np.array_equal(pixels[:16], render(top, 32)[:16])  # no bottom shape reaches the top
        assert np.array_equal(pixels[16:], render(bottom, 32)[16:])


def test_dependence_1_makes_the_bottom_half_the_mirror_image_of_the_top():
    for size in (32, 33):
        world = ImageWorld(size=size, dependence=1.0, seed=2)
        for i in range(10):
            x, meta = world.example(i)
            top = x[:, :size // 2]
            assert torch.equal(x[:, size - size // 2:], top.flip(1))  # pixel for pixel, triangles upside down
            assert meta["mirrored"] == [True] * 3 and len(meta["bottom"]) == len(meta["top"])
            if i < 3 and size == 32:  # so the oracle given the top half draws the truth
                assert (world.continue_from(meta, 16, 4, seed=i)[0] == x).all()
    # dependence 0 is the world as it was: the same draws, nothing mirrored
    plain, again = ImageWorld(size=32, seed=2).example(3), ImageWorld(size=32, seed=2, dependence=0.0).example(3)
    assert torch.equal(plain[0], again[0]) and plain[1]["mirrored"] == [False] * 3
    with pytest.raises(UserError, match="dependence is a probability"):
        ImageWorld(dependence=-0.1)


@pytest.mark.parametrize("row", [0, 16, 32, 40])
def test_image_oracle_keeps_the_context_rows_and_redraws_the_rest(row):
    world = ImageWorld()
    x, meta = world.example(2)
    samples, stats = world.continue_from(meta, row, n=8, seed=0)
    assert samples.shape == (8, 3, 64, 64)
    assert (samples[:, :, :row] == x[:, :row]).all()
    assert len({s[:, row:].numpy().tobytes() for s in samples}) > 1
    assert torch.equal(samples, world.continue_from(meta, row, n=8, seed=0)[0])
    assert 0 < stats["acceptance"] <= 1 and stats["accepted"] >= 8


def test_video_world_is_a_pure_function_of_seed_and_index():
    world = VideoWorld(frames=8, randomness=0.3, seed=1)
    x, meta = world.example(4)
    assert x.shape == (3, 8, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, VideoWorld(frames=8, randomness=0.3, seed=1).example(4)[0])
    assert not torch.equal(x, world.example(5)[0])
    assert torch.equal(world.render(json_round_trip(meta)), x)


def test_shapes_bounce_inside_the_canvas_on_a_1_8_pixel_grid():
    world = VideoWorld(frames=200)
    for i in range(3):
        states = [from_dicts(s) for s in world.example(i)[1]["states"]]
        for before, after in zip(states, states[1:]):
            for a, b in zip(before, after):
                assert a.r <= b.x <= 64 - a.r and a.r <= b.y <= 64 - a.r
                assert abs(b.vx) == abs(a.vx) and abs(b.vy) == abs(a.vy)  # only walls change velocity
                assert (b.x * 8).is_integer() and (b.y * 8).is_integer()


def test_at_randomness_0_the_second_half_follows_from_the_first():
    world = VideoWorld(frames=16, randomness=0.0)
    x, meta = world.example(0)
    meta = json_round_trip(meta)
    # re-simulating from the recorded state at frame T/2 gives the recorded second half
    replay = simulate(from_dicts(meta["states"][8]), 8, 64, np.random.default_rng(123), 0.0)
    assert [to_dicts(s) for s in replay] == meta["states"][8:]


def test_randomness_makes_continuations_differ():
    world = VideoWorld(size=32, frames=8, randomness=0.5)
    x, meta = world.example(0)
    samples, stats = world.continue_from(meta, 2, n=4, seed=0)
    assert samples.shape == (4, 3, 6, 32, 32)
    assert len({s.numpy().tobytes() for s in samples}) == 4
    assert torch.equal(samples, world.continue_from(meta, 2, n=4, seed=0)[0])
    assert 0 <= stats["state_differs"] <= 1 and 0 < stats["acceptance"] <= 1
    assert world.continue_from(meta, 0, n=2, seed=0)[0].shape == (2, 3, 8, 32, 32)  # from the prior
    assert world.continue_from(meta, 8, n=2, seed=0)[0].shape == (2, 3, 0, 32, 32)


def test_violations_break_only_the_second_half():
    world = VideoWorld(frames=16, randomness=0.2)
    kinds = set()
    for i in range(8):
        x, _ = world.example(i)
        v, meta = world.violation(i)
        broken = meta["violation"]
        kinds.add(broken["kind"])
        assert broken["kind"] in VIOLATIONS and 8 <= broken["frame"] < 16
        assert torch.equal(v[:, :broken["frame"]], x[:, :broken["frame"]])
        assert not torch.equal(v[:, broken["frame"]], x[:, broken["frame"]])
        shown = [from_dicts(s)[broken["shape"]] for s in meta["states"][broken["frame"]:]]
        if broken["kind"] == "vanish":
            assert not any(s.visible for s in shown)
        if broken["kind"] == "recolor":
            assert all(s.color == broken["color"] for s in shown)
        if broken["kind"] == "teleport":
            assert [shown[0].x, shown[0].y] == broken["to"]
    assert kinds == set(VIOLATIONS)


def test_world_parameters_are_checked():
    with pytest.raises(UserError, match="randomness is a probability"):
        VideoWorld(randomness=1.5)
    with pytest.raises(UserError, match="at least 16 pixels"):
        ImageWorld(size=8)


def test_world_commands_write_folders_the_loaders_read_back(tmp_path, capsys):
    images, clips = tmp_path / "images", tmp_path / "clips"
    assert main(["world", "image", "--out", str(images), "--n", "8"]) == 0
    assert main(["world", "video", "--out", str(clips), "--n", "4", "--frames", "16"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 8 images to {images}" in out and f"wrote 4 clips to {clips}" in out

    image_ds = ImageFolder(images, 64)
    assert len(image_ds) == 8 and image_ds[0].shape == (3, 64, 64)
    assert torch.equal(image_ds[3], ImageWorld().example(3)[0])  # PNG is lossless
    clip_ds = VideoFolder(clips, 64, frames=16)
    assert len(clip_ds) == 4 and clip_ds[0].shape == (3, 16, 64, 64)
    error = max((clip_ds[i] - VideoWorld().example(i)[0]).abs().max().item() for i in range(4))
    assert error <= 2 / 127.5  # H.264 lossless 4:4:4: only RGB <-> YUV rounding

    lines = [json.loads(line) for line in (clips / "examples.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == [f"clips/{i:06d}.mp4" for i in range(4)]
    assert lines[1]["randomness"] == 0.0 and lines[1]["states"][0][0]["vx"] != 0
    assert json.loads((clips / "world.json").read_text())["frames"] == 16


def test_world_files_are_deterministic_and_violations_are_twins(tmp_path, capsys):
    for name in ("a", "b"):
        args = ["world", "video", "--out", str(tmp_path / name), "--n", "2", "--frames", "8",
                "--randomness", "0.5", "--seed", "7", "--violations"]
        assert main(args) == 0
    for path in sorted((tmp_path / "a").rglob("*.*")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    lines = [json.loads(line) for line in (tmp_path / "a" / "examples.jsonl").read_text().splitlines()]
    twins = [line for line in lines if line["violation"]]
    assert [t["twin"] for t in twins] == ["clips/000000.mp4", "clips/000001.mp4"]
    assert len(VideoFolder(tmp_path / "a" / "clips", 64, frames=8)) == 2


def test_world_command_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    assert main(["world", "image", "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["world", "video", "--out", str(tmp_path / "new"), "--randomness", "2"]) == 2
    assert "randomness is a probability in [0, 1], got 2.0" in capsys.readouterr().err
    assert main(["world", "image", "--out", str(tmp_path / "new"), "--dependence", "1.5"]) == 2
    assert "dependence is a probability in [0, 1], got 1.5" in capsys.readouterr().err


def test_dependence_is_recorded_and_read_back(tmp_path):
    args = ["world", "image", "--out", str(tmp_path / "w"), "--n", "2", "--size", "32", "--dependence", "0.5"]
    assert main(args) == 0
    spec = json.loads((tmp_path / "w" / "world.json").read_text())
    assert spec["dependence"] == 0.5
    assert world_from_folder(tmp_path / "w") == ImageWorld(size=32, dependence=0.5)
    for key in ("dependence", "kinds", "colors", "step"):  # a folder written before these existed
        del spec[key]
    (tmp_path / "w" / "world.json").write_text(json.dumps(spec))
    assert world_from_folder(tmp_path / "w") == ImageWorld(size=32)


def test_grids_of_images_and_clips(tmp_path):
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    write_image_grid(images, tmp_path / "g.png", nrow=3)
    assert Image.open(tmp_path / "g.png").size == (3 * 12, 2 * 12)  # 2 px padding around each
    clips = torch.stack([VideoWorld(size=32, frames=6).example(i)[0] for i in range(3)])
    gif = Image.open(write_clip_grid(clips, tmp_path / "g.gif", nrow=2))
    assert gif.n_frames == 6 and gif.size == (2 * 36, 2 * 36)
    assert load_clip(write_clip_grid(clips, tmp_path / "g.mp4", nrow=3), 36, 6).shape == (3, 6, 36, 36)
    with pytest.raises(UserError, match="use a .gif or .mp4 name"):
        write_clip_grid(clips, tmp_path / "g.avi")
