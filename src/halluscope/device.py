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


def free_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on `device`, or None when this machine does not say:
    on CUDA, what the driver reports free plus what torch holds unused; on the CPU, the
    kernel's MemAvailable, lowered to what the cgroup (a container's limit) still allows."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                found.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(need: int, device: torch.device | str, what: str, advice: str) -> None:
    """Refuse, before allocating, work that needs more memory than `device` has free."""
    free = free_memory(device)
    if free is not None and need > free:
        raise UserError(f"{what} need about {need / 2**30:.1f} GiB; {max(free, 0) / 2**30:.1f} GiB is free on "
                        f"{device}: {advice}")
