"""Video files: clips of T frames at a chosen frame rate -> float (3, T, R, R) in [-1, 1].

Frames are picked by time: output frame m of a video sits at t0 + m / fps, and shows the
source frame whose timestamp is nearest (so reading a 16 fps video at 8 fps keeps every
second frame, and variable-frame-rate files come out evenly timed). A long video gives
several clips, `stride` output frames apart (default: T, so clips do not overlap); the
leftover tail shorter than T is dropped, and a video shorter than T is skipped as too short.

Decoding: decord first (fast random access: it seeks to the keyframe before a clip and
decodes only from there), PyAV when decord is missing or fails on a file (decord 0.6 fails,
for one, on frames 8, 16, 24 or 48 pixels wide). The scan that lists a file's frames uses
PyAV's demuxer: it decodes nothing, and it reports a bad file as a Python exception with a
reason, where decord also prints C++ error lines of its own.

Only the containers the suffixes promise are opened (FFmpeg's mov/mp4, avi and matroska/webm
demuxers): FFmpeg would otherwise pick a demuxer by content, and a text file named .mp4 holding
an ffconcat script makes it read other files. Frames over MAX_FRAME_PIXELS are refused from the
stream headers, before a frame is decoded, whichever stream a backend would pick: decord is
told the size to decode to, and PyAV checks every frame it decodes (a stream can change size
midway). Both checks run with PyAV before decord ever opens the file.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from einops import rearrange

from halluscope.data.folder import BadFile, MediaFolder, check_positive, log, read_single
from halluscope.data.pixels import square

try:
    import decord

    # decord's FFmpeg would print its own lines about damaged files; the one warning line
    # per skipped file (with the reason) is ours to print.
    decord.logging.set_level(decord.logging.QUIET)
except ImportError:  # no wheel for some platforms; PyAV reads everything decord does
    decord = None

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
# DCI 4K: a 16-frame clip of such frames is 425 MB of uint8 pixels before it is resized.
MAX_FRAME_PIXELS = 4096 * 2160
MAX_OUTPUT_FRAMES = 1 << 20  # frames read at --fps: 18 hours at 16 fps; more is a timestamp bomb
DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,avi,matroska,webm"  # FFmpeg's names for what VIDEO_SUFFIXES promise
# What the decoders raise on a damaged file (PyAV's FFmpegError, decord's DECORDError or a
# RuntimeError, an index past what was actually decoded).
DECODE_ERRORS = (BadFile, av.error.FFmpegError, RuntimeError, ValueError, IndexError, OSError) + (
    (decord.DECORDError,) if decord is not None else ())


def reason(e: Exception) -> str:
    """The first line of a decoder's error, without the path that FFmpeg errors repeat."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


def open_video(path: Path) -> av.container.InputContainer:
    """PyAV's container for `path`, opened only by one of DEMUXERS. Raises BadFile."""
    try:
        return av.open(str(path), container_options={"format_whitelist": DEMUXERS})
    except av.error.ArgumentError:  # what FFmpeg says of a demuxer outside the list
        raise BadFile("not a video container this reads (MP4/MOV, AVI, Matroska/WebM)") from None


def check_frame_size(width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise BadFile(f"frames too large to decode safely: {width}x{height}, the limit is "
                      f"{MAX_FRAME_PIXELS / 1e6:.1f} megapixels (4096x2160)")


def frame_size(container: av.container.InputContainer) -> tuple[int, int]:
    """(width, height) of the first video stream, every video stream's header size checked
    (another backend may pick another stream). Raises BadFile."""
    if not container.streams.video:
        raise BadFile("no video stream")
    for stream in container.streams.video:
        check_frame_size(stream.codec_context.width, stream.codec_context.height)
    first = container.streams.video[0].codec_context
    if first.width < 1 or first.height < 1:
        raise BadFile("video stream has no frame size")
    return first.width, first.height


def frame_times(path: Path) -> np.ndarray:
    """Presentation times in seconds (ascending) of every frame of the first video stream,
    read from packet headers only. Raises BadFile."""
    try:
        with open_video(path) as container:
            frame_size(container)
            stream = container.streams.video[0]
            pts = np.unique([p.pts for p in container.demux(stream) if p.pts is not None])
            time_base = float(stream.time_base)
    except av.error.FFmpegError as e:
        raise BadFile(f"unreadable video: {reason(e)}") from None
    if len(pts) == 0:
        raise BadFile("video stream has no frames")
    return pts * time_base


def frame_map(times: np.ndarray, fps: float | None) -> np.ndarray:
    """For each output frame at `fps`, the index of the source frame nearest in time; with
    fps None, every source frame in order. Output frames exist while their time is before
    the end of the last source frame. Returns int64 (M,)."""
    if fps is None:
        return np.arange(len(times))
    frame_duration = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    span = times[-1] + frame_duration - times[0]
    if span * fps > MAX_OUTPUT_FRAMES:
        raise BadFile(f"too long: its timestamps span {span:.0f} s, over {MAX_OUTPUT_FRAMES} frames at {fps:g} fps")
    t = times[0] + np.arange(math.ceil(span * fps - 1e-6)) / fps  # (M,)
    right = np.searchsorted(times, t).clip(max=len(times) - 1)
    left = (right - 1).clip(min=0)
    return np.where(t - times[left] <= times[right] - t, left, right)


def clip_frames(path: Path, fps: float | None, frames: int) -> np.ndarray:
    """frame_map of `path`, refusing a video that cannot fill one clip of `frames` frames."""
    indices = frame_map(frame_times(path), fps)
    if len(indices) < frames:
        at = f" at {fps:g} fps" if fps is not None else ""
        raise BadFile(f"too short: {len(indices)} frames{at}, a clip needs {frames}")
    return indices


class DecordReader:
    name = "decord"

    def __init__(self, path: Path):
        if decord is None:
            raise BadFile("decord is not installed")
        with open_video(path) as container:  # decord's own header is not exposed: read it with PyAV
            width, height = frame_size(container)
        # Told the size, decord scales any frame of any stream to it: nothing larger is ever output.
        self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) for sorted, distinct source frame indices."""
        return self.reader.get_batch([int(i) for i in indices]).asnumpy()


class PyAVReader:
    name = "PyAV"

    def __init__(self, path: Path):
        self.container = open_video(path)
        frame_size(self.container)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.pts = np.unique([p.pts for p in self.container.demux(self.stream) if p.pts is not None])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) for sorted, distinct source frame indices: seek to the
        keyframe before the first, decode forward to the last. A coarse seek (AVI indexes can
        land past the frame asked for) is retried from the start of the file."""
        want = [int(p) for p in self.pts[indices]]
        got = self._decode(set(want), want[0])
        if len(got) < len(want):
            got = self._decode(set(want), int(self.pts[0]))
        if len(got) < len(want):
            raise BadFile(f"decoded {len(got)} of {len(want)} frames")
        return np.stack([got[p] for p in want])

    def _decode(self, want: set[int], start: int) -> dict[int, np.ndarray]:
        self.container.seek(start, stream=self.stream)
        got, last = {}, max(want)
        for frame in self.container.decode(self.stream):
            check_frame_size(frame.width, frame.height)
            if frame.pts in want:
                got[frame.pts] = frame.to_ndarray(format="rgb24")
            if frame.pts is not None and frame.pts >= last:
                break
        return got


# Decoders run threads, and a forked child that frees a decoder its parent opened aborts or
# hangs (it waits for threads that were not copied), e.g. when a DataLoader worker collects
# garbage it inherited. So every reader this process opens is tracked, and a forked child
# keeps the ones it inherited alive, unused, until it exits. decord is not fork-safe even
# for new readers (a worker forked from a process that used it can segfault), so a forked
# child reads with PyAV only.
_OPEN_READERS: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list = []


def _after_fork_in_child() -> None:
    _INHERITED.extend(_OPEN_READERS)
    Readers.backends = (PyAVReader,)


if hasattr(os, "register_at_fork"):  # not on Windows, which spawns instead of forking
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Readers:
    """The few most recently used video readers of this process, decord tried before PyAV
    for each file. Readers hold file handles and decoder state, so they are never shared
    between processes: a forked DataLoader worker starts empty, and pickling drops them."""

    backends = (DecordReader, PyAVReader)

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._reset()

    def _reset(self) -> None:
        self.open: OrderedDict[tuple[str, Path], object] = OrderedDict()
        self.broken: set[tuple[str, Path]] = set()  # (backend, file) pairs that failed once
        self.pid = os.getpid()

    def frames(self, path: Path, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) for any source frame indices (repeats allowed, as
        when reading above the source frame rate). Raises BadFile if no backend can."""
        if os.getpid() != self.pid:  # a forked worker: the parent's readers are not ours
            self._reset()
        wanted, where = np.unique(indices, return_inverse=True)
        failures = []
        for backend in self.backends:
            if (backend.name, path) in self.broken:
                continue
            try:
                return self._reader(backend, path).read(wanted)[where]
            except DECODE_ERRORS as e:
                self.open.pop((backend.name, path), None)
                self.broken.add((backend.name, path))
                failures.append(f"{backend.name}: {reason(e)}")
                log.debug("halluscope: %s failed on %s (%s)", backend.name, path, reason(e))
        raise BadFile("cannot decode (" + "; ".join(failures or ["every reader failed before"]) + ")")

    def _reader(self, backend: type, path: Path):
        key = (backend.name, path)
        if key not in self.open:
            self.open[key] = backend(path)
            _OPEN_READERS.add(self.open[key])
            while len(self.open) > self.keep:
                self.open.popitem(last=False)
        self.open.move_to_end(key)
        return self.open[key]

    def __getstate__(self) -> dict:
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.keep = state["keep"]
        self._reset()


def read_clip(readers: Readers, path: Path, indices: np.ndarray, resolution: int) -> torch.Tensor:
    """The source frames `indices` of `path` as float (3, T, R, R) in [-1, 1]."""
    frames = square(readers.frames(path, indices), resolution)  # (T, 3, R, R)
    return rearrange(frames, "t c h w -> c t h w")


def load_clip(path: str | os.PathLike, resolution: int, frames: int, fps: float | None = None) -> torch.Tensor:
    """The first `frames` frames of one video file (at `fps`, default its own rate) as float
    (3, T, R, R) in [-1, 1]; an unreadable or too short file is a UserError."""
    check_positive("frames", frames)
    check_positive("fps", fps, optional=True)
    return read_single(path, lambda p: read_clip(Readers(keep=1), p, clip_frames(p, fps, frames)[:frames], resolution))


class VideoFolder(MediaFolder):
    """Clips from every .mp4/.avi/.mkv/.webm/.mov file under `root` (recursively, any case):
    `frames` frames at `fps` (default: each file's own rate), `stride` output frames apart
    (default: `frames`, no overlap), each float (3, T, R, R) in [-1, 1]. Unusable files,
    including videos too short for one clip, are skipped as `halluscope.data.folder` says.

    With DataLoader workers, pass `multiprocessing_context="spawn"` (or "forkserver"):
    video decoders run threads, and a worker forked from a process that has decoded video
    can crash or deadlock."""

    kind = "video"
    item_name = "clips"
    suffixes = VIDEO_SUFFIXES

    def __init__(self, root: str | os.PathLike, resolution: int, frames: int, fps: float | None = None,
                 stride: int | None = None):
        check_positive("frames", frames)
        check_positive("fps", fps, optional=True)
        check_positive("stride", stride, optional=True)
        self.frames, self.fps = int(frames), fps
        self.stride = int(stride or frames)
        self.readers = Readers()
        super().__init__(root, resolution)

    def probe(self, path: Path) -> tuple[np.ndarray, Sequence[int]]:
        indices = clip_frames(path, self.fps, self.frames)  # source frame of each output frame
        return indices, range(0, len(indices) - self.frames + 1, self.stride)

    def load(self, path: Path, info: np.ndarray, start: int) -> torch.Tensor:
        return read_clip(self.readers, path, info[start:start + self.frames], self.resolution)

    def source(self, i: int) -> str:
        """"relative/path.mp4@N", N being the source frame index of the clip's first frame."""
        index, start = self.items[i]
        return f"{super().source(i)}@{self.info[index][start]}"
