"""VideoFolder and load_clip on MP4s the tests write with PyAV: frames are picked by time at
the requested rate, long videos give several clips, decord and PyAV agree and either can
stand in for the other, and each kind of bad file is skipped with one warning naming it."""

import logging

import av
import numpy as np
import pytest
import torch
from bad_inputs import write_audio_only_mp4
from torch.utils.data import DataLoader

import halluscope.data.media as media
import halluscope.data.videos as videos
from halluscope.data import VideoFolder, load_clip, write_video
from halluscope.data.pixels import to_uint8
from halluscope.errors import UserError


def numbered(frames: int, size: int = 32, step: int = 8) -> torch.Tensor:
    """(3, T, size, size): frame t is a flat gray of level step * t, so it can be recognized."""
    levels = torch.arange(frames, dtype=torch.float32) * step / 127.5 - 1.0
    return levels.view(1, frames, 1, 1).expand(3, frames, size, size).contiguous()


def frame_numbers(clip: torch.Tensor, step: int = 8) -> list[int]:
    """Which frame of `numbered` each frame of a decoded clip (3, T, R, R) is."""
    levels = to_uint8(clip.transpose(0, 1)).astype(float).mean(axis=(1, 2, 3))
    return [int(round(v / step)) for v in levels]


def write_numbered(path, frames: int, fps: float = 16, step: int = 8):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(numbered(frames, step=step), path, fps)


def skip_reason(ds, path) -> str:
    return dict(ds.skipped)[path]


def test_mp4_round_trip_through_both_readers(tmp_path):
    rng = np.random.default_rng(0)
    clip = torch.from_numpy(rng.choice([-1.0, 1.0], size=(3, 8, 32, 32))).float()  # saturated; decord fails on some tiny sizes (16 px)
    path = write_video(clip, tmp_path / "c.mp4", fps=16)
    decoded = {}
    for backend in videos.Readers.backends:
        decoded[backend.name] = backend(path).read(np.arange(8))  # (T, H, W, 3) uint8
    expected = to_uint8(clip.transpose(0, 1)).astype(int)
    for frames in decoded.values():
        assert np.abs(frames.astype(int) - expected).max() <= 2  # only RGB <-> YUV rounding
    assert np.array_equal(decoded["decord"], decoded["PyAV"])
    x = load_clip(path, 32, 8)
    assert x.shape == (3, 8, 32, 32) and (x - clip).abs().max() <= 2 / 127.5


def test_frames_are_picked_by_time_at_the_requested_rate(tmp_path):
    write_numbered(tmp_path / "v.mp4", 32, fps=16)
    assert frame_numbers(VideoFolder(tmp_path, 8, frames=16, fps=8)[0]) == list(range(0, 32, 2))
    assert frame_numbers(VideoFolder(tmp_path, 8, frames=32)[0]) == list(range(32))  # native rate
    # above the source rate, frames repeat (a tie goes to the earlier frame)
    assert frame_numbers(VideoFolder(tmp_path, 8, frames=8, fps=32)[0]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert frame_numbers(load_clip(tmp_path / "v.mp4", 8, 4, fps=4)) == [0, 4, 8, 12]


def test_stride_gives_several_clips_per_video(tmp_path):
    write_numbered(tmp_path / "v.mp4", 32)
    ds = VideoFolder(tmp_path, 8, frames=8)
    assert [ds.source(i) for i in range(len(ds))] == ["v.mp4@0", "v.mp4@8", "v.mp4@16", "v.mp4@24"]
    assert frame_numbers(ds[2]) == list(range(16, 24))
    assert len(VideoFolder(tmp_path, 8, frames=8, stride=4)) == 7  # overlapping, tail dropped
    slow = VideoFolder(tmp_path, 8, frames=8, fps=8)
    assert [slow.source(i) for i in range(len(slow))] == ["v.mp4@0", "v.mp4@16"]  # source frame numbers
    assert frame_numbers(slow[1]) == list(range(16, 32, 2))
    assert slow.report() == f"{tmp_path}: read 1 video files (2 clips), skipped 0"


def test_seeking_into_later_keyframe_groups(tmp_path, monkeypatch):
    real = media.encoder
    monkeypatch.setattr(media, "encoder", lambda lossless: (real(lossless)[0], real(lossless)[1],
                                                            {**real(lossless)[2], "g": "4"}))
    path = write_numbered(tmp_path / "v.mp4", 60, step=4)
    for backend in videos.Readers.backends:
        reader = backend(path)
        for wanted in ([41, 42, 50], [3], [0, 59]):
            assert frame_numbers(torch.from_numpy(reader.read(np.array(wanted))).permute(3, 0, 1, 2).float()
                                 / 127.5 - 1, step=4) == wanted, backend.name


@pytest.fixture
def data_bad_video_folder(tmp_path):
    """One good video and each kind of bad file."""
    good = write_numbered(tmp_path / "good.mp4", 16).read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])  # index at the end: lost
    (tmp_path / "garbage.mkv").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.avi").write_text("a text file named like a video\n")
    write_numbered(tmp_path / "sub" / "short.webm", 6)
    write_audio_only_mp4(tmp_path / "sound.mp4")
    return tmp_path


def test_bad_videos_are_skipped_once_each_with_a_warning_naming_them(data_bad_video_folder, caplog):
    root = data_bad_video_folder
    with caplog.at_level(logging.WARNING, logger="halluscope.data"):
        ds = VideoFolder(root, 8, frames=8)
    assert [p.name for p in ds.files] == ["good.mp4"] and len(ds) == 2
    assert "0 bytes" in skip_reason(ds, root / "zero.mp4")
    assert skip_reason(ds, root / "sound.mp4") == "no video stream"
    assert skip_reason(ds, root / "sub" / "short.webm") == "too short: 6 frames, a clip needs 8"
    for name in ("truncated.mp4", "garbage.mkv", "notes.avi"):
        assert skip_reason(ds, root / name).startswith("unreadable video: ")
    bad = ["zero.mp4", "truncated.mp4", "garbage.mkv", "notes.avi", "sub/short.webm", "sound.mp4"]
    for name in bad:
        lines = [r for r in caplog.records if f"skipping {root / name}:" in r.getMessage()]
        assert len(lines) == 1, name
    assert ds.report() == f"{root}: read 1 video files (2 clips), skipped 6 (see warnings above)"
    assert "skipped 6 (see warnings above)" in caplog.records[-1].getMessage()  # the summary comes last


def test_a_file_failing_at_decode_time_is_skipped_and_the_next_clip_returned(tmp_path, monkeypatch, caplog):
    write_numbered(tmp_path / "a.mp4", 16)
    write_numbered(tmp_path / "b.mp4", 32)
    ds = VideoFolder(tmp_path, 8, frames=8)
    damaged = tmp_path / "a.mp4"

    class Broken:
        def __init__(self, path):
            if path == damaged:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            self.inner = videos.PyAVReader(path)

        def read(self, indices):
            return self.inner.read(indices)

    Broken.name = "broken"
    monkeypatch.setattr(videos.Readers, "backends", (Broken,))
    with caplog.at_level(logging.WARNING, logger="halluscope.data"):
        assert frame_numbers(ds[1]) == list(range(8))  # a.mp4@8 fails: b.mp4@0 comes instead
        assert [i for i, _ in ds.iter_valid()] == [2, 3, 4, 5]
    assert skip_reason(ds, damaged) == "cannot decode (broken: Invalid data found when processing input)"
    assert len([r for r in caplog.records if str(damaged) in r.getMessage()]) == 1
    assert ds.report().endswith("read 1 video files (6 clips), skipped 1 (see warnings above)")


def test_pyav_takes_over_when_decord_fails_or_is_missing(tmp_path, monkeypatch):
    path = write_numbered(tmp_path / "v.mp4", 16)
    expected = load_clip(path, 8, 16)

    def fail(self, indices):
        raise videos.decord.DECORDError("decoder exploded")

    monkeypatch.setattr(videos.DecordReader, "read", fail)
    readers = videos.Readers()
    assert np.array_equal(readers.frames(path, np.arange(16)), videos.PyAVReader(path).read(np.arange(16)))
    assert ("decord", path) in readers.broken  # not retried for this file
    assert torch.equal(VideoFolder(tmp_path, 8, frames=16)[0], expected)

    monkeypatch.setattr(videos, "decord", None)
    assert torch.equal(load_clip(path, 8, 16), expected)


def test_dataloader_workers_read_the_same_clips(tmp_path):
    write_numbered(tmp_path / "v.mp4", 32)
    ds = VideoFolder(tmp_path, 8, frames=8)
    ds[0]  # the parent opens a reader first: workers must not share it
    # Spawned, not forked: video decoders run threads, and a child forked from a process
    # that has used them can deadlock (see VideoFolder's docstring).
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="spawn")
    batches = torch.cat(list(loader))
    assert [frame_numbers(c)[0] for c in batches] == [0, 8, 16, 24]


def test_folders_without_usable_videos_and_bad_single_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=f"no usable video file .* under {tmp_path}$"):
        VideoFolder(tmp_path, 8, frames=4)
    write_numbered(tmp_path / "short.mp4", 3)
    with pytest.raises(UserError, match="skipped 1"):
        VideoFolder(tmp_path, 8, frames=4)
    with pytest.raises(UserError, match=r"cannot read .*short\.mp4: too short: 3 frames, a clip needs 4"):
        load_clip(tmp_path / "short.mp4", 8, 4)
    with pytest.raises(UserError, match="stride must be a positive number"):
        VideoFolder(tmp_path, 8, frames=2, stride=0)


def test_timestamps_spread_over_years_are_refused_not_allocated():
    """Two frames a billion seconds apart, read at 16 fps, would be 32 billion output frames
    (the last frame lasts as long as the gap before it)."""
    from halluscope.data.folder import BadFile

    assert len(videos.frame_map(np.array([0.0, 1.0]), 16)) == 32
    with pytest.raises(BadFile, match="too long: its timestamps span 2000000000 s"):
        videos.frame_map(np.array([0.0, 1e9]), 16)
