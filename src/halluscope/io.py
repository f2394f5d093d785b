"""Files on disk: atomic writes, the lock on an output folder, model folders (config.json +
model.safetensors), JSON, and loading foreign PyTorch checkpoints without ever running
pickled code.

Imported by every subpackage; imports none of them.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import pickle
import re
import socket
import stat
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from halluscope.errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # a model's config.json is a few KB; a bigger one is not a config
MAX_JSON_BYTES = 1 << 30  # any other JSON we read (a token cache manifest lists every example)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries that wrap the OS error (safetensors' Rust writer, torch's zip writer) word it.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull")


def is_disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or any(w in str(e) for w in DISK_FULL_WORDS)


def disk_full_error(where: str | os.PathLike) -> UserError:
    return UserError(f"no space left on the device holding {where}; free some space and run the command again "
                     "(with --resume where it has one: what was written completely is kept)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    so a reader sees either the old file or the whole new one, never half of it. A full disk
    is one UserError ("no space left on ..."), and the partial file is removed."""
    path = Path(path)
    # A unique name the writer creates itself, so the file gets the usual permissions
    # (mkstemp's would be owner-only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(path.parent) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def open_regular(path: str | os.PathLike, what: str = "file") -> int:
    """A read-only descriptor of `path`, which must be a regular file (a symlink to one is
    fine): a FIFO would block the reader forever and /dev/zero never ends. Opened without
    blocking, so a FIFO is refused rather than waited on."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot open {what} {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise UserError(f"{what} {path} is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The content of the regular file `path`, refused when it holds more than `max_bytes`."""
    with os.fdopen(open_regular(path, what), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{what} {path} is larger than {max_bytes:,} bytes; that is not what it should hold")
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    path = Path(path)
    try:
        return json.loads(read_bytes(path, what, max_bytes))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def read_config(path: str | os.PathLike, what: str = "model config") -> dict:
    """A model's config.json: a JSON object of at most MAX_CONFIG_BYTES from a regular file."""
    config = read_json(path, what, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise UserError(f"{what} {path} is not a JSON object")
    return config


# ----------------------------------------------------------------------------- output folder lock


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of an output folder: beside it, hidden, so the folder itself stays as the
    command leaves it (several commands refuse a non-empty folder)."""
    folder = Path(folder).resolve()  # `out`, `./out` and a symlink to it share one lock
    return folder.with_name(f".{folder.name}.lock")


def _holder(fd: int) -> str:
    """Who holds a lock, from what its holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the output folder `folder` while the body runs: a second
    writer on the same folder gets one UserError naming the holder (pid, host, command).

    flock(2) on a file beside the folder: the kernel releases it when its holder exits, however
    it exits, so the lock of a killed run is simply taken over (what it wrote about itself is
    overwritten). The holder removes the file when done; a waiter that locked the old file after
    that notices the path names another file (or none) and tries again. Under torchrun only
    rank 0 locks: the other ranks belong to its run."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(f"{folder} is in use by another run ({holder}); wait for it to finish, "
                                "or choose another --out") from None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the file we locked was removed by its last holder: lock the new one
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command[:500],
                                  "since": since}).encode(), 0)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path.parent) from None
        raise UserError(f"cannot lock {folder}: {e.strerror or e}") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: see above
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a log we append to (metrics, probe records): one JSON object per line.
    A line cut short by a killed writer is dropped; a missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def drop_records_after(path: str | os.PathLike, step: int) -> None:
    """Forget the lines of a per-step log past the checkpoint a run resumes from, so no step
    is logged twice (and a line cut short by a kill)."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", math.inf) <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


def save_model_folder(folder: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write `config.json` and `model.safetensors` into `folder`, each atomically; the
    weights go first so a folder with a config always has matching weights."""
    folder = Path(folder)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / CONFIG_NAME, config)
    return folder


Shapes = dict[str, tuple[tuple[int, ...], bool]]  # weight name -> (shape, is floating point)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}  # safetensors' names


def check_model_folder(folder: str | os.PathLike) -> Path:
    """`folder` if it holds a config.json; else one UserError, which points from a training
    run's folder to the model/ inside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    if not os.path.lexists(folder / CONFIG_NAME) and (folder / "model" / CONFIG_NAME).is_file():
        raise UserError(f"{folder} is a training run's folder, not a model folder; pass {folder / 'model'} "
                        "(the model it trained)")
    return folder


def weight_shapes(path: str | os.PathLike) -> Shapes:
    """The shapes (and whether floating point) of the tensors in a safetensors file, from its
    header alone: nothing is loaded."""
    os.close(open_regular(path, "model weights"))  # refuse a FIFO or device before it is opened
    try:
        with safe_open(str(path), "pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype() in FLOAT_DTYPES)
                    for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"model weights {path} are unreadable: {e}") from None


def tensor_shapes(state_dict: dict[str, torch.Tensor]) -> Shapes:
    """What `weight_shapes` would say of a file holding `state_dict`."""
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in state_dict.items()}


def model_shapes(model: torch.nn.Module) -> Shapes:
    """The shapes of `model`'s weights (on the meta device, building a model costs no memory)."""
    return tensor_shapes(model.state_dict())


def check_shapes(expected: Shapes, found: Shapes, source: str) -> None:
    """Every expected weight present with its shape (and kind of number), nothing left over;
    else one UserError naming the first offending key in the model's own order."""
    for key, (shape, floating) in expected.items():
        if key not in found:
            raise UserError(f"{source}: missing weight `{key}` (expected shape {shape})")
        if found[key][0] != shape:
            raise UserError(f"{source}: weight `{key}` has shape {found[key][0]}, expected {shape}")
        if found[key][1] != floating:
            raise UserError(f"{source}: weight `{key}` holds {'floats' if found[key][1] else 'integers'}, "
                            f"expected {'floats' if floating else 'integers'}")
    extra = [k for k in found if k not in expected]
    if extra:
        raise UserError(f"{source}: unexpected weight `{extra[0]}` ({len(extra)} unused keys in all)")


def load_model_folder(folder: str | os.PathLike, expect: Callable[[dict], tuple[Shapes, str]] | None = None
                      ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a folder written by `save_model_folder`; every problem is one clear UserError.

    `expect(config)` checks the config and returns the weight shapes it implies (and how to name
    the folder in a mismatch): they are compared with the safetensors header before any weight
    is read, so a config cannot make us allocate what the file does not hold."""
    folder = check_model_folder(folder)
    config = read_config(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    shapes = weight_shapes(weights)
    if expect is not None:
        expected, source = expect(config)
        check_shapes(expected, shapes, source)
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"model weights {weights} are unreadable: {e}") from None
    return config, state_dict


# Classes that real training checkpoints carry beside their tensors (hyper-parameters,
# callbacks, loop states: omegaconf's DictConfig, argparse's Namespace, numpy scalars, dates,
# partials) and the plain builtins their pickles rebuild them with. They are replaced by inert
# placeholders; any other global makes the file refused.
INERT_MODULE_PREFIXES = (
    "argparse", "omegaconf", "pytorch_lightning", "lightning", "lightning_fabric",
    "typing", "pathlib", "numpy", "torch.optim", "torch.utils.data", "enum", "functools",
    "collections", "datetime",
)
INERT_BUILTINS = frozenset(f"builtins.{name}" for name in (
    "dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "bool", "str", "bytes", "bytearray",
    "slice", "range", "object",
))
MAX_REFUSED_GLOBALS = 256  # a pickle naming more distinct classes than this is not a checkpoint


class Inert:
    """Stands in for a class a checkpoint names but we will not build. Accepts any arguments
    and any state, keeps nothing, runs nothing."""

    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {type(self).name}>"


class Record(Inert):
    """Stands in for a plain-data record class (argparse.Namespace: a TATS or VideoGPT
    checkpoint's hyper-parameters) and keeps the attributes its pickle sets — values the
    weights-only loader has already rebuilt as tensors, plain containers or inert
    placeholders — so they can be read (`args.downsample`). Builds nothing, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            vars(self).update({k: v for k, v in state.items() if isinstance(k, str)})

    def __repr__(self) -> str:
        return f"<record {type(self).name} {sorted(vars(self))}>"


RECORDS = frozenset({"argparse.Namespace"})  # record classes whose plain-data state is kept
# Lightning's hyper-parameter dicts (dict subclasses with attribute access): rebuilt as plain
# dicts, the one mapping type the weights-only loader fills, so their items are kept.
DICT_RECORDS = frozenset(f"{module}.AttributeDict" for module in (
    "pytorch_lightning.utilities.parsing", "lightning_fabric.utilities.data", "lightning.fabric.utilities.data",
    "lightning.pytorch.utilities.parsing"))


def _placeholder(full_name: str) -> tuple[type, str]:
    """An inert stand-in for `full_name`, as torch's safe_globals wants it: (class, name)."""
    if full_name in DICT_RECORDS:
        return dict, full_name
    base = Record if full_name in RECORDS else Inert
    return type(full_name.rsplit(".", 1)[-1], (base,), {"name": full_name}), full_name


def _is_inert(full_name: str) -> bool:
    return full_name in INERT_BUILTINS or full_name.startswith(tuple(p + "." for p in INERT_MODULE_PREFIXES))


def _refused_global(error: pickle.UnpicklingError) -> str | None:
    """The global torch's weights-only unpickler stopped at (it writes builtins bare: `dict`)."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    if found is None:
        return None
    name = found.group(1)
    return name if "." in name else f"builtins.{name}"


def _first_line(error: Exception) -> str:
    """The line of an error that says what is wrong; torch's weights-only errors open with
    paragraphs of advice (in colour) and name the problem after "WeightsUnpickler error:"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    text = text.split("WeightsUnpickler error:", 1)[-1].strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_untrusted_checkpoint(path: str | os.PathLike) -> Any:
    """Load a foreign `.ckpt`/`.pt`/`.pth` file with `torch.load(weights_only=True)`.

    Tensors and plain containers load as usual (memory-mapped from zip files: untouched tensors
    are never read); the bookkeeping classes of known training frameworks
    (INERT_MODULE_PREFIXES, INERT_BUILTINS) become inert placeholders (a Namespace keeps its
    plain-data attributes: Record); any other
    global the pickle names (a function such as `os.system`, an unknown class) makes the whole
    file refused before anything in it is called. Zip checkpoints are scanned for their
    globals first; globals the scan cannot see (old non-zip files, classes pushed at load
    time) are met one at a time by torch's unpickler, which stops at each before using it.
    """
    path = Path(path)
    os.close(open_regular(path, "checkpoint"))  # a FIFO or a device is refused, not read
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    names: set[str] = set()
    zip_format = zipfile.is_zipfile(path)
    if zip_format:
        try:
            names.update(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as e:  # a damaged archive: say so rather than guess
            raise UserError(f"checkpoint {path} is unreadable: {_first_line(e)}") from None
    while True:
        refused = sorted(n for n in names if not _is_inert(n))
        if refused or len(names) > MAX_REFUSED_GLOBALS:
            raise UserError(f"refusing checkpoint {path}: it names `{(refused or sorted(names))[0]}`, which is "
                            "neither a tensor nor a plain container, and loading it could run code")
        try:
            with torch.serialization.safe_globals([_placeholder(n) for n in sorted(names)]):
                # Memory-mapped where the format allows (zip): a file's optimizer state or first-stage
                # model is read from disk only if touched, not loaded whole (9 GB for a 730M GPT's Adam).
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
        except pickle.UnpicklingError as e:
            name = _refused_global(e)
            if name is None or name in names:
                raise UserError(f"refusing checkpoint {path}: the weights-only loader cannot rebuild it safely "
                                f"({_first_line(e)})") from None
            names.add(name)
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise UserError(f"checkpoint {path} is unreadable: {_first_line(e)}") from None


def find_state_dict(ckpt: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: a bare state dict, or one wrapped under
    `state_dict` (Lightning) or `model_state_dict` / `model` (plain training scripts)."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
        tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise UserError(f"{path} holds no state dict (no tensors found at the top level or under "
                    "`state_dict` / `model_state_dict` / `model`)")


def checkpoint_args(ckpt: Any) -> dict[str, Any]:
    """The attributes of a Lightning checkpoint's `hyper_parameters['args']` (the argparse.Namespace
    TATS and VideoGPT save, as kept by Record), or {} where there is none."""
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    args = hparams.get("args") if isinstance(hparams, dict) else None
    return dict(vars(args)) if isinstance(args, Record) else {}


def script_args(ckpt: Any) -> dict[str, Any]:
    """The attributes of a plain training script's top-level `args` Namespace (LlamaGen's), or {}."""
    args = ckpt.get("args") if isinstance(ckpt, dict) else None
    return dict(vars(args)) if isinstance(args, Record) else {}


def checkpoint_setting(name: str, recorded: Any, flag: Any, flag_text: str, default: Any = None) -> Any:
    """A setting of a foreign checkpoint: the user's flag, which must agree with what the
    checkpoint records where it records it (a list there equals a tuple here); else the recorded
    value; else `default`; with none of them one UserError asking for the flag (`flag_text`,
    e.g. "--downsample T,H,W")."""
    recorded = tuple(recorded) if isinstance(recorded, list) else recorded
    if flag is not None and recorded is not None and flag != recorded:
        raise UserError(f"{flag_text.split()[0]} {flag} contradicts the checkpoint's {name} {recorded}")
    value = flag if flag is not None else recorded if recorded is not None else default
    if value is None:
        raise UserError(f"the checkpoint does not record `{name}`, and its weights do not show it; pass {flag_text}")
    return value
