"""Background loops stop when cancelled, whatever they were waiting for then.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives in the
same loop iteration as the awaited thing completing (it returns the result
instead; fixed in 3.12, bpo-42130). A loop ``while True: await wait_for(...)``
then never ends, and the ``await task`` after ``task.cancel()`` in its stop hangs
for ever: the 300 s hangs of issue #11 (tests/integration/test_hardening.py),
where a KV change woke the pool watcher's or a mirror's wake-up just as the
tally's teardown cancelled it. Each case below sets the event and cancels the
loop ``ticks`` loop iterations later; every one must end at once.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from nats.aio.client import Client

from bus.membership import PoolWatcher
from bus.subjects import Subjects
from bus.tail import Wakeup

TICKS = range(6)


async def _cancel_after(ticks: int, task: asyncio.Task[None], poke: object) -> bool:
    """Poke, wait ``ticks`` iterations, cancel; True if the task then ended."""
    for _ in range(3):
        await asyncio.sleep(0)  # the task is waiting
    assert callable(poke)
    poke()
    for _ in range(ticks):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()  # do not leak it into other tests
        await asyncio.wait({task}, timeout=1.0)
    return bool(done)


@pytest.mark.parametrize("ticks", TICKS)
async def test_a_wakeup_loop_stops_when_cancelled_as_it_is_woken(ticks: int) -> None:
    wakeup = Wakeup(cast(Client, None), [], poll_s=30.0)

    async def follow() -> None:
        while True:
            await wakeup.wait()

    task = asyncio.create_task(follow())
    assert await _cancel_after(ticks, task, wakeup.poke), f"lost the cancel after {ticks} ticks"


@pytest.mark.parametrize("ticks", TICKS)
async def test_the_pool_watcher_loop_stops_when_cancelled_as_the_pool_changes(ticks: int) -> None:
    watcher = PoolWatcher(cast(Client, None), Subjects("tcancel"))
    watcher.POLL_S = 30.0

    async def no_refresh() -> None:
        return None

    watcher._refresh = no_refresh  # type: ignore[method-assign]
    task = asyncio.create_task(watcher._run())
    assert await _cancel_after(ticks, task, watcher._changed), f"lost the cancel after {ticks}"
