"""The recovery worker against a real nats-server with scripted heartbeats: the systemd
backend through a recording ``systemctl`` on disk, the Kubernetes backend against a real
local HTTP server, zombies, bad input to the history endpoint and the supervisor."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from bus.config import NatsConfig
from bus.runtime import RuntimeConfig
from bus.subjects import Subjects
from schemas.alerts import Alert
from schemas.codec import decode, encode
from schemas.messages import ErrorReply, Heartbeat
from schemas.recovery import HistoryQuery, RecoveryAttempt, RestartReply, RestartRequest
from workers.recovery.backends import KubernetesBackend, SystemdBackend
from workers.recovery.cli import fetch_history
from workers.recovery.staleness import RetryPolicy
from workers.recovery.supervisor import LocalSupervisor, ProcSpec
from workers.recovery.worker import RecoveryOptions, RecoveryWorker

pytestmark = pytest.mark.integration
INTERVAL = 0.2


def heartbeat(
    kind: str,
    worker_id: str,
    generation: int,
    seq: int,
    host: str = "node-1",
    health: str = "Healthy",
) -> Heartbeat:
    return Heartbeat(
        kind=kind,
        worker_id=worker_id,
        instance=f"i{generation}",
        seq=seq,
        ts_ms=int(time.time() * 1000),
        interval_s=INTERVAL,
        health=health,
        pid=1000 + generation,
        host=host,
        generation=generation,
    )


async def until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Beater:
    """Publishes heartbeats of one fake worker until stopped."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        kind: str,
        worker_id: str,
        generation: int,
        host: str = "node-1",
    ) -> None:
        self.nc, self.subjects = nc, Subjects(prefix)
        self.kind, self.worker_id, self.generation, self.host = kind, worker_id, generation, host
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        seq = 0
        while True:
            seq += 1
            hb = heartbeat(self.kind, self.worker_id, self.generation, seq, self.host)
            await self.nc.publish(self.subjects.heartbeat(self.kind, self.worker_id), hb.encode())
            await asyncio.sleep(INTERVAL)

    def start(self) -> Beater:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def options(**policy: Any) -> RecoveryOptions:
    base: dict[str, Any] = {"max_retries": 2, "base_s": 0.1, "startup_grace_s": 2.0}
    return RecoveryOptions(policy=RetryPolicy(**{**base, **policy}), missed=3, replay_s=30)


async def start_recovery(
    nats_config: NatsConfig, tmp_path: Path, factory: Any, opts: RecoveryOptions
) -> RecoveryWorker:
    worker = RecoveryWorker(
        RuntimeConfig(worker_id="r1", nats=nats_config, heartbeat_s=0.5, data_dir=tmp_path),
        opts,
        factory,
    )
    await worker.start()
    return worker


@pytest.fixture
async def alerts(nc: Client, prefix: str) -> AsyncIterator[list[Alert]]:
    got: list[Alert] = []

    async def on_alert(msg: Any) -> None:
        got.append(Alert.decode(msg.data))

    sub = await nc.subscribe(Subjects(prefix).alerts_all, cb=on_alert)
    yield got
    await sub.unsubscribe()


async def attempts_of(
    nc: Client, prefix: str, kind: str = "", worker_id: str = ""
) -> list[RecoveryAttempt]:
    reply = await fetch_history(nc, Subjects(prefix), HistoryQuery(kind, worker_id), 5.0)
    return list(reply.attempts)


def recording_systemctl(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    record = tmp_path / "systemctl-calls.txt"
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {record}\n'
        f'[ {exit_code} -ne 0 ] && echo "Unit not found." >&2\nexit {exit_code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


# ---------------------------------------------------------------- systemd
async def test_systemd_backend_restarts_the_unit_and_new_generation_completes_it(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path, alerts: list[Alert]
) -> None:
    script, record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    beater = Beater(nc, prefix, "verifier", "v7", generation=100).start()
    try:
        await until(lambda: _async(("verifier", "v7") in worker.tracker.workers), 10, "tracking v7")
        await beater.stop()  # the worker dies
        await until(lambda: _async(record.exists()), 10, "systemctl to be called")
        assert (
            record.read_text().split("\n")[0]
            == "restart --no-block agentic-payments-verifier@v7.service"
        )
        replacement = Beater(nc, prefix, "verifier", "v7", generation=200).start()
        try:

            async def recovered() -> bool:
                found = await attempts_of(nc, prefix, "verifier", "v7")
                return bool(found) and found[0].outcome == "recovered"

            await until(recovered, 10, "the attempt to be recovered")
        finally:
            await replacement.stop()
        attempt = (await attempts_of(nc, prefix, "verifier", "v7"))[0]
        assert (attempt.attempt, attempt.dead_generation, attempt.new_generation) == (1, 100, 200)
        assert attempt.backend == "systemd" and attempt.respawned_ms >= attempt.requested_ms
        assert attempt.first_heartbeat_ms >= attempt.respawned_ms
        stale = [a for a in alerts if a.code == "WORKER_STALE"]
        assert stale and stale[0].signature_ok() and stale[0].severity == "high"
        assert record.read_text().count("restart") == 1
    finally:
        await worker.stop()


async def test_failing_backend_is_retried_then_given_up_with_a_critical_alert(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path, alerts: list[Alert]
) -> None:
    script, record = recording_systemctl(tmp_path, exit_code=5)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(
        nats_config, tmp_path, lambda nc, s: systemd, options(max_retries=3)
    )
    beater = Beater(nc, prefix, "tally", "t9", generation=1).start()
    try:
        await until(lambda: _async(("tally", "t9") in worker.tracker.workers), 10, "tracking")
        await beater.stop()
        await until(
            lambda: _async(any(a.code == "RECOVERY_GAVE_UP" for a in alerts)),
            20,
            "the give-up alert",
        )
        gave_up = next(a for a in alerts if a.code == "RECOVERY_GAVE_UP")
        assert gave_up.severity == "critical" and gave_up.signature_ok()
        assert gave_up.signer == worker.identity.public_key
        assert record.read_text().count("restart") == 3
        found = await attempts_of(nc, prefix, "tally", "t9")
        assert [a.attempt for a in found] == [3, 2, 1]
        assert [a.outcome for a in found] == ["gave_up", "failed", "failed"]
        assert "exited 5" in found[1].detail and "Unit not found" in found[1].detail
        assert worker.stats.failures == 3
    finally:
        await worker.stop()


# ---------------------------------------------------------------- Kubernetes
class Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str, bytes]] = []
    status = 200

    def do_DELETE(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.calls.append(
            (self.command, self.path, self.headers.get("Authorization", ""), body)
        )
        self.send_response(Recorder.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"kind":"Pod"}')

    def log_message(self, *args: Any) -> None:
        pass


async def test_kubernetes_backend_deletes_the_pod_named_by_the_heartbeat_host(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    kube = KubernetesBackend(
        api=f"http://127.0.0.1:{server.server_address[1]}", namespace="payments", token_file=token
    )
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: kube, options())
    pod = "agentic-payments-verifier-7c9f6d-x2x7q"
    beater = Beater(nc, prefix, "verifier", "v1", generation=5, host=pod).start()
    try:
        await until(lambda: _async(("verifier", "v1") in worker.tracker.workers), 10, "tracking")
        await beater.stop()
        await until(lambda: _async(bool(Recorder.calls)), 10, "the DELETE")
        method, path, auth, body = Recorder.calls[0]
        assert method == "DELETE"
        assert path == f"/api/v1/namespaces/payments/pods/{pod}"
        assert auth == "Bearer s3cr3t-token"
        assert json.loads(body)["gracePeriodSeconds"] == 0

        async def respawned() -> bool:
            found = await attempts_of(nc, prefix)
            return bool(found) and found[0].outcome == "respawned"

        await until(respawned, 10, "the attempt to be recorded")
    finally:
        await worker.stop()
        server.shutdown()


# ---------------------------------------------------------------- zombies and bad input
async def test_zombie_heartbeats_are_ignored(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    script, record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    new = Beater(nc, prefix, "verifier", "v4", generation=2).start()
    try:
        await until(lambda: _async(("verifier", "v4") in worker.tracker.workers), 10, "tracking")
        zombie = Beater(nc, prefix, "verifier", "v4", generation=1).start()
        await until(
            lambda: _async(worker.stats.counters.get("zombie_heartbeats", 0) >= 3),
            10,
            "three zombie heartbeats refused",
        )
        assert worker.tracker.workers[("verifier", "v4")].generation == 2
        await new.stop()  # the replacement dies; the zombie's heartbeats must not hide it
        await until(lambda: _async(record.exists()), 10, "a respawn despite the zombie")
        await zombie.stop()
    finally:
        await new.stop()
        await worker.stop()


async def test_clean_stop_is_not_respawned_and_bad_history_requests_get_errors(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    script, record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    subjects = Subjects(prefix)
    try:
        for seq in (1, 2):
            await nc.publish(
                subjects.heartbeat("tally", "t2"), heartbeat("tally", "t2", 1, seq).encode()
            )
        await nc.publish(
            subjects.heartbeat("tally", "t2"),
            heartbeat("tally", "t2", 1, 3, health="ShuttingDown").encode(),
        )
        await nc.publish(subjects.heartbeat("tally", "t3"), b"\xc1garbage")
        await asyncio.sleep(2.0)  # time is the subject: no respawn for a stopped worker
        assert not record.exists()
        assert worker.tracker.workers[("tally", "t2")].status == "stopped"
        assert worker.stats.counters["heartbeat_malformed"] == 1
        oversized = encode({"type": "recovery_history_query", "v": 1, "kind": "x" * 300_000})
        wrong_version = encode(
            {"type": "recovery_history_query", "v": 9, "kind": "", "worker_id": "", "limit": 5}
        )
        too_many = HistoryQuery(limit=501).to_wire()
        for payload, code in [
            (b"\xc1", "MALFORMED_PAYLOAD"),
            (oversized, "PAYLOAD_TOO_LARGE"),
            (wrong_version, "UNSUPPORTED_VERSION"),
            (encode(too_many), "SCHEMA_VIOLATION"),
            (
                encode(
                    {
                        "type": "recovery_history_query",
                        "v": 1,
                        "kind": 3,
                        "worker_id": "",
                        "limit": 1,
                    }
                ),
                "SCHEMA_VIOLATION",
            ),
        ]:
            reply = await nc.request(subjects.recovery_history, payload, timeout=5)
            assert ErrorReply.from_wire(decode(reply.data)).code == code
        assert await attempts_of(nc, prefix) == []  # still serving
    finally:
        await worker.stop()


async def test_supervisor_control_endpoint(
    nc: Client, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    import os
    import sys

    from tests.helpers import ROOT

    env = dict(
        os.environ,
        NATS_URL=nats_url,
        AP_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
        AP_DATA_DIR=str(tmp_path),
        AP_SUPERVISOR="box",
    )
    spec = ProcSpec("sleeper", ["worker", "sleeper", "--id", "s1"])
    sup = LocalSupervisor([spec], env=env, log_dir=tmp_path / "logs", delegate_restarts=True)
    sup.command = lambda s: [sys.executable, "-c", "import time; time.sleep(60)"]  # type: ignore[method-assign]
    await sup.start()
    try:
        assert sup.control_subject == f"{prefix}.supervisor.box.restart"
        assert (spec.kind, spec.worker_id) == ("sleeper", "s1")
        first_pid, first_gen = spec.process.pid, spec.generation  # type: ignore[union-attr]

        async def ask(payload: bytes) -> Any:
            msg = await nc.request(sup.control_subject, payload, timeout=10)
            obj = decode(msg.data)
            return (
                ErrorReply.from_wire(obj) if obj["type"] == "error" else RestartReply.from_wire(obj)
            )

        # silent on the bus but its loop writes a fresh liveness file: not killed
        from bus import liveness

        path = liveness.liveness_path(tmp_path / "run", "sleeper", "s1")
        path.parent.mkdir(parents=True, exist_ok=True)
        liveness.write(path, liveness.LivenessRecord("sleeper", "s1", first_pid, time.time(), 30.0))
        alive = await ask(RestartRequest("sleeper", "s1", first_gen).encode())
        assert not alive.ok and alive.code == "ALIVE" and spec.process.pid == first_pid  # type: ignore[union-attr]
        liveness.write(
            path, liveness.LivenessRecord("sleeper", "s1", first_pid, time.time() - 60, 30.0)
        )
        # alive but "silent" (liveness file stale): killed and respawned, newer generation
        reply = await ask(RestartRequest("sleeper", "s1", first_gen).encode())
        assert reply.ok and reply.code == "RESTARTED" and reply.generation > first_gen
        assert reply.pid == spec.process.pid != first_pid  # type: ignore[union-attr]
        # a request about the old generation again: the newer one already runs
        again = await ask(RestartRequest("sleeper", "s1", first_gen).encode())
        assert again.ok and again.code == "ALREADY_NEWER" and again.pid == reply.pid
        unknown = await ask(RestartRequest("verifier", "nope", 1).encode())
        assert not unknown.ok and unknown.code == "UNKNOWN_WORKER"
        for payload, code in [
            (b"\xc1", "MALFORMED_PAYLOAD"),
            (encode({"type": "restart_request", "v": 2}), "UNSUPPORTED_VERSION"),
            (
                encode(
                    {
                        "type": "restart_request",
                        "v": 1,
                        "kind": "sleeper",
                        "worker_id": "s1",
                        "dead_generation": -1,
                        "reason": "",
                    }
                ),
                "SCHEMA_VIOLATION",
            ),
        ]:
            err = await ask(payload)
            assert isinstance(err, ErrorReply) and err.code == code
        assert spec.spawns == 2  # bad requests restarted nothing
    finally:
        await sup.stop()


async def _async(value: Any) -> Any:
    return value


# ------------------------------------------------------------ catch-up; several recovery workers
async def test_restarted_recovery_worker_catches_up_from_the_stream(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    """A worker that died while no recovery worker ran is found from the heartbeat stream."""
    from bus.streams import ensure_telemetry_streams

    await ensure_telemetry_streams(nc, Subjects(prefix))
    beater = Beater(nc, prefix, "verifier", "v5", generation=3).start()
    await asyncio.sleep(1.0)  # time is the subject: a second of heartbeats
    await beater.stop()  # dies; nobody is watching
    await asyncio.sleep(1.0)  # time is the subject: silence past the dead-after
    script, record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    try:
        await until(lambda: _async(record.exists()), 15, "a respawn from the replayed history")
        assert "agentic-payments-verifier@v5.service" in record.read_text()
        found = await attempts_of(nc, prefix, "verifier", "v5")
        assert found[0].dead_generation == 3
    finally:
        await worker.stop()


async def test_two_recovery_workers_respawn_once_per_attempt(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    script, record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    first = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    second = RecoveryWorker(
        RuntimeConfig(worker_id="r2", nats=nats_config, heartbeat_s=0.5, data_dir=tmp_path),
        options(),
        lambda nc, s: systemd,
    )
    await second.start()
    beater = Beater(nc, prefix, "tally", "t5", generation=1).start()
    try:
        for w in (first, second):
            await until(
                lambda w=w: _async(("tally", "t5") in w.tracker.workers), 10, "both tracking"
            )
        await beater.stop()
        await until(lambda: _async(record.exists()), 10, "a respawn")
        await asyncio.sleep(1.0)  # both detected it; give the loser time to (not) act
        assert record.read_text().count("restart") == 1
        claimed = first.stats.counters.get(
            "attempt_claimed_elsewhere", 0
        ) + second.stats.counters.get("attempt_claimed_elsewhere", 0)
        assert claimed == 1
        found = await attempts_of(nc, prefix, "tally", "t5")
        assert len(found) == 1 and found[0].recovery_id in ("r1", "r2")
    finally:
        await first.stop()
        await second.stop()


async def test_a_heartbeat_naming_another_worker_than_its_subject_is_ignored(
    nc: Client, nats_config: NatsConfig, prefix: str, tmp_path: Path
) -> None:
    """A verifier may publish only on its own heartbeat subject (permissions); a payload
    claiming to be the tally must not make recovery track, restart or delete the tally."""
    script, _record = recording_systemctl(tmp_path)
    systemd = SystemdBackend(systemctl=str(script))
    worker = await start_recovery(nats_config, tmp_path, lambda nc, s: systemd, options())
    try:
        subjects = Subjects(prefix)
        spoof = heartbeat("tally", "t1", 1, 1, "keys-pod")
        for _ in range(5):
            await nc.publish(subjects.heartbeat("verifier", "v1"), spoof.encode())
            await asyncio.sleep(0.1)  # time is the subject: spoofs spread over time
        await until(
            lambda: _async(worker.stats.counters.get("heartbeat_subject_mismatch", 0) >= 5),
            10,
            "mismatches counted",
        )
        assert ("tally", "t1") not in worker.tracker.workers
    finally:
        await worker.stop()


def test_telemetry_source_reads_the_subject() -> None:
    from bus.subjects import telemetry_source

    s = Subjects("ap")
    assert telemetry_source(s, "ap.heartbeat.verifier.v1") == ("verifier", "v1")
    assert telemetry_source(s, "ap.metrics.tally.t1") == ("tally", "t1")
    assert telemetry_source(s, "other.heartbeat.verifier.v1") is None
    assert telemetry_source(s, "ap.heartbeat.verifier") is None
    assert telemetry_source(s, "ap.decision.VALID.x") is None
