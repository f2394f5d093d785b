"""The bad-input corpus: every kind of broken or hostile file and flag a user can hand the
`halluscope` command, written small and fresh into a folder, with what must happen to each.

Each case writes its files, names the command line to run, and says the expected outcome:
- "error": exit 2 and one last stderr line `halluscope CMD: error: ...` holding `expect`;
- "skip": the command succeeds, the bad file is skipped and counted (in the token cache's
  manifest, with a reason holding `expect`), the good one beside it is used;
- "read": the command succeeds and uses the odd-but-valid file (16-bit PNG, CMYK JPEG, ...).
Hostile cases also name a marker file that must never appear (code that ran).

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
from PIL import Image

from halluscope.cli import main
from halluscope.data import ImageWorld, VideoWorld, write_token_cache, write_video
from halluscope.gpt.checkpoint import save_gpt
from halluscope.gpt.config import preset as gpt_preset
from halluscope.gpt.model import GPT
from halluscope.io import load_model_folder, save_model_folder
from halluscope.tokenizers import build_tokenizer, save_tokenizer
from halluscope.tokenizers import preset as tokenizer_preset

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


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and header claiming width x height, with almost no pixel data:
    how a decompression bomb looks before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


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
