"""`halluscope tokenize`: caches that match their manifest, resume after an interruption,
do no work when finished, and list the files they skipped."""

import json
from pathlib import Path

import pytest
import torch

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, load_image, write_world
from halluscope.data.token_cache import TokenCache
from halluscope.errors import UserError
from halluscope.tokenizers.config import VQGANConfig
from halluscope.tokenizers.load import build_tokenizer, load_tokenizer, save_tokenizer
from halluscope.tokenizers.vqgan import VQGAN, VQTokenizer

CONFIG = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 2), z_channels=8, embed_dim=8, n_embed=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """200 image-world pictures as PNG files (images/000000.png ...)."""
    folder = tmp_path_factory.mktemp("data") / "world"
    write_world(ImageWorld(size=64, seed=0), folder, 200)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tok") / "vq"
    save_tokenizer(build_tokenizer(CONFIG), folder)
    return folder


def count_encodes(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Record the batch size of every VQGAN.encode call; optionally interrupt after some."""
    calls, encode = [], VQTokenizer.encode  # the original, even when patched twice

    def counting(self, x):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt
        calls.append(len(x))
        return encode(self, x)

    monkeypatch.setattr(VQGAN, "encode", counting)
    return calls


def tokenize(tokenizer, data, out, *extra) -> int:
    return main(["tokenize", "--tokenizer", str(tokenizer), "--data", str(data), "--out", str(out), *extra])


@pytest.mark.slow
def test_cache_of_200_world_images_matches_and_second_run_does_nothing(tmp_path, world, tokenizer, monkeypatch, capsys):
    calls = count_encodes(monkeypatch)
    assert tokenize(tokenizer, world, tmp_path / "cache", "--batch", "64", "--shard-size", "128") == 0
    assert sum(calls) == 200
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert (manifest["count"], manifest["grid"], manifest["vocab_size"]) == (200, [16, 16], 32)
    assert manifest["complete"] and manifest["skipped"] == [] and len(manifest["shards"]) == 2

    cache = TokenCache(tmp_path / "cache")
    assert len(cache) == 200 and cache.grid == (16, 16) and cache.vocab_size == 32
    assert cache.sources[:2] == ["images/000000.png", "images/000001.png"] and cache.sources[-1] == "images/000199.png"
    tok = load_tokenizer(tokenizer)
    with torch.no_grad():
        for i in (0, 150, 199):
            assert torch.equal(cache[i], tok.encode(load_image(world / f"images/{i:06d}.png", 32)[None])[0])

    calls.clear()
    assert tokenize(tokenizer, world, tmp_path / "cache", "--resume") == 0
    assert calls == [] and "nothing to do" in capsys.readouterr().out
    assert tokenize(tokenizer, world, tmp_path / "cache") == 2  # no silent overwrite
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(tmp_path, world, tokenizer, monkeypatch, capsys):
    count_encodes(monkeypatch, fail_after=3)  # batches of 25, shards of 50: dies in shard 1
    assert tokenize(tokenizer, world, tmp_path / "cache", "--batch", "25", "--shard-size", "50") == 130
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["count"] == 50
    with pytest.raises(UserError, match="unfinished"):
        TokenCache(tmp_path / "cache")

    calls = count_encodes(monkeypatch)
    assert tokenize(tokenizer, world, tmp_path / "cache", "--batch", "25", "--shard-size", "50", "--resume") == 0
    assert sum(calls) == 150  # only what was missing
    assert tokenize(tokenizer, world, tmp_path / "whole", "--batch", "25", "--shard-size", "50") == 0
    resumed, whole = TokenCache(tmp_path / "cache"), TokenCache(tmp_path / "whole")
    assert (resumed.sequences() == whole.sequences()).all() and resumed.sources == whole.sources

    # a different tokenizer cannot continue this cache
    other = tmp_path / "other"
    save_tokenizer(build_tokenizer(CONFIG), other)
    assert tokenize(other, world, tmp_path / "cache", "--resume") == 2
    assert "tokenizer_hash" in capsys.readouterr().err


def test_bad_files_are_skipped_and_listed(tmp_path, tokenizer):
    data = tmp_path / "data"
    write_world(ImageWorld(size=64, seed=1), data, 5)
    (data / "not_an_image.png").write_text("hello")
    good = (data / "images/000000.png").read_bytes()
    (data / "truncated.png").write_bytes(good[: len(good) // 2])  # header fine, pixels cut off
    assert tokenize(tokenizer, data, tmp_path / "cache") == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["count"] == 5
    assert sorted(s["source"] for s in manifest["skipped"]) == ["not_an_image.png", "truncated.png"]
    assert all(s["reason"] for s in manifest["skipped"])
    assert "truncated.png" not in TokenCache(tmp_path / "cache").sources
    assert tokenize(tmp_path / "no_tokenizer", data, tmp_path / "other") == 2


def test_device_flag_encodes_on_the_cpu_and_refuses_a_missing_gpu(tmp_path, tokenizer, capsys):
    data = tmp_path / "data"
    write_world(ImageWorld(size=64, seed=1), data, 3)
    assert tokenize(tokenizer, data, tmp_path / "cache", "--device", "cpu") == 0
    assert TokenCache(tmp_path / "cache").manifest["count"] == 3
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert tokenize(tokenizer, data, tmp_path / "other", "--device", "cuda") == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and err.count("\n") == 1


def test_image_tokenizer_tokenizes_clips_frame_by_frame(tmp_path, tokenizer):
    clips = tmp_path / "clips"
    write_world(VideoWorld(size=32, frames=4, seed=0), clips, 2)
    assert tokenize(tokenizer, clips, tmp_path / "cache", "--frames", "4") == 0
    cache = TokenCache(tmp_path / "cache")
    assert len(cache) == 2 and cache.grid == (4, 16, 16) and cache.manifest["kind"] == "video"
