"""What image and video folders share: finding files by suffix, skipping the files that
cannot be used, and never letting a user's bad file crash a training loop.

The skip rule: every unusable file gets exactly one warning line naming it and saying why
(on the `halluscope.data` logger, which prints to stderr when logging is not configured),
is recorded in `folder.skipped`, and is counted in `folder.report()`. Files are checked in
two places. The scan (at construction) reads headers only, so that opening a folder of a
million images stays cheap; it catches empty, mislabeled and unrecognized files. A file
whose header is fine but whose pixels are not (a truncated JPEG, a video cut short) is only
found when it is decoded: `folder[i]` then warns, records it, and returns the next usable
item, so indices and `len()` never change under a running DataLoader. Such files stay in
`folder.files` (which lists what passed the scan); `report()` counts them as skipped.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from halluscope.errors import UserError

log = logging.getLogger("halluscope.data")
Result = TypeVar("Result")


class BadFile(Exception):
    """A user's file that cannot be used. The message is the reason, shown after the path."""


def find_files(root: Path, suffixes: Sequence[str]) -> list[Path]:
    """Every file under `root` whose suffix (any case) is one of `suffixes`, sorted, following
    symlinked folders. Hidden files and folders (.git, .ipynb_checkpoints, macOS '._x.jpg'
    twins) are not data and are left out."""
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop: this folder was already walked
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in suffixes]
    return sorted(found)


def check_not_empty(path: Path) -> None:
    """Zero-byte files are the commonest bad file (an interrupted copy); name them plainly
    instead of passing on a decoder's vaguer complaint. A FIFO or a device named like an
    image would block a decoder or never end: only regular files are read."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise BadFile("not a regular file (a FIFO, a device or a socket)")
    if info.st_size == 0:
        raise BadFile("empty file (0 bytes)")


def check_positive(name: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value <= 0:
        raise UserError(f"{name} must be a positive number, got {value}")


def read_single(path: str | os.PathLike, read: Callable[[Path], Result]) -> Result:
    """`read(path)` for one file the user named: there is nothing to skip to, so a bad file
    is a UserError naming it."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise UserError(f"file not found: {path}")
    try:
        check_not_empty(path)
        return read(path)
    except BadFile as e:
        raise UserError(f"cannot read {path}: {e}") from None


class MediaFolder(Dataset):
    """A folder of image or video files as a torch Dataset of float tensors in [-1, 1].

    Subclasses say which suffixes they read, how to check a file (`probe`) and how to decode
    one item (`load`). A file can hold several items (clips of a video): `items` lists
    (file index, start frame) pairs, start being 0 for images.
    """

    kind = "media"  # "image" or "video", in messages
    item_name = "items"
    suffixes: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike, resolution: int):
        check_positive("resolution", resolution)
        self.root = Path(root)
        self.resolution = int(resolution)
        if not self.root.is_dir():
            raise UserError(f"{self.kind} folder not found: {self.root}")
        self.files: list[Path] = []  # files that passed the scan
        self.skipped: list[tuple[Path, str]] = []  # (file, reason), scan and decode failures
        self.items: list[tuple[int, int]] = []  # (index into files, start frame)
        self.info: list[Any] = []  # per file in `files`, what probe() learned about it
        self._failed: set[Path] = set()  # files that passed the scan but failed to decode
        for path in tqdm(find_files(self.root, self.suffixes), desc=f"scanning {self.root}", unit="file",
                         disable=None, leave=False):
            try:
                check_not_empty(path)
                info, starts = self.probe(path)
            except BadFile as e:
                self._skip(path, str(e))
                continue
            self.items += [(len(self.files), start) for start in starts]
            self.files.append(path)
            self.info.append(info)
        if not self.items:
            raise UserError(f"no usable {self.kind} file ({' '.join(self.suffixes)}) under {self.root}"
                            + (f"; skipped {len(self.skipped)} (see warnings above)" if self.skipped else ""))
        if self.skipped:
            log.warning("halluscope: %s", self.report())

    def probe(self, path: Path) -> tuple[Any, Sequence[int]]:
        """Check `path` cheaply; return what loading will need and the start frame of each
        item it holds. Raise BadFile with a reason if it is unusable."""
        raise NotImplementedError

    def load(self, path: Path, info: Any, start: int) -> torch.Tensor:
        """Decode one item; raise BadFile if the file's content is damaged."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Item i. If its file fails to decode, the file is warned about and recorded once,
        and the next usable item is returned instead: a DataLoader never crashes mid-epoch
        on a user's bad file."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} {self.item_name}")
        for k in range(n):
            x = self._try_load((i + k) % n)
            if x is not None:
                return x
        raise UserError(f"no {self.kind} file under {self.root} could be decoded (see warnings above)")

    def iter_valid(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(i, item) for every item that decodes; the others are warned about and skipped, so
        the indices it yields may have gaps."""
        for i in range(len(self)):
            x = self._try_load(i)
            if x is not None:
                yield i, x

    def source(self, i: int) -> str:
        """Where item i comes from: its file, relative to the root."""
        return self.files[self.items[i][0]].relative_to(self.root).as_posix()

    def report(self) -> str:
        """One line for the end of a run, e.g. "data/cats: read 98 image files, skipped 2
        (see warnings above)"."""
        usable = len(self.files) - len(self._failed)
        counts = f" ({len(self)} {self.item_name})" if len(self) != len(self.files) else ""
        see = " (see warnings above)" if self.skipped else ""
        return f"{self.root}: read {usable} {self.kind} files{counts}, skipped {len(self.skipped)}{see}"

    def _try_load(self, i: int) -> torch.Tensor | None:
        index, start = self.items[i]
        path = self.files[index]
        if path in self._failed:
            return None
        try:
            return self.load(path, self.info[index], start)
        except BadFile as e:
            self._failed.add(path)
            self._skip(path, str(e))
            return None

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path, reason))
        log.warning("halluscope: skipping %s: %s", path, reason)
