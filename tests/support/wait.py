"""Waiting for a condition, with a deadline: how tests wait for readiness and for data.

A fixed sleep is either too short on a loaded machine (the test fails) or too long everywhere
(the suite crawls); polling a condition is neither. The pause between two polls is the only
sleep, and it never decides whether the test passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    every: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions of the ``ignore`` types count as "not yet" (a port not open yet raises
    OSError). After ``timeout`` seconds, fails with ``what``, the last value or exception,
    and ``detail()`` (a log tail, the state seen) when given.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except ignore as e:
            last = e
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r}){extra}")
        time.sleep(every)
