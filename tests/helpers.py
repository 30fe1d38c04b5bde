"""Starting real worker processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bus import membership
from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Cluster:
    nats_url: str
    prefix: str
    data_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            NATS_URL=self.nats_url,
            AP_PREFIX=self.prefix,
            AP_DATA_DIR=str(self.data_dir),
            PYTHONPATH=str(ROOT),
        )
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.data_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        self.processes[name] = proc
        return proc

    def start_tally(self, worker_id: str = "t1", *extra: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            f"tally-{worker_id}",
            [
                "-m",
                "workers.cli",
                "worker",
                "tally",
                "--id",
                worker_id,
                "--heartbeat-s",
                "1",
                *extra,
            ],
        )

    def start_verifier(self, worker_id: str, *extra: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            f"verifier-{worker_id}",
            [
                "-m",
                "workers.cli",
                "worker",
                "verifier",
                "--id",
                worker_id,
                "--heartbeat-s",
                "1",
                *extra,
            ],
        )

    def start_byzantine(self, worker_id: str, mode: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            f"byzantine-{worker_id}", ["-m", "tests.byzantine", "--id", worker_id, "--mode", mode]
        )

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    #: how long wait_pool / wait_tally wait by default
    wait_s: float = 20.0

    def control(self) -> NatsConfig:
        """The connection the test itself uses to watch the cluster."""
        return NatsConfig(url=self.nats_url, prefix=self.prefix)

    async def wait_pool(self, size: int, timeout: float | None = None) -> membership.PoolView:
        """Wait until ``size`` verifiers are members and every process is alive."""
        timeout = self.wait_s if timeout is None else timeout
        nc = await connect(self.control(), name="test-wait")
        try:
            deadline = time.monotonic() + timeout
            while True:
                for name, proc in self.processes.items():
                    if proc.poll() is not None:
                        raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
                pool = await membership.read_pool(nc, Subjects(self.prefix))
                if len(pool.keys) >= size:
                    return pool
                if time.monotonic() > deadline:
                    raise AssertionError(f"pool has {len(pool.keys)} members, wanted {size}")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    async def wait_tally(self, timeout: float | None = None) -> None:
        """Wait until a tally answers on the request subject (an ErrorReply to garbage)."""
        timeout = self.wait_s if timeout is None else timeout
        nc = await connect(self.control(), name="test-wait")
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await nc.request(Subjects(self.prefix).request, b"\xc1", timeout=0.5)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise AssertionError("no tally answered") from None
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    async def start_system(self, verifiers: int = 4, *tally_args: str) -> membership.PoolView:
        for i in range(1, verifiers + 1):
            self.start_verifier(f"v{i}")
        await self.wait_pool(verifiers)
        self.start_tally("t1", *tally_args)
        await self.wait_tally()
        # the tally's own record (tally.t1) moves the epoch: the pool as the tally sees it
        return await self.wait_pool(verifiers)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.processes[name].send_signal(sig)

    def stop_all(self, timeout: float = 10.0) -> dict[str, int | None]:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(5)
        return codes
