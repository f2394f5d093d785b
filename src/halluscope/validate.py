"""Checks of the values a config holds (a model's config.json, a taming YAML, a preset with
its overrides), run before anything is built from them: a whole number where one belongs,
inside a range every model this workbench can run fits in. So a config from a stranger cannot
make us build ten million layers, train with a NaN dropout, or size a layer 1.5 wide."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from halluscope.errors import UserError


class ConfigError(UserError):
    """A config value of the wrong type or out of range. `detail` is the message without the
    config's name, for callers that name the file instead."""

    def __init__(self, owner: str, detail: str):
        super().__init__(f"{owner}: {detail}")
        self.detail = detail


def whole(owner: str, name: str, value: Any, least: int, most: int) -> int:
    """`value` as an int in [least, most] (numpy ints too; not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(owner, f"{name} must be a whole number, got {value!r}")
    if not least <= value <= most:
        raise ConfigError(owner, f"{name} must be in [{least}, {most}], got {value}")
    return int(value)


def number(owner: str, name: str, value: Any, least: float, most: float, below_most: bool = False) -> float:
    """`value` as a finite float in [least, most] ([least, most) with `below_most`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(owner, f"{name} must be a finite number, got {value!r}")
    if not least <= value <= most or (below_most and value == most):
        top = ")" if below_most else "]"
        raise ConfigError(owner, f"{name} must be in [{least:g}, {most:g}{top}, got {value}")
    return float(value)


def flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(owner, f"{name} must be true or false, got {value!r}")
    return value


def wholes(owner: str, name: str, value: Any, least: int, most: int, lengths: Sequence[int]) -> tuple[int, ...]:
    """A list or tuple of `whole` numbers whose length is one of `lengths`, as a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        raise ConfigError(owner, f"{name} must be a list of {min(lengths)} to {max(lengths)} whole numbers, "
                                 f"got {value!r}")
    return tuple(whole(owner, f"{name}[{i}]", v, least, most) for i, v in enumerate(value))


def choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(owner, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
