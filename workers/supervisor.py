"""A small local supervisor for ``agentic-payments up``.

Starts each worker as its own process, restarts one that exits unexpectedly
(with backoff: 0.5 s doubling to 10 s, reset after 30 s of uptime), does not
restart one that exited with EXIT_CONFIG (restarting cannot fix bad
configuration), and on stop sends SIGTERM to all, waits, then SIGKILLs
stragglers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bus.runtime import EXIT_CONFIG

log = logging.getLogger("agentic_payments.supervisor")


@dataclass
class ProcSpec:
    name: str
    args: list[str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = 0.5


class LocalSupervisor:
    def __init__(self, specs: list[ProcSpec], *, env: dict[str, str], log_dir: Path) -> None:
        self.specs = specs
        self.env = env
        self.log_dir = log_dir
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def command(self, spec: ProcSpec) -> list[str]:
        return [sys.executable, "-m", "workers.cli", *spec.args]

    async def _spawn(self, spec: ProcSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = (self.log_dir / f"{spec.name}.log").open("ab")
        spec.process = await asyncio.create_subprocess_exec(
            *self.command(spec), env=self.env, stdout=logfile, stderr=logfile,
            start_new_session=True)
        logfile.close()
        spec.started_at = time.monotonic()

    async def start(self) -> None:
        for spec in self.specs:
            await self._spawn(spec)
            self._watchers.append(asyncio.create_task(self._watch(spec)))

    async def _watch(self, spec: ProcSpec) -> None:
        while not self._stopping:
            assert spec.process is not None
            code = await spec.process.wait()
            if self._stopping:
                return
            if code == EXIT_CONFIG:
                log.error("%s exited with a configuration error (78); not restarting. "
                          "See %s", spec.name, self.log_dir / f"{spec.name}.log")
                return
            if time.monotonic() - spec.started_at > 30:
                spec.backoff = 0.5
            log.warning("%s exited with %s; restarting in %.1fs", spec.name, code, spec.backoff)
            await asyncio.sleep(spec.backoff)
            spec.backoff = min(10.0, spec.backoff * 2)
            if self._stopping:
                return
            await self._spawn(spec)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker, wait up to ``timeout``, SIGKILL the rest. Safe twice."""
        if self._stopping:
            return
        self._stopping = True
        running = [s.process for s in self.specs
                   if s.process is not None and s.process.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), timeout)
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        for task in self._watchers:
            task.cancel()
