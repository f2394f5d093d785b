"""The bad-input corpus: every kind of broken or hostile file and flag a user can hand the
`halluscope` command, written small and fresh into a folder, with what must happen to each.

Each case writes its files, names the command line to run, and says the expected outcome:
- "error": exit 2 and one last stderr line `halluscope CMD: error: ...` holding `expect`;
- "skip": the command succeeds, the bad file is skipped and counted (in the token cache's
  manifest, with a reason holding `expect`), the good one beside it is used;
- "read": the command succeeds and uses the odd-but-valid file (16-bit PNG, CMYK JPEG, ...).
Hostile cases also name a marker file that must never appear (code that ran); a case may put
stand-in programs (a fake `gs`) in its bin/, which is put first on PATH while it runs.

tests/test_reliability_inputs.py runs every case; run this file to write the corpus and print
the table that docs/reliability.md records:
    .venv/bin/python tests/bad_inputs.py --out /tmp/bad
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import io
import json
import logging
import math
import os
import pathlib
import pickle
import shutil
import struct
import sys
import tempfile
import traceback
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
import yaml
from PIL import EpsImagePlugin, Image

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, write_token_cache, write_video
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.io import load_model_folder, save_model_folder
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset
from halluscope.tokenizers.config import config_to_dict

sys.path.insert(0, str(Path(__file__).parent))  # the shared test helpers, also when run as a script
from conftest import Exploit  # noqa: E402
from test_taming_import import taming_model, write_taming  # noqa: E402

SIZE, FRAMES = 32, 8


class Corpus:
    """The shared good pieces every case builds on: a tiny image tokenizer (32², vocabulary
    256) with a GPT over its grid, a good image and a good 8-frame clip."""

    def __init__(self, root: Path):
        self.root = root
        torch.manual_seed(0)
        tokenizer = build_tokenizer(tokenizer_preset("image", "tiny", resolution=SIZE))
        save_tokenizer(tokenizer, root / "vq")
        self.grid, self.vocab = tuple(tokenizer.grid), tokenizer.vocab_size
        self.gpt_folder(root / "gpt", self.vocab, self.grid)
        ImageWorld(size=SIZE).write(ImageWorld(size=SIZE).example(0)[0], root / "good.png")
        clip = VideoWorld(size=SIZE, frames=FRAMES)
        clip.write(clip.example(0)[0], root / "good.mp4")

    def gpt_folder(self, folder: Path, vocab: int, grid: tuple[int, ...]) -> Path:
        gpt = GPT(gpt_preset("tiny", vocab_size=vocab, block_size=math.prod(grid), grid=grid,
                             tokenizer=str(self.root / "vq")))
        return save_gpt(gpt, folder)

    def folder(self, case: str, bad_name: str, video: bool = False) -> tuple[Path, Path]:
        """A data folder holding one good file and (the path of) the bad one to write."""
        folder = self.root / case / "data"
        folder.mkdir(parents=True)
        good = "good.mp4" if video else "good.png"
        shutil.copy(self.root / good, folder / good)
        return folder, folder / bad_name

    def tokenize(self, case: str, data: Path, video: bool = False) -> list[str]:
        return ["tokenize", "--tokenizer", str(self.root / "vq"), "--data", str(data),
                "--out", str(self.root / case / "cache"), *(["--frames", str(FRAMES)] if video else [])]

    def sample(self, case: str, *extra: str, gpt: Path | None = None, input: Path | None = None) -> list[str]:
        return ["sample", "--gpt", str(gpt or self.root / "gpt"), "--input", str(input or self.root / "good.png"),
                "--samples", "2", "--out", str(self.root / case / "out"), *extra]

    def cache(self, case: str) -> Path:
        """A finished token cache of 4 grids to damage."""
        tokens = torch.randint(0, self.vocab, (4, *self.grid))
        out = self.root / case / "cache"
        write_token_cache(out, tokens, self.vocab, [f"x{i}" for i in range(4)], tokenizer=str(self.root / "vq"))
        return out

    def train_gpt(self, case: str, cache: Path, *extra: str) -> list[str]:
        return ["train-gpt", "--tokens", str(cache), "--out", str(self.root / case / "run"), "--steps", "2",
                "--batch", "2", "--no-progress", *extra]


@dataclass
class Case:
    name: str
    group: str
    what: str  # one line for the table
    outcome: str  # "error" | "skip" | "read"
    expect: str  # a substring of the error line, or of the skip reason
    build: Callable[[Corpus, str], list[str]]  # writes the files, returns the command line
    marker: bool = False  # hostile: root/<case>/pwned must never appear
    extra: dict = field(default_factory=dict)


CASES: list[Case] = []


def case(group: str, what: str, outcome: str, expect: str, marker: bool = False):
    def register(build):
        CASES.append(Case(build.__name__.replace("_", "-"), group, what, outcome, expect, build, marker))
        return build
    return register


def marker(c: Corpus, name: str) -> Path:
    return c.root / name / "pwned"


# ----------------------------------------------------------------------------- images


def png_chunks(path: Path, width: int, height: int, idat: bytes) -> None:
    """A PNG of width x height RGB pixels whose compressed pixel data is `idat`."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and header claiming width x height, with almost no pixel data:
    how a decompression bomb looks before it is decoded."""
    png_chunks(path, width, height, zlib.compress(b"\0" * 64))


def png_of_zeros(path: Path, width: int, height: int) -> None:
    """A real, decodable PNG of width x height black pixels: a few hundred KB on disk,
    width * height * 3 bytes once decoded (9400² is the issue's 258 KB, 265 MB bomb)."""
    z = zlib.compressobj(6)
    row = b"\0" * (1 + 3 * width)  # filter byte + RGB
    png_chunks(path, width, height, b"".join(z.compress(row) for _ in range(height)) + z.flush())


def video_of_zeros(path: Path, side: int, frames: int = 2) -> None:
    """An MP4 (MPEG-4 part 2) of black side² frames: 190 KB for two frames of 4096², each
    50 MB once decoded."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = side
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@case("images", "zero-byte .png in a folder", "skip", "0 bytes")
def image_zero_byte(c, name):
    data, bad = c.folder(name, "zero.png")
    bad.write_bytes(b"")
    return c.tokenize(name, data)


@case("images", "JPEG cut in half (header intact)", "skip", "truncated")
def image_truncated_jpeg(c, name):
    data, bad = c.folder(name, "cut.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return c.tokenize(name, data)


@case("images", "text file named .png", "skip", "not an image")
def image_text_named_png(c, name):
    data, bad = c.folder(name, "notes.png")
    bad.write_text("this is not an image\n")
    return c.tokenize(name, data)


@case("images", "decompression bomb: PNG header claiming 60000 x 60000", "skip", "too large to decode safely")
def image_decompression_bomb(c, name):
    data, bad = c.folder(name, "bomb.png")
    png_header_only(bad, 60000, 60000)
    return c.tokenize(name, data)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"


def stand_in_gs(c: Corpus, name: str) -> None:
    """A `gs` in the case's bin/ that writes the marker: Pillow runs `gs` on any EPS it opens."""
    gs = mkdir(c.root / name / "bin") / "gs"
    gs.write_text(f"#!/bin/sh\necho ran >> '{marker(c, name)}'\nexit 1\n")
    gs.chmod(0o755)


@case("images", "EPS named .png given as --input, with a stand-in `gs` on PATH (Pillow would run it)", "error",
      "not an image", marker=True)
def image_eps_input(c, name):
    stand_in_gs(c, name)
    path = c.root / name / "drawing.png"
    path.write_bytes(EPS)
    return c.sample(name, input=path)


@case("images", "EPS named .png in a folder, with a stand-in `gs` on PATH", "skip", "not an image", marker=True)
def image_eps_in_folder(c, name):
    data, bad = c.folder(name, "drawing.png")
    stand_in_gs(c, name)
    bad.write_bytes(EPS)
    return c.tokenize(name, data)


@case("images", "TIFF named .png (a format the suffixes do not promise)", "skip", "not an image")
def image_tiff_named_png(c, name):
    data, bad = c.folder(name, "scan.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(bad, format="TIFF")
    return c.tokenize(name, data)


@case("images", "decompression bomb: a real 258 KB PNG of 9400 x 9400 (under Pillow's own limit)", "skip",
      "too large to decode safely")
def image_real_bomb(c, name):
    data, bad = c.folder(name, "bomb.png")
    png_of_zeros(bad, 9400, 9400)
    return c.tokenize(name, data)


@case("images", "a FIFO named .png in a folder (a reader would wait forever)", "skip", "not a regular file")
def image_fifo(c, name):
    data, bad = c.folder(name, "pipe.png")
    os.mkfifo(bad)
    return c.tokenize(name, data)


@case("images", "16-bit grayscale PNG", "read", "")
def image_16_bit(c, name):
    data, path = c.folder(name, "gray16.png")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(path)
    return c.tokenize(name, data)


@case("images", "CMYK JPEG", "read", "")
def image_cmyk(c, name):
    data, path = c.folder(name, "cmyk.jpg")
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(path, quality=95)
    return c.tokenize(name, data)


@case("images", "animated GIF (its first frame is used)", "read", "")
def image_animated_gif(c, name):
    data, path = c.folder(name, "anim.gif")
    frames = [Image.new("RGB", (40, 40), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return c.tokenize(name, data)


@case("images", "text file named .png given as the one --input", "error", "not an image")
def image_single_file_text(c, name):
    path = c.root / name / "notes.png"
    path.parent.mkdir(parents=True)
    path.write_text("hello")
    return c.sample(name, input=path)


@case("images", "a folder with no usable image", "error", "no usable image file")
def image_folder_all_bad(c, name):
    data = c.root / name / "data"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"")
    return c.tokenize(name, data)


# ----------------------------------------------------------------------------- videos


@case("videos", "zero-byte .mp4 in a folder", "skip", "0 bytes")
def video_zero_byte(c, name):
    data, bad = c.folder(name, "zero.mp4", video=True)
    bad.write_bytes(b"")
    return c.tokenize(name, data, video=True)


@case("videos", "MP4 cut in half (its index is lost)", "skip", "unreadable video")
def video_truncated_mp4(c, name):
    data, bad = c.folder(name, "cut.mp4", video=True)
    good = (c.root / "good.mp4").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    return c.tokenize(name, data, video=True)


def write_audio_only_mp4(path: pathlib.Path) -> None:
    """An MP4 with a quarter second of silence and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@case("videos", "audio-only MP4", "skip", "no video stream")
def video_audio_only(c, name):
    data, bad = c.folder(name, "sound.mp4", video=True)
    write_audio_only_mp4(bad)
    return c.tokenize(name, data, video=True)


@case("videos", "one-frame video (a clip needs 8)", "skip", "too short: 1 frames")
def video_one_frame(c, name):
    data, bad = c.folder(name, "still.mp4", video=True)
    write_video(torch.zeros(3, 1, SIZE, SIZE), bad, fps=8)
    return c.tokenize(name, data, video=True)


@case("videos", "variable frame rate MP4 (frames 20 to 90 ms apart)", "read", "")
def video_variable_frame_rate(c, name):
    data, path = c.folder(name, "vfr.mp4", video=True)
    gaps_ms = [20, 90, 40, 60, 20, 80, 30, 50, 70, 40]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = SIZE
        stream.pix_fmt, stream.codec_context.time_base = "yuv420p", Fraction(1, 1000)
        pts = 0
        for i, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += gap
        container.mux(stream.encode())
    return c.tokenize(name, data, video=True)


@case("videos", "MP4 named .mkv (content decides)", "read", "")
def video_wrong_extension(c, name):
    data, path = c.folder(name, "really_mp4.mkv", video=True)
    shutil.copy(c.root / "good.mp4", path)
    return c.tokenize(name, data, video=True)


@case("videos", "MP4 of 4096 x 4096 frames, 190 KB (decoded: 50 MB a frame)", "skip",
      "frames too large to decode safely")
def video_frames_too_large(c, name):
    data, bad = c.folder(name, "huge.mp4", video=True)
    video_of_zeros(bad, 4096)
    return c.tokenize(name, data, video=True)


@case("videos", "text file named .mp4 holding an ffconcat script that reads another file", "skip",
      "not a video container this reads")
def video_ffconcat_script(c, name):
    data, bad = c.folder(name, "playlist.mp4", video=True)
    bad.write_text("ffconcat version 1.0\nfile good.mp4\n")  # FFmpeg's concat demuxer would follow it
    return c.tokenize(name, data, video=True)


@case("videos", "text file named .avi", "skip", "unreadable video")
def video_text_named_avi(c, name):
    data, bad = c.folder(name, "notes.avi", video=True)
    bad.write_text("a text file named like a video\n")
    return c.tokenize(name, data, video=True)


# ----------------------------------------------------------------------------- checkpoints


def gpt_copy(c: Corpus, name: str, edit_config=None, edit_weights=None) -> Path:
    """A copy of the good GPT folder with its config and/or weights file changed."""
    folder = c.root / name / "gpt"
    shutil.copytree(c.root / "gpt", folder)
    if edit_config is not None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit_config(config)))
    if edit_weights is not None:
        edit_weights(folder / "model.safetensors")
    return folder


@case("checkpoints", "GPT model.safetensors cut in half", "error", "are unreadable")
def gpt_truncated_safetensors(c, name):
    def cut(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return c.sample(name, gpt=gpt_copy(c, name, edit_weights=cut))


@case("checkpoints", "GPT weights of another shape than its config", "error", "do not fit the GPT config")
def gpt_wrong_shapes(c, name):
    return c.sample(name, gpt=gpt_copy(c, name, edit_config=lambda cfg: {**cfg, "n_embd": 128}))


@case("checkpoints", "tokenizer weights missing a key", "error", "missing weight")
def tokenizer_missing_key(c, name):
    config, weights = load_model_folder(c.root / "vq")
    weights.pop(sorted(weights)[0])
    save_model_folder(c.root / name / "vq", config, weights)
    return c.sample(name, "--tokenizer", str(c.root / name / "vq"))


@case("checkpoints", "GPT whose weights hold NaN", "error", "logits are not finite")
def gpt_nan_weights(c, name):
    def poison(path):
        config, weights = load_model_folder(path.parent)
        weights["head.weight"][0, 0] = float("nan")
        save_model_folder(path.parent, config, weights)
    return c.sample(name, "--tokenizer", str(c.root / "vq"), gpt=gpt_copy(c, name, edit_weights=poison))


@case("checkpoints", "GPT config with 4 layers, weights with 2 (checked from the file's header)", "error",
      "do not fit the GPT config: missing weight `blocks.2")
def gpt_more_layers_than_weights(c, name):
    return c.sample(name, gpt=gpt_copy(c, name, edit_config=lambda cfg: {**cfg, "n_layer": 4}))


@case("checkpoints", "minGPT checkpoint whose token embedding is 3-D, import-gpt", "error",
      "a token embedding is (vocab, width)")
def mingpt_embedding_3d(c, name):
    path = mkdir(c.root / name) / "gpt.pt"
    torch.save({"tok_emb.weight": torch.zeros(4, 4, 4), "pos_emb": torch.zeros(1, 4, 4)}, path)
    return ["import-gpt", "--ckpt", str(path), "--n-layer", "1", "--n-head", "1", "--out", str(c.root / name / "o")]


def evil_payload(c: Corpus, name: str) -> dict:
    """A real state dict plus an object whose unpickling would write the marker file."""
    return {"state_dict": taming_model().state_dict(), "callbacks": Exploit(str(marker(c, name)))}


@case("checkpoints", "pickle whose __reduce__ writes a file (torch zip format), import-gpt", "error",
      "refusing checkpoint", marker=True)
def pickle_runs_code_zip(c, name):
    path = c.root / name / "evil.pt"
    path.parent.mkdir(parents=True)
    torch.save(evil_payload(c, name), path)
    return ["import-gpt", "--ckpt", str(path), "--n-layer", "2", "--n-head", "2", "--out", str(c.root / name / "o")]


@case("checkpoints", "plain pickle whose __reduce__ writes a file, import-taming", "error", "refusing checkpoint",
      marker=True)
def pickle_runs_code_plain(c, name):
    config, _ = write_taming(mkdir(c.root / name), taming_model())
    path = c.root / name / "evil.ckpt"
    path.write_bytes(pickle.dumps(evil_payload(c, name)))
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "o")]


class EvalExploit:
    """Unpickling calls the builtin eval on code that writes a file (builtins are not all inert)."""

    def __init__(self, path: Path):
        self.code = f"open({str(path)!r}, 'w').write('code ran')"

    def __reduce__(self):
        return (eval, (self.code,))


@case("checkpoints", "legacy torch pickle calling builtins.eval", "error", "refusing checkpoint", marker=True)
def pickle_calls_eval(c, name):
    config, _ = write_taming(mkdir(c.root / name), taming_model())
    path = c.root / name / "evil.ckpt"
    torch.save({"state_dict": taming_model().state_dict(), "x": EvalExploit(marker(c, name))}, path,
               _use_new_zipfile_serialization=False)
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "o")]


def exotic_hyper_parameters() -> dict:
    """What Lightning checkpoints carry beside the weights."""
    import omegaconf

    return {"config": omegaconf.OmegaConf.create({"model": {"lr": 4.5e-6, "ddconfig": {"ch": 32}}}),
            "args": argparse.Namespace(lr=1e-4, paths=[pathlib.PurePosixPath("/data")]),
            "when": datetime.datetime(2021, 5, 1), "scale": np.float64(0.18), "ids": np.arange(3),
            "optimizer": functools.partial(torch.optim.Adam, lr=1e-4)}


@case("checkpoints", "Lightning checkpoint with OmegaConf / Namespace / numpy / partial hyper-parameters",
      "read", "")
def lightning_exotic_hparams(c, name):
    config, path = write_taming(mkdir(c.root / name), taming_model())
    torch.save({"state_dict": taming_model().state_dict(), "hyper_parameters": exotic_hyper_parameters(),
                "epoch": 3}, path)
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "vq")]


@case("checkpoints", "the same in the old (non-zip) torch format", "read", "")
def lightning_exotic_hparams_legacy(c, name):
    config, path = write_taming(mkdir(c.root / name), taming_model())
    torch.save({"state_dict": taming_model().state_dict(), "hyper_parameters": exotic_hyper_parameters()}, path,
               _use_new_zipfile_serialization=False)
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "vq")]


@case("checkpoints", "checkpoint holding a filled dict subclass (defaultdict), which torch cannot rebuild inertly",
      "error", "cannot rebuild it safely")
def checkpoint_dict_subclass(c, name):
    config, path = write_taming(mkdir(c.root / name), taming_model())
    torch.save({"state_dict": taming_model().state_dict(), "seen": collections.defaultdict(list, a=[1])}, path)
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "vq")]


@case("checkpoints", "checkpoint file cut in half", "error", "unreadable")
def checkpoint_truncated(c, name):
    config, path = write_taming(mkdir(c.root / name), taming_model())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["import-taming", "--config", str(config), "--ckpt", str(path), "--out", str(c.root / name / "vq")]


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- configs


@case("configs", "GPT config.json without its `kind`", "error", "not a GPT")
def gpt_config_missing_kind(c, name):
    return c.sample(name, gpt=gpt_copy(c, name, edit_config=lambda cfg: {k: v for k, v in cfg.items() if k != "kind"}))


@case("configs", "GPT config.json with a string where a number belongs", "error", "is malformed")
def gpt_config_wrong_type(c, name):
    return c.sample(name, gpt=gpt_copy(c, name, edit_config=lambda cfg: {**cfg, "n_layer": "two"}))


@case("configs", "tokenizer config.json without `arch`", "error", "arch None")
def tokenizer_config_missing_arch(c, name):
    folder = shutil.copytree(c.root / "vq", c.root / name / "vq")
    config = json.loads((folder / "config.json").read_text())
    del config["arch"]
    (folder / "config.json").write_text(json.dumps(config))
    return c.sample(name, "--tokenizer", str(folder))


@case("configs", "taming YAML missing n_embed", "error", "missing `n_embed`")
def yaml_missing_key(c, name):
    config, ckpt = write_taming(mkdir(c.root / name), taming_model())
    config.write_text(config.read_text().replace("n_embed:", "n_embedding:"))
    return ["import-taming", "--config", str(config), "--ckpt", str(ckpt), "--out", str(c.root / name / "vq")]


@case("configs", "taming YAML with a !!python/object/apply tag (would run os.system)", "error", "not valid YAML",
      marker=True)
def yaml_python_tag(c, name):
    config, ckpt = write_taming(mkdir(c.root / name), taming_model())
    config.write_text(f"model: !!python/object/apply:os.system ['touch {marker(c, name)}']\n")
    return ["import-taming", "--config", str(config), "--ckpt", str(ckpt), "--out", str(c.root / name / "vq")]


def gpt_config_case(name: str, what: str, key: str, value: str, expect: str) -> None:
    """A GPT config.json whose `key` holds the JSON text `value` (1e400 and NaN need the text)."""
    def build(c, case_name):
        folder = gpt_copy(c, case_name)
        text = (folder / "config.json").read_text()
        config = json.loads(text)
        config[key] = "@"
        (folder / "config.json").write_text(json.dumps(config).replace('"@"', value))
        return c.sample(case_name, gpt=folder)
    CASES.append(Case(name, "configs", what, "error", expect, build))


gpt_config_case("gpt-vocab-fraction", "GPT config vocab_size: 1.5", "vocab_size", "1.5",
                "vocab_size must be a whole number, got 1.5")
gpt_config_case("gpt-block-size-1e400", "GPT config block_size: 1e400 (JSON reads it as inf)", "block_size", "1e400",
                "block_size must be a whole number, got inf")
gpt_config_case("gpt-dropout-nan", "GPT config dropout: NaN", "dropout", "NaN", "dropout must be a finite number")
gpt_config_case("gpt-negative-n-cond", "GPT config n_cond: -1", "n_cond", "-1", "n_cond must be in [0, 65536], got -1")
gpt_config_case("gpt-layers-1e7", "GPT config n_layer: 1e7 (building it would take hours)", "n_layer", "1e7",
                "n_layer must be a whole number")
gpt_config_case("gpt-layers-ten-million", "GPT config n_layer: 10000000", "n_layer", "10000000",
                "n_layer must be in [1, 1024], got 10000000")


def tokenizer_config_case(name: str, what: str, edit: Callable[[dict], dict], expect: str) -> None:
    def build(c, case_name):
        folder = shutil.copytree(c.root / "vq", c.root / case_name / "vq")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit(config)))
        return c.sample(case_name, "--tokenizer", str(folder))
    CASES.append(Case(name, "configs", what, "error", expect, build))


tokenizer_config_case("tokenizer-res-blocks-1e8", "tokenizer config num_res_blocks: 1e8",
                      lambda cfg: {**cfg, "num_res_blocks": 1e8}, "num_res_blocks must be a whole number")
tokenizer_config_case("tokenizer-negative-ch", "tokenizer config ch: -32", lambda cfg: {**cfg, "ch": -32},
                      "ch must be in [1, 4096], got -32")
tokenizer_config_case("tokenizer-empty-ch-mult", "tokenizer config ch_mult: []", lambda cfg: {**cfg, "ch_mult": []},
                      "ch_mult must be a list of 1 to 8 whole numbers")
tokenizer_config_case("tokenizer-3d-huge-patch", "3D tokenizer config patch: [1, 1e6, 1]",
                      lambda cfg: {**config_to_dict(tokenizer_preset("video", "tiny")), "patch": [1, 10**6, 1]},
                      "patch[1] must be in [1, 64]")


def taming_yaml_case(name: str, what: str, key: str, value, expect: str) -> None:
    """A taming YAML whose ddconfig `key` holds `value`."""
    def build(c, case_name):
        config, ckpt = write_taming(mkdir(c.root / case_name), taming_model())
        doc = yaml.safe_load(config.read_text())
        doc["model"]["params"]["ddconfig"][key] = value
        config.write_text(yaml.safe_dump(doc))
        return ["import-taming", "--config", str(config), "--ckpt", str(ckpt), "--out", str(c.root / case_name / "vq")]
    CASES.append(Case(name, "configs", what, "error", expect, build))


taming_yaml_case("yaml-negative-ch", "taming YAML with ch: -32", "ch", -32, "ch must be in [1, 4096], got -32")
taming_yaml_case("yaml-res-blocks", "taming YAML with num_res_blocks: 100000000", "num_res_blocks", 100000000,
                 "num_res_blocks must be in [0, 64]")
taming_yaml_case("yaml-ch-mult-text", "taming YAML with ch_mult: a string", "ch_mult", "1,2",
                 "ch_mult must be a list")


# ----------------------------------------------------------------------------- model folders


@case("model folders", "GPT config.json a symlink to /dev/zero (a reader would fill memory)", "error",
      "is a device, not a regular file")
def config_dev_zero(c, name):
    return c.sample(name, gpt=gpt_with_special_file(c, name, "config.json", lambda p: p.symlink_to("/dev/zero")))


@case("model folders", "GPT config.json a FIFO (a reader would wait forever)", "error", "is a FIFO")
def config_fifo(c, name):
    return c.sample(name, gpt=gpt_with_special_file(c, name, "config.json", os.mkfifo))


@case("model folders", "GPT model.safetensors a FIFO", "error", "is a FIFO")
def weights_fifo(c, name):
    return c.sample(name, gpt=gpt_with_special_file(c, name, "model.safetensors", os.mkfifo))


def gpt_with_special_file(c: Corpus, name: str, file: str, make) -> Path:
    """A copy of the good GPT folder whose `file` is replaced by what make(path) creates there."""
    folder = gpt_copy(c, name)
    (folder / file).unlink()
    make(folder / file)
    return folder


@case("model folders", "config.json of 2 MB", "error", "is larger than 1,048,576 bytes")
def config_too_large(c, name):
    folder = gpt_copy(c, name)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "padding": "x" * (2 << 20)}))
    return c.sample(name, gpt=folder)


@case("model folders", "tokenize --tokenizer given a training run's folder (which holds model/)", "error",
      "is a training run's folder, not a model folder; pass")
def tokenize_run_folder(c, name):
    run = mkdir(c.root / name / "tokenizer-run")
    shutil.copytree(c.root / "vq", run / "model")
    return ["tokenize", "--tokenizer", str(run), "--data", str(c.root), "--out", str(c.root / name / "cache")]


# ----------------------------------------------------------------------------- pairs


@case("pairs", "GPT vocabulary (300) differs from the tokenizer's codebook (256)", "error", "GPT's vocabulary has 300")
def gpt_vocab_differs(c, name):
    return c.sample(name, gpt=c.gpt_folder(c.root / name / "gpt", 300, c.grid))


@case("pairs", "GPT trained on another token grid", "error", "token grid")
def gpt_grid_differs(c, name):
    return c.sample(name, gpt=c.gpt_folder(c.root / name / "gpt", c.vocab, (4, 4)))


# ----------------------------------------------------------------------------- token caches


@case("token caches", "manifest.json that is not JSON", "error", "not valid JSON")
def cache_corrupt_manifest(c, name):
    cache = c.cache(name)
    (cache / "manifest.json").write_text('{"grid": [8, 8], "vocab')
    return c.train_gpt(name, cache)


@case("token caches", "shard cut in half", "error", "is damaged")
def cache_truncated_shard(c, name):
    cache = c.cache(name)
    shard = cache / "shards" / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return c.train_gpt(name, cache)


@case("token caches", "unfinished cache (an interrupted tokenize)", "error", "is unfinished")
def cache_unfinished(c, name):
    cache = c.cache(name)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    return c.train_gpt(name, cache)


@case("token caches", "shard holding a token outside the vocabulary", "error", "outside its vocabulary")
def cache_token_out_of_range(c, name):
    cache = c.cache(name)
    shard = cache / "shards" / "shard_00000.npy"
    tokens = np.load(shard)
    tokens[1, 2, 3] = 9999
    np.save(shard, tokens)
    return c.train_gpt(name, cache)


@case("token caches", "shard holding negative tokens (int32)", "error", "holds token -3, outside its vocabulary")
def cache_negative_tokens(c, name):
    cache = c.cache(name)
    shard = cache / "shards" / "shard_00000.npy"
    tokens = np.load(shard).astype(np.int32)
    tokens[0, 0, 0] = -3
    np.save(shard, tokens)
    return c.train_gpt(name, cache)


@case("token caches", "shard holding floats", "error", "holds float64 values, not token ids")
def cache_float_shard(c, name):
    cache = c.cache(name)
    shard = cache / "shards" / "shard_00000.npy"
    np.save(shard, np.load(shard).astype(np.float64))
    return c.train_gpt(name, cache)


@case("token caches", "manifest naming a shard outside the cache (../)", "error", "outside the cache")
def cache_shard_outside(c, name):
    cache = c.cache(name)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../../good.npy"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return c.train_gpt(name, cache)


# ----------------------------------------------------------------------------- CLI values


def flag_case(name: str, what: str, expect: str, argv: Callable[[Corpus, str], list[str]]) -> None:
    CASES.append(Case(name, "CLI values", what, "error", expect, argv))


for value in ("0", "1", "1.5"):
    flag_case(f"context-{value}", f"sample --context {value}", "strictly between 0 and 1",
              lambda c, name, v=value: c.sample(name, "--context", v))
flag_case("samples-0", "sample --samples 0", "--samples must be at least 1",
          lambda c, name: c.sample(name) + ["--samples", "0"])
flag_case("samples-ten-million", "sample --samples 10000000 (a 650 GiB key/value cache)", "need about",
          lambda c, name: c.sample(name) + ["--samples", "10000000"])
flag_case("temperature-negative", "sample --temperature -1", "temperature must be a positive",
          lambda c, name: c.sample(name, "--temperature", "-1"))
flag_case("temperature-inf", "sample --temperature inf", "temperature must be a positive",
          lambda c, name: c.sample(name, "--temperature", "inf"))
flag_case("top-p-over-1", "sample --top-p 1.5", "top_p must be in (0, 1]",
          lambda c, name: c.sample(name, "--top-p", "1.5"))
flag_case("probe-context-1", "probe --context 0.5,1", "strictly between 0 and 1",
          lambda c, name: ["probe", "--gpt", str(c.root / "gpt"), "--data", str(c.root), "--context", "0.5,1",
                           "--out", str(c.root / name / "probe")])
flag_case("unknown-preset", "train-gpt --preset huge", "invalid choice: 'huge'",
          lambda c, name: c.train_gpt(name, c.root / "none", "--preset", "huge"))
flag_case("unknown-model-folder", "sample --gpt a folder that does not exist", "model folder not found",
          lambda c, name: c.sample(name, gpt=c.root / name / "missing"))
flag_case("train-steps-0", "train-gpt --steps 0", "--steps must be at least 1",
          lambda c, name: c.train_gpt(name, c.root / "none") + ["--steps", "0"])
flag_case("tokenize-batch-0", "tokenize --batch 0", "--batch must be at least 1",
          lambda c, name: c.tokenize(name, c.root) + ["--batch", "0"])


# ----------------------------------------------------------------------------- running


@dataclass
class Result:
    code: int
    stderr: str
    manifest: dict | None  # the token cache a tokenize case wrote, if any

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run(c: Corpus, case: Case) -> Result:
    """Build `case` and run its command line in this process, as the `halluscope` entry point
    would (a SystemExit from argparse is its exit code); any other exception propagates."""
    argv = case.build(c, case.name)
    stderr = io.StringIO()
    stand_ins = c.root / case.name / "bin"
    path = os.environ["PATH"]
    if stand_ins.is_dir():
        os.environ["PATH"] = f"{stand_ins}{os.pathsep}{path}"
        EpsImagePlugin.gs_binary = None  # Pillow remembers whether it found a `gs`: look again
    # The data layer's warnings reach stderr through logging's last resort, which pytest
    # replaces with its own capture: route them to the same place in both.
    warnings_to_stderr = logging.StreamHandler(stderr)
    log = logging.getLogger("halluscope.data")
    log.addHandler(warnings_to_stderr)
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        finally:
            log.removeHandler(warnings_to_stderr)
            os.environ["PATH"] = path
    manifest = c.root / case.name / "cache" / "manifest.json"
    return Result(code, stderr.getvalue(), json.loads(manifest.read_text()) if argv[0] == "tokenize" and
                  manifest.is_file() else None)


def check(c: Corpus, case: Case, result: Result) -> str:
    """What went wrong with `result` for `case`, or "" when it behaved as the case says."""
    if "Traceback" in result.stderr:
        return "traceback on stderr"
    if case.marker and marker(c, case.name).exists():
        return "code from the file ran"
    if case.outcome == "error":
        if result.code != 2:
            return f"exit code {result.code}, expected 2"
        line = result.last_line
        if not (line.startswith("halluscope ") and ": error: " in line and case.expect in line):
            return f"last stderr line {line!r} lacks {case.expect!r}"
        return ""
    if result.code != 0:
        return f"exit code {result.code}: {result.last_line}"
    if result.manifest is None:
        return ""  # not a tokenize case (an import): success is the check
    skipped = result.manifest["skipped"]
    if case.outcome == "skip":
        if result.manifest["count"] != 1 or len(skipped) != 1 or case.expect not in skipped[0]["reason"]:
            return f"expected 1 example and 1 skip ({case.expect!r}), got {result.manifest['count']} and {skipped}"
        if f"skipping {c.root / case.name / 'data' / skipped[0]['source']}" not in result.stderr:
            return "no warning line naming the skipped file"
        return ""
    if result.manifest["count"] != 2 or skipped:
        return f"expected both files used, got {result.manifest['count']} examples, skipped {skipped}"
    return ""


def table(rows: list[tuple[Case, Result, str]]) -> str:
    lines = ["| # | group | input | outcome | message / reason | ok |", "|---|---|---|---|---|---|"]
    for i, (case, result, problem) in enumerate(rows, 1):
        if case.outcome == "error":
            shown = result.last_line
        elif case.outcome == "skip" and result.manifest and result.manifest["skipped"]:
            shown = "skipped: " + result.manifest["skipped"][0]["reason"]
        else:
            shown = "used"
        shown = shown.replace(str(CORPUS_ROOT[0]), "…").replace("|", "\\|")
        lines.append(f"| {i} | {case.group} | {case.what} | {case.outcome} | {shown[:140]} | "
                     f"{'yes' if not problem else 'NO: ' + problem} |")
    return "\n".join(lines)


CORPUS_ROOT: list[Path] = [Path("/")]  # for shortening paths in the table


def main_script(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the bad-input corpus, run every case through the "
                                                 "`halluscope` command, print the table (markdown).")
    parser.add_argument("--out", help="folder to write the corpus into (default: a temporary folder, removed)")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        root = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        CORPUS_ROOT[0] = root
        corpus = Corpus(root)
        rows = []
        for case in CASES:
            if args.only and args.only not in case.name:
                continue
            try:
                result = run(corpus, case)
                problem = check(corpus, case, result)
            except Exception:
                result, problem = Result(-1, traceback.format_exc(), None), "uncaught exception"
            rows.append((case, result, problem))
        print(table(rows))
        failures = sum(bool(p) for _, _, p in rows)
        print(f"\n{len(rows)} cases, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_script())
