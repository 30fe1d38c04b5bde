"""Worker.stop in-process against a real nats-server: every stage is bounded by
one deadline (drain_timeout_s + STOP_SLACK_S), a stage that does not finish is
abandoned (``drained`` False, EXIT_ABANDONED), and a clean stop drains (True)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from bus.config import NatsConfig
from bus.runtime import CLOSE_S, STOP_SLACK_S, TEARDOWN_MIN_S, RuntimeConfig, Worker

pytestmark = pytest.mark.integration
DRAIN_S = 0.5
#: the stop's own bound: every stage plus the hard close (event-loop scheduling aside)
BOUND_S = DRAIN_S + STOP_SLACK_S + TEARDOWN_MIN_S + CLOSE_S


class Plain(Worker):
    kind = "plain"


class HoldsWorkForever(Worker):
    """wait_idle never returns: the held-work stage must be abandoned at the timeout."""

    kind = "holder"

    async def wait_idle(self) -> None:
        await asyncio.Event().wait()


class SwallowsCancel(Worker):
    """A teardown that swallows its cancellation (``suppress(BaseException)`` around an
    await, as several stop() helpers do) and then waits again: cancel-and-await bounds
    would not hold it; the stop must still end in time."""

    kind = "swallower"
    released = False

    async def teardown(self) -> None:
        with contextlib.suppress(BaseException):
            await asyncio.sleep(30)
        await asyncio.sleep(30)
        self.released = True


def runtime(nats_config: NatsConfig, tmp_path: Path) -> RuntimeConfig:
    return RuntimeConfig(
        worker_id="w1",
        nats=nats_config,
        heartbeat_s=0.2,
        metrics_s=0.2,
        drain_timeout_s=DRAIN_S,
        data_dir=tmp_path,
    )


async def timed_stop(worker: Worker) -> float:
    began = time.monotonic()
    await worker.stop()
    return time.monotonic() - began


async def test_a_clean_stop_drains(nats_config: NatsConfig, tmp_path: Path) -> None:
    worker = Plain(runtime(nats_config, tmp_path))
    await worker.start()
    took = await timed_stop(worker)
    assert worker.drained is True
    assert worker.nc is not None and worker.nc.is_closed
    assert took < DRAIN_S, took


async def test_held_work_is_abandoned_at_the_drain_timeout(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    worker = HoldsWorkForever(runtime(nats_config, tmp_path))
    await worker.start()
    took = await timed_stop(worker)
    assert worker.drained is False
    assert DRAIN_S <= took < BOUND_S, took
    assert worker.nc is not None and worker.nc.is_closed  # NATS was up: still drained


async def test_a_teardown_that_swallows_cancellation_cannot_hold_the_stop(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    worker = SwallowsCancel(runtime(nats_config, tmp_path))
    await worker.start()
    took = await timed_stop(worker)
    assert worker.drained is False and not worker.released
    assert took < BOUND_S, took
    assert worker.nc is not None and worker.nc.is_closed


async def test_stop_requested_while_starting_cancels_the_start(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    class SlowSetup(Worker):
        kind = "slowsetup"
        in_setup = asyncio.Event()

        async def setup(self) -> None:
            self.in_setup.set()
            await asyncio.sleep(30)  # e.g. a state read waiting on a NATS that is away

    worker = SlowSetup(runtime(nats_config, tmp_path))
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.in_setup.wait(), 10)
    began = time.monotonic()
    worker.request_stop()  # what SIGTERM calls
    await asyncio.wait_for(run, BOUND_S + 1)
    assert time.monotonic() - began < BOUND_S
    assert worker.drained is False  # the start was abandoned half-way
    assert worker.nc is not None and worker.nc.is_closed
