"""One request of the app, without any UI: check and read an upload, draw N continuations of
it, measure them with the probes' metrics, and write what the page shows (PNGs, GIFs for
clips, the entropy heat map, the sweep plot) into a fresh folder per request."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Figure objects without pyplot: no global figure state shared between request threads.
from matplotlib.figure import Figure

from halluscope.app.models import Model
from halluscope.data import ImageWorld, VideoWorld, load_clip, load_image, write_png
from halluscope.data.images import IMAGE_SUFFIXES
from halluscope.data.media import write_gif
from halluscope.data.videos import VIDEO_SUFFIXES
from halluscope.errors import UserError
from halluscope.gpt.settings import SamplingSettings
from halluscope.probes import metrics
from halluscope.probes.context import check_encoding, shown
from halluscope.probes.probe import measure as probe_measure
from halluscope.probes.probe import prepare
from halluscope.probes.sample import Continuations, continue_example
from halluscope.probes.samplers import Example, GPTSampler

MAX_UPLOAD_MB = 64
MAX_SAMPLES = 16
EXAMPLES = 6  # world examples written for each model shape
GIF_FPS = 8
DISPLAY_PX = 192  # small model inputs (32², 64²) are enlarged to at least this for the page
SWEEP_POINTS = 8  # most context sizes one sweep tries
OUTPUTS = "outputs"  # the cache's folder of request files (the page serves it)
KEEP_OUTPUTS_S = 3600  # request folders older than this are removed when a new one is made
KEEP_UPLOADS_S = 3600  # uploads (and gradio's copies of outputs) older than this are deleted


@dataclass
class Settings:
    samples: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    encoding: str = "visible"  # how the context is encoded (probes/context.py)
    cfg_scale: float = 1.0  # 1: no guidance
    label: int | None = None  # a class-conditional GPT's class (None: its null condition)

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings.from_flags(self.temperature, self.top_k, self.top_p, self.cfg_scale)

    @property
    def cond(self) -> tuple[int, ...] | None:
        return None if self.label is None else (self.label,)

    def check(self) -> None:
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise UserError(f"number of samples must be between 1 and {MAX_SAMPLES}, got {self.samples}")
        _ = self.sampling  # building it checks it
        check_encoding(self.encoding)

    def sample(self, model: Model, x: torch.Tensor, units: int, progress: bool = False) -> Continuations:
        """N continuations of x given its first `units` token rows / latent frames."""
        self.check()
        generator = torch.Generator(model.gpt.device).manual_seed(self.seed)
        return continue_example(model.gpt, model.tokenizer, x, units / model.grid[0], self.samples, self.sampling,
                                generator, cond=self.cond and list(self.cond), progress=progress,
                                encoding=self.encoding)


def read_input(path: str | os.PathLike | None, model: Model) -> torch.Tensor:
    """An uploaded file as the model's input: (3, R, R) for image models, (3, T, R, R) for
    clip models. Every way the file can be wrong is one UserError a person can act on."""
    if path is None:
        raise UserError("upload an image or a clip, or pick an example, first")
    path = Path(path)
    if not path.is_file():
        raise UserError("the uploaded file is gone; upload it again")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise UserError(f"{path.name} is too large ({size_mb:.0f} MB; the limit is {MAX_UPLOAD_MB} MB)")
    suffix = path.suffix.lower()
    t = model.tokenizer
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise UserError(f"{path.name} is not an image or a video: use one of "
                        f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}")
    if (suffix in VIDEO_SUFFIXES) != (t.kind == "video"):
        wanted = "a video (" + ", ".join(VIDEO_SUFFIXES) + ")" if t.kind == "video" else \
            "an image (" + ", ".join(IMAGE_SUFFIXES) + ")"
        raise UserError(f"{model.name} is a {t.kind} model: upload {wanted}, not {path.name}")
    try:
        if t.kind == "image":
            return load_image(path, t.resolution)
        return load_clip(path, t.resolution, t.frames)
    except UserError as e:  # the message names the server's temporary path; name the user's file
        raise UserError(str(e).replace(str(path), path.name)) from None


def example_files(model: Model, cache: Path) -> list[Path]:
    """World examples at the model's input size, written into `cache` the first time."""
    t = model.tokenizer
    if t.resolution < 16:  # the smallest world there is
        return []
    world = ImageWorld(size=t.resolution) if t.kind == "image" else VideoWorld(size=t.resolution, frames=t.frames)
    folder = cache / "examples" / (f"image-{t.resolution}" if t.kind == "image" else f"video-{t.resolution}x{t.frames}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(EXAMPLES):
        path = folder / f"world-{i}{world.suffix}"
        if not path.is_file():
            world.write(world.example(i)[0], path)
        paths.append(path)
    return paths


def delete_old(folder: Path, age: float) -> int:
    """Delete the files under `folder` last changed more than `age` seconds ago, then the
    folders that leaves empty (deepest first); return how many files went. What another
    request removes first is skipped."""
    now, deleted = time.time(), 0
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # gone already, or a folder not empty
            info = path.lstat()
            if now - info.st_mtime <= age:
                continue
            if stat.S_ISDIR(info.st_mode):
                path.rmdir()
            else:
                path.unlink()
                deleted += 1
    return deleted


def request_dir(cache: Path) -> Path:
    """A new folder for one request's files; those older than KEEP_OUTPUTS_S are removed."""
    root = cache / OUTPUTS
    root.mkdir(parents=True, exist_ok=True)
    delete_old(root, KEEP_OUTPUTS_S)
    return Path(tempfile.mkdtemp(dir=root))


def write_media(x: torch.Tensor, path: Path) -> str:
    """An image (3, H, W) -> path.png, a clip (3, T, H, W) -> path.gif, enlarged by a whole
    factor (nearest neighbour, so tokens stay sharp squares) to at least DISPLAY_PX a side;
    returns the file name."""
    scale = max(1, -(-DISPLAY_PX // x.shape[-1]))
    x = x.detach().clamp(-1, 1).cpu().repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    if x.dim() == 3:
        return str(write_png(x, path.with_suffix(".png")))
    return str(write_gif(x, path.with_suffix(".gif"), GIF_FPS))


def preview(x: torch.Tensor, model: Model, units: int, out: Path) -> str:
    """The pixels the model will be shown for `units` of context, the rest greyed out (what the
    visible encoding encodes)."""
    return write_media(shown(x, model.grid, units), out / "shown")


@dataclass
class Outputs:
    context: str
    truth: str
    reconstruction: str
    samples: list[str]
    metrics: list[list]  # rows (metric, value, meaning)
    entropy: str


@torch.no_grad()
def sample_request(model: Model, x: torch.Tensor, units: int, settings: Settings, out: Path) -> Outputs:
    result = settings.sample(model, x, units, progress=True)
    rows, entropy = measure(model, result, settings.cond)
    return Outputs(context=write_media(result.seen, out / "context"), truth=write_media(result.truth, out / "truth"),
                   reconstruction=write_media(result.reconstruction, out / "reconstruction"),
                   samples=[write_media(s, out / f"sample-{i}") for i, s in enumerate(result.samples)],
                   metrics=rows, entropy=entropy_plot(model, result, entropy, out / "entropy.png"))


def measure(model: Model, r: Continuations, cond: tuple[int, ...] | None = None) -> tuple[list[list], torch.Tensor]:
    """The probe's metrics of one request (probes/probe.py `measure`, the very function a probe
    run uses) as table rows (metric, value, what it means), and the predictive entropy along
    the ground truth at each position (*grid), NaN over the context; `cond` is the condition
    the samples were drawn with, under which the likelihoods are read."""
    truth = prepare([Example(id="request", pixels=r.truth)], model.tokenizer, 1, [r.context_units],
                    r.context_encoding)[0]
    new = r.tokens.flatten(1)[:, r.context_tokens:]
    m, _, entropy = probe_measure(truth, [], GPTSampler(model.gpt, model.name, cond=cond), new, r.context_units / r.grid[0],
                                  model.tokenizer, np.random.default_rng(0))  # the generator breaks rank ties
    ratio = m["skill_tokens"] / m["spread_tokens"] if m["spread_tokens"] > 0 else float("nan")
    table = [("match rate", m["match_mean"], "share of continuation tokens equal to the ground truth's"),
             ("match rate, best sample", m["match_best"], "the same, for the closest sample"),
             ("exact reproductions", m["exact_rate"], "share of samples equal to the ground truth"),
             ("diversity", m["diversity"], "share of tokens that differ between two samples"),
             ("NLL ground truth", m["nll_truth"], "nats per token of the real continuation"),
             ("NLL samples", m["nll_samples"], "nats per token of the model's own samples"),
             ("spread-skill R (tokens)", ratio, "distance to the truth / distance between samples: "
              "1 honest, > 1 confidently wrong, < 1 over-dispersed (one example: noisy)"),
             ("typicality z", m["typicality_z"], "NLL of the truth vs the samples', in their standard deviations"),
             ("truth's NLL rank", m["rank_nll"], f"samples more likely than the truth, of {len(new)}"),
             ("PSNR best (dB)", m["pixel_psnr_best"], "closest sample to the ground truth, hidden part"),
             ("PSNR mean (dB)", m["pixel_psnr_mean"], "mean over samples, hidden part"),
             ("context agreement", m["context_agreement"], "share of the context tokens equal to the whole "
              "input's encoding (1: the context encoding changed nothing)")]
    return [[name, round(value, 4), meaning] for name, value, meaning in table], entropy


def entropy_plot(model: Model, r: Continuations, entropy: torch.Tensor, path: Path) -> str:
    """The model's predictive entropy at each hidden token position (along the ground truth),
    laid over the ground truth; one panel per latent frame for clips."""
    entropy = entropy.numpy()  # (*grid), NaN over the context
    truth = r.truth.detach().clamp(-1, 1).cpu()
    if model.kind == "image":
        frames, maps = [truth], [entropy]
    else:  # each latent frame over the first video frame it covers
        step = truth.shape[1] // model.grid[0]
        frames, maps = [truth[:, k * step] for k in range(model.grid[0])], list(entropy)
    fig = Figure(figsize=(2.6 * len(frames) + 0.8, 2.8))
    axes = fig.subplots(1, len(frames), squeeze=False)
    vmax = max(float(np.nanmax(entropy)), 1e-6)
    for k, (frame, emap, ax) in enumerate(zip(frames, maps, axes[0])):
        ax.imshow(((frame.permute(1, 2, 0).numpy() + 1) / 2).mean(2), cmap="gray", vmin=0, vmax=1)
        side = frame.shape[-1]
        im = ax.imshow(emap, cmap="magma", alpha=0.7, vmin=0, vmax=vmax, extent=(0, side, side, 0),
                       interpolation="nearest")
        ax.set_axis_off()
        if len(frames) > 1:
            ax.set_title(f"latent frame {k + 1}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="entropy (nats)", fraction=0.05)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return str(path)


@torch.no_grad()
def sweep(model: Model, x: torch.Tensor, settings: Settings, progress=None) -> Figure:
    """Match rate (mean and best of N) against the context fraction, for up to SWEEP_POINTS
    context sizes spread over 1 .. (rows or latent frames) - 1, each with the same seed.
    `progress(fraction, desc)` is called before each point."""
    units = model.grid[0]
    points = sorted({round(u) for u in np.linspace(1, units - 1, min(SWEEP_POINTS, units - 1))})
    mean, best = [], []
    for i, u in enumerate(points):
        if progress is not None:
            progress(i / len(points), desc=f"context {u}/{units} {model.unit_name}")
        r = settings.sample(model, x, u)
        m = metrics.token_metrics(r.truth_tokens.flatten()[r.context_tokens:],
                                  r.tokens.flatten(1)[:, r.context_tokens:])
        mean.append(m["match_mean"])
        best.append(m["match_best"])
    fractions = [u / units for u in points]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(fractions, mean, "o-", label="mean over samples")
    ax.plot(fractions, best, "s--", label=f"best of {settings.samples}")
    ax.set(xlabel="context fraction", ylabel="ground-truth token match rate", ylim=(0, 1.02), xlim=(0, 1),
           title=f"{model.name}: match rate vs context")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
