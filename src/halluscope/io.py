"""Files on disk: atomic writes, model folders (config.json + model.safetensors), JSON, and
loading foreign PyTorch checkpoints without ever running pickled code.

Imported by every subpackage; imports none of them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from halluscope.errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    so a reader sees either the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name the writer creates itself, so the file gets the usual permissions
    # (mkstemp's would be owner-only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


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


def load_model_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a folder written by `save_model_folder`; every problem is one clear UserError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    config = read_json(folder / CONFIG_NAME, what="model config")
    if not isinstance(config, dict):
        raise UserError(f"model config {folder / CONFIG_NAME} is not a JSON object")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"model weights not found: {weights}")
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
        return f"<inert {self.name}>"


def _placeholder(full_name: str) -> tuple[type, str]:
    """An inert stand-in for `full_name`, as torch's safe_globals wants it: (class, name)."""
    return type(full_name.rsplit(".", 1)[-1], (Inert,), {"name": full_name}), full_name


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

    Tensors and plain containers load as usual; the bookkeeping classes of known training
    frameworks (INERT_MODULE_PREFIXES, INERT_BUILTINS) become inert placeholders; any other
    global the pickle names (a function such as `os.system`, an unknown class) makes the whole
    file refused before anything in it is called. Zip checkpoints are scanned for their
    globals first; globals the scan cannot see (old non-zip files, classes pushed at load
    time) are met one at a time by torch's unpickler, which stops at each before using it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    names: set[str] = set()
    if zipfile.is_zipfile(path):
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
                return torch.load(path, map_location="cpu", weights_only=True)
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
