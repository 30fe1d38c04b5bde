"""Polling, not sleeping: wait for a condition with a deadline (issue #11).

A fixed ``sleep`` before an assertion is either too short on a loaded machine (a flake)
or too long everywhere (a slow suite). Poll the condition instead: return as soon as it
holds, fail with a message naming what was awaited when the deadline passes. Keep a plain
sleep only where time itself is the subject (waiting past a deadline or an expiry, or
checking that nothing more happens for a while), and say so in a comment.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: Generous: the deadline only matters when the condition never holds, and CI shares
#: two cores with other work.
DEFAULT_TIMEOUT_S = 20.0


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
) -> None:
    """Return once ``predicate()`` (sync or async) is true; AssertionError at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], bool],
    what: str = "the condition",
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.1,
) -> None:
    """``eventually`` for synchronous tests (e.g. ones that drive the CLI)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
