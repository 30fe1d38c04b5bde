"""Keep-alive signals for supervisors: systemd notify/watchdog and the liveness file.

One task on the worker's own event loop ticks every ``interval_s``: half the
systemd watchdog period when ``WatchdogSec=`` is set, never more than the
heartbeat interval. On each tick it asks ``progress()`` whether the worker is
really making progress — the runtime answers "the heartbeat loop has ticked
recently" — and only then sends ``WATCHDOG=1`` and rewrites the liveness
file. A wedged worker (event loop blocked, heartbeat loop stuck or dead, the
process SIGSTOPped) therefore stops pinging, and systemd (``WatchdogSec=``)
or Kubernetes (``livenessProbe`` running ``check --liveness``) restarts it.

``ready`` sends ``READY=1`` once the worker is connected and subscribed;
``stopping`` sends ``STOPPING=1`` when a stop begins and removes the
liveness file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bus import liveness
from bus.sdnotify import Notifier

log = logging.getLogger("agentic_payments.keepalive")
#: The liveness file counts as fresh for this many tick intervals (plus a second).
TTL_TICKS = 3


def tick_interval(heartbeat_s: float, watchdog_s: float | None) -> float:
    """Ping at half the watchdog period (sd_watchdog_enabled(3)), at least every heartbeat."""
    if watchdog_s is None:
        return heartbeat_s
    return min(heartbeat_s, watchdog_s / 2)


def making_progress(
    last_beat: float | None, now: float, heartbeat_s: float, interval_s: float
) -> bool:
    """Has the heartbeat loop ticked within two heartbeats (plus one keep-alive tick)?

    ``last_beat`` None means no beat yet: not progress.
    """
    if last_beat is None:
        return False
    return now - last_beat <= 2 * heartbeat_s + interval_s


class Keepalive:
    def __init__(
        self,
        kind: str,
        worker_id: str,
        *,
        data_dir: Path,
        heartbeat_s: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.notifier = Notifier(env)
        self.interval_s = tick_interval(heartbeat_s, self.notifier.watchdog_s)
        self.ttl_s = round(TTL_TICKS * self.interval_s + 1.0, 3)
        self.kind = kind
        self.worker_id = worker_id
        self.path = liveness.liveness_path(liveness.liveness_dir(data_dir, env), kind, worker_id)
        self.pings = 0
        self.skipped = 0
        self._file_ok = True
        self._stopped = False

    def _record(self) -> liveness.LivenessRecord:
        return liveness.LivenessRecord(
            kind=self.kind,
            worker_id=self.worker_id,
            pid=os.getpid(),
            ts=time.time(),
            ttl_s=self.ttl_s,
        )

    def beat(self) -> None:
        """One proof of life: watchdog ping and liveness file (none once stopping)."""
        if self._stopped:
            return
        self.pings += 1
        if self.notifier.watchdog_s is not None:
            self.notifier.watchdog()
        try:
            liveness.write(self.path, self._record())
            self._file_ok = True
        except OSError as exc:
            if self._file_ok:
                log.warning("cannot write liveness file %s: %s", self.path, exc)
            self._file_ok = False

    def ready(self, status: str) -> None:
        self.beat()
        self.notifier.ready(status)

    def stopping(self) -> None:
        self._stopped = True
        self.notifier.stopping()
        liveness.remove(self.path)

    async def run(self, progress: Callable[[], bool]) -> None:
        """Tick forever on the caller's event loop (cancel to stop)."""
        while True:
            await asyncio.sleep(self.interval_s)
            if progress():
                self.beat()
            else:
                self.skipped += 1
                log.warning(
                    "%s %s: no progress (heartbeat loop stalled): withholding the watchdog ping",
                    self.kind,
                    self.worker_id,
                )
