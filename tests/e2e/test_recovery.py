"""End-to-end recovery: real worker processes under the local supervisor (delegated mode),
killed with SIGKILL (or frozen with SIGSTOP), respawned by the recovery worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.subjects import Subjects
from schemas.alerts import Alert
from schemas.identity import AgentIdentity
from schemas.messages import Heartbeat
from schemas.recovery import HistoryQuery, RecoveryAttempt
from tests.helpers import ROOT
from workers.recovery.cli import fetch_history
from workers.recovery.supervisor import LocalSupervisor, ProcSpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HB = "0.5"  # x 4 missed: a worker stalled < 2 s by a loaded machine is not respawned


class Watch:
    """Latest heartbeat per worker, and every alert, seen by the test itself."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], Heartbeat] = {}
        self.alerts: list[Alert] = []

    async def on_heartbeat(self, msg: Msg) -> None:
        hb = Heartbeat.decode(msg.data)
        key = (hb.kind, hb.worker_id)
        if key not in self.latest or hb.generation >= self.latest[key].generation:
            self.latest[key] = hb

    async def on_alert(self, msg: Msg) -> None:
        self.alerts.append(Alert.decode(msg.data))


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def specs(*extra: ProcSpec, recovery_args: tuple[str, ...] = ()) -> list[ProcSpec]:
    common = ["--heartbeat-s", HB]
    out = [
        ProcSpec(f"verifier-v{i}", ["worker", "verifier", "--id", f"v{i}", *common])
        for i in range(1, 4)
    ]
    out.append(ProcSpec("tally-t1", ["worker", "tally", "--id", "t1", *common]))
    out.append(
        ProcSpec(
            "recovery-r1",
            [
                "worker",
                "recovery",
                "--id",
                "r1",
                *common,
                "--missed",
                "4",
                "--backoff-s",
                "0.2",
                "--startup-grace-s",
                "15",
                "--max-retries",
                "3",
                *recovery_args,
            ],
        )
    )
    return out + list(extra)


@contextlib.asynccontextmanager
async def system(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client, proc_specs: list[ProcSpec]
) -> AsyncIterator[tuple[LocalSupervisor, Watch]]:
    watch = Watch()
    subjects = Subjects(prefix)
    await nc.subscribe(subjects.heartbeat_all, cb=watch.on_heartbeat)
    await nc.subscribe(subjects.alerts_all, cb=watch.on_alert)
    env = dict(
        os.environ,
        NATS_URL=nats_url,
        AP_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
        AP_DATA_DIR=str(tmp_path),
        AP_SUPERVISOR=f"sup-{prefix}",
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    sup = LocalSupervisor(proc_specs, env=env, log_dir=tmp_path / "logs")
    assert sup.delegate_restarts
    await sup.start()
    try:
        wanted = {(s.kind, s.worker_id) for s in proc_specs}
        await until(lambda: wanted <= set(watch.latest), 60, f"heartbeats of {wanted}")
        js = nc.jetstream()  # the recovery worker reads the stream: wait until it holds all
        deadline = time.monotonic() + 30
        for kind, worker_id in wanted:
            while True:
                try:
                    await js.get_last_msg(
                        subjects.heartbeat_stream, subjects.heartbeat(kind, worker_id)
                    )
                    break
                except Exception:
                    assert time.monotonic() < deadline, f"{kind}/{worker_id} not in the stream"
                    await asyncio.sleep(0.1)
        yield sup, watch
    finally:
        await sup.stop()


def logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((tmp_path / "logs").glob("*.log"))
    )


async def history(nc: Client, prefix: str, kind: str, worker_id: str) -> list[RecoveryAttempt]:
    for _ in range(3):  # a loaded machine may miss one 5 s deadline
        try:
            reply = await fetch_history(nc, Subjects(prefix), HistoryQuery(kind, worker_id), 5.0)
            return list(reply.attempts)
        except Exception:
            await asyncio.sleep(0.5)
    return []


async def kill_and_expect_recovery(
    nc: Client,
    prefix: str,
    tmp_path: Path,
    sup: LocalSupervisor,
    watch: Watch,
    kind: str,
    worker_id: str,
    sig: int = signal.SIGKILL,
) -> None:
    spec = sup.find(kind, worker_id)
    assert spec is not None and spec.process is not None
    old_gen, old_pid, spawns = spec.generation, spec.process.pid, spec.spawns
    assert watch.latest[(kind, worker_id)].generation == old_gen
    os.kill(old_pid, sig)
    try:
        await until(
            lambda: watch.latest[(kind, worker_id)].generation > old_gen,
            60,
            f"a new generation of {kind}/{worker_id}",
        )
        attempts: list[RecoveryAttempt] = []

        async def recovered() -> bool:
            nonlocal attempts
            attempts = await history(nc, prefix, kind, worker_id)
            return any(a.outcome == "recovered" for a in attempts)

        deadline = time.monotonic() + 30
        while not await recovered():
            assert time.monotonic() < deadline, attempts
            await asyncio.sleep(0.2)
    except AssertionError:
        raise AssertionError(logs(tmp_path)) from None
    new = watch.latest[(kind, worker_id)]
    done = [a for a in attempts if a.outcome == "recovered"]
    assert len(done) == 1, attempts
    attempt = done[0]
    assert attempt.dead_generation == old_gen
    assert attempt.new_generation == new.generation == spec.generation
    assert attempt.backend == "local" and attempt.recovery_id == "r1"
    assert attempt.last_seen_ms <= attempt.detected_ms <= attempt.requested_ms
    assert attempt.requested_ms <= attempt.respawned_ms <= attempt.first_heartbeat_ms
    assert new.pid != old_pid and spec.process.pid == new.pid
    assert spec.spawns == spawns + 1  # exactly one respawn, and it was requested
    if sig == signal.SIGSTOP:  # the hung process was killed, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)


@pytest.mark.parametrize(("kind", "worker_id"), [("verifier", "v2"), ("tally", "t1")])
async def test_kill_9_is_respawned_by_the_recovery_worker(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client, kind: str, worker_id: str
) -> None:
    async with system(nats_url, prefix, tmp_path, nc, specs()) as (sup, watch):
        await kill_and_expect_recovery(nc, prefix, tmp_path, sup, watch, kind, worker_id)
        stale = [a for a in watch.alerts if a.code == "WORKER_STALE"]
        assert stale and stale[0].severity == "high" and stale[0].signature_ok()
        assert (stale[0].subject_kind, stale[0].subject_id) == (kind, worker_id)
        # the same history from the CLI
        env = dict(os.environ, NATS_URL=nats_url, AP_PREFIX=prefix, PYTHONPATH=str(ROOT))
        cli = [sys.executable, "-m", "workers.cli", "recovery", "history"]
        out = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--worker", f"{kind}/{worker_id}", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["attempts"]
        assert [(r["kind"], r["worker_id"], r["outcome"]) for r in rows] == [
            (kind, worker_id, "recovered")
        ]
        assert 0 <= rows[0]["detection_ms"] < 10_000
        human = await asyncio.to_thread(
            subprocess.run, cli, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert human.returncode == 0 and f"{kind}/{worker_id}" in human.stdout
        bad = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--worker", "nonsense"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 78 and "CONFIG_INVALID" in bad.stderr
        nobody = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--prefix", f"{prefix}x", "--timeout", "1"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nobody.returncode == 69 and "no recovery worker answered" in nobody.stderr


SERVICE_KINDS = [
    ("keys", "k1"),
    ("trust", "trust1"),
    ("authority", "auth1"),
    ("anomaly", "anomaly1"),
]


@pytest.mark.parametrize(("kind", "worker_id"), SERVICE_KINDS)
async def test_kill_9_of_a_service_worker_is_respawned(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client, kind: str, worker_id: str
) -> None:
    """Every other worker kind too: the key manager, trust, authority and anomaly workers."""
    service = ProcSpec(
        f"{kind}-{worker_id}", ["worker", kind, "--id", worker_id, "--heartbeat-s", HB]
    )
    async with system(nats_url, prefix, tmp_path, nc, specs(service)) as (sup, watch):
        await kill_and_expect_recovery(nc, prefix, tmp_path, sup, watch, kind, worker_id)


async def test_recovery_worker_killed_is_respawned_by_its_peer(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client
) -> None:
    peer = ProcSpec(
        "recovery-r2",
        ["worker", "recovery", "--id", "r2", "--heartbeat-s", HB, "--kinds", "recovery"],
    )
    async with system(nats_url, prefix, tmp_path, nc, specs(peer)) as (sup, watch):
        # r1 watches every kind (r2 included); r2 is the peer that could respawn r1.
        await kill_and_expect_recovery(nc, prefix, tmp_path, sup, watch, "recovery", "r2")


async def test_hung_worker_is_killed_and_respawned(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client
) -> None:
    async with system(nats_url, prefix, tmp_path, nc, specs()) as (sup, watch):
        await kill_and_expect_recovery(
            nc, prefix, tmp_path, sup, watch, "verifier", "v3", sig=signal.SIGSTOP
        )


async def test_crash_loop_is_bounded_and_escalated(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client
) -> None:
    # a per-worker policy (the default for everyone else stays 3 retries, 15 s grace)
    proc_specs = specs(
        recovery_args=("--policy", "verifier/v1:max_retries=2,startup_grace_s=3,base_s=0.3")
    )
    async with system(nats_url, prefix, tmp_path, nc, proc_specs) as (sup, watch):
        spec = sup.find("verifier", "v1")
        assert spec is not None and spec.process is not None
        spawns = spec.spawns
        # From now on every start fails: NATS unreachable for it (exit 69 after its bounded
        # first connect) — a crash loop a restart could in principle cure, so retried.
        spec.args += ["--nats-url", "nats://127.0.0.1:1"]
        os.kill(spec.process.pid, signal.SIGKILL)
        try:
            await until(
                lambda: any(a.code == "RECOVERY_GAVE_UP" for a in watch.alerts),
                90,
                "the give-up alert",
            )
        except AssertionError:
            raise AssertionError(logs(tmp_path)) from None
        try:
            alert = next(a for a in watch.alerts if a.code == "RECOVERY_GAVE_UP")
            assert alert.severity == "critical" and alert.signature_ok()
            assert (alert.subject_kind, alert.subject_id) == ("verifier", "v1")
            key = AgentIdentity.load(tmp_path / "keys" / "recovery-r1.key")
            assert alert.signer == key.public_key and alert.source_id == "r1"
            assert alert.details["attempts"] == 2
            await asyncio.sleep(2.0)  # nothing more happens after the give-up
            assert spec.spawns == spawns + 2, "exactly max-retries respawns"
            attempts = await history(nc, prefix, "verifier", "v1")
            assert sorted(a.attempt for a in attempts) == [1, 2]
            assert [a.outcome for a in attempts] == ["gave_up", "failed"]  # newest first
            assert spec.process.returncode == 69  # and the supervisor left it down
            assert "cannot connect" in (tmp_path / "logs" / "verifier-v1.log").read_text()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(tmp_path)}") from None


async def test_a_configuration_error_is_escalated_without_retrying(
    nats_url: str, prefix: str, tmp_path: Path, nc: Client
) -> None:
    """Exit 78 cannot be cured by restarting: the supervisor refuses (CONFIG_EXIT) and the
    recovery worker gives up at once, with the cause in the attempt history."""
    async with system(nats_url, prefix, tmp_path, nc, specs()) as (sup, watch):
        spec = sup.find("verifier", "v1")
        assert spec is not None and spec.process is not None
        spawns = spec.spawns
        spec.args += ["--key-file", str(tmp_path)]  # a directory: EXIT_CONFIG from now on
        os.kill(spec.process.pid, signal.SIGKILL)
        try:
            await until(
                lambda: any(a.code == "RECOVERY_GAVE_UP" for a in watch.alerts),
                90,
                "the give-up alert",
            )
            assert "CONFIG_EXIT" in (tmp_path / "logs" / "recovery-r1.log").read_text()
            assert spec.spawns == spawns + 1  # the one respawn that revealed the error
            assert spec.process.returncode == 78
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(tmp_path)}") from None


@pytest.mark.timeout(120)  # a whole `up` system, a kill and a respawn; 51 s under load
def test_up_runs_the_recovery_worker_and_it_respawns_a_killed_verifier(tmp_path: Path) -> None:
    """`agentic-payments up` as a user runs it: kill -9 a verifier, the recovery worker
    (not the supervisor by itself) brings it back; Ctrl-C still stops everything."""
    import re
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{port}",
        "AP_PREFIX": "ap",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AP_DATA_DIR", None)
    env.pop("AP_SUPERVISOR", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--heartbeat-s", "0.5"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cli = [sys.executable, "-m", "workers.cli"]
    lines: list[str] = []
    try:
        assert up.stdout is not None
        while not any(line.startswith("Ctrl-C stops") for line in lines):
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        pids = dict(re.findall(r"^(\S+)\s+pid (\d+)", "".join(lines), re.M))
        assert "recovery" in pids, lines
        victim = int(pids["verifier-v2"])

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )

        deadline = time.monotonic() + 60
        while (
            run("check", "--kind", "verifier", "--id", "v2").returncode != 0
            or run("check", "--kind", "recovery", "--id", "recovery1").returncode != 0
        ):
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.5)
        time.sleep(2.0)  # the recovery worker has v2 in its heartbeat history
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        rows: list[dict[str, object]] = []
        while not any(r["outcome"] == "recovered" for r in rows):
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
            out = run("recovery", "history", "--worker", "verifier/v2", "--json")
            if out.returncode == 0:
                rows = json.loads(out.stdout)["attempts"]
        assert rows[0]["backend"] == "local" and rows[0]["recovery_id"] == "recovery1"
        assert run("demo", "--timeout", "5").returncode == 0
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
    out = "".join(lines) + rest
    assert up.returncode == 0, out
    assert "stopping workers..." in out and "nats-server stopped" in out
    # the supervisor waited for the recovery worker and restarted v2 only on its request
    assert "recovery worker restarts it" in out and "restarted on request" in out
