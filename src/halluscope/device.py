"""One rule for every `--device`: the torch device a command runs on. The CLI checks a
command's `--device` once, before the command starts, so a device this machine lacks is one
line and exit 2 rather than a traceback from deep inside torch."""

from __future__ import annotations

import torch

from halluscope.errors import UserError


def pick_device(name: str | None = None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:N"), or CUDA when this machine has it, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
