"""A time budget for the work done on behalf of one request (the app's): set around the
request, checked by the loops that take long (token-by-token sampling), so a request that
would run too long stops with one clear error instead of holding a worker. Outside a budget
the check costs one context-variable lookup."""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator

from halluscope.errors import UserError

_budget: ContextVar[tuple[float, float] | None] = ContextVar("halluscope_time_budget", default=None)


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Let the body run for at most `seconds` (None: no limit) as `check_time` measures it."""
    token = _budget.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def check_time() -> None:
    """One UserError when the current time budget is spent."""
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget[0]:
        raise UserError(f"this request ran past its time budget of {budget[1]:g} s; ask for fewer samples "
                        "or a smaller context sweep")
