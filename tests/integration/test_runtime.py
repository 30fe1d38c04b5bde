"""The worker runtime against a real nats-server: discovery, heartbeats, staged stop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.config import NatsConfig
from bus.runtime import EXIT_CONFIG, EXIT_CONNECT, RuntimeConfig
from bus.subjects import Subjects
from schemas.messages import Heartbeat, MetricsSnapshot
from tests.wait import eventually
from workers.cli.operator import discover
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def runtime(nats_config: NatsConfig, tmp_path: Path, worker_id: str = "v1") -> RuntimeConfig:
    return RuntimeConfig(
        worker_id=worker_id,
        nats=nats_config,
        heartbeat_s=0.2,
        metrics_s=0.2,
        drain_timeout_s=2,
        data_dir=tmp_path,
    )


async def test_worker_is_a_discoverable_micro_service(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    async with VerifierWorker(runtime(nats_config, tmp_path)) as worker:
        found = await discover(nc, nats_config.prefix)
        assert [(s["name"], s["metadata"]["worker_id"]) for s in found] == [
            ("agentic-payments-verifier", "v1")
        ]
        assert found[0]["metadata"]["public_key"] == worker.identity.public_key_hex
        info = json.loads(
            (
                await nc.request(
                    "$SRV.INFO.agentic-payments-verifier." + found[0]["id"], b"", timeout=2
                )
            ).data
        )
        assert info["endpoints"][0]["subject"] == f"{nats_config.prefix}.status.verifier.v1"
        stats = json.loads(
            (
                await nc.request(
                    "$SRV.STATS.agentic-payments-verifier." + found[0]["id"], b"", timeout=2
                )
            ).data
        )
        assert stats["name"] == "agentic-payments-verifier"
        snap = MetricsSnapshot.decode(
            (await nc.request(f"{nats_config.prefix}.status.verifier.v1", b"", timeout=2)).data
        )
        assert snap.health == "Healthy" and snap.worker_id == "v1"


async def test_heartbeats_and_metrics_are_published(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    subjects = Subjects(nats_config.prefix)
    beats: list[Heartbeat] = []
    snaps: list[MetricsSnapshot] = []

    async def on_hb(msg: Msg) -> None:
        beats.append(Heartbeat.decode(msg.data))

    async def on_metrics(msg: Msg) -> None:
        snaps.append(MetricsSnapshot.decode(msg.data))

    await nc.subscribe(subjects.heartbeat_all, cb=on_hb)
    await nc.subscribe(subjects.metrics_all, cb=on_metrics)
    worker = VerifierWorker(runtime(nats_config, tmp_path))
    await worker.start()
    await eventually(lambda: len(beats) >= 3 and bool(snaps), "three heartbeats and a snapshot")
    await worker.stop()
    await worker.stop()  # safe twice
    await eventually(lambda: beats[-1].health == "ShuttingDown", "the last heartbeat")
    assert len(beats) >= 3
    assert [b.seq for b in beats] == sorted(b.seq for b in beats)
    assert beats[0].health == "Healthy" and beats[-1].health == "ShuttingDown"
    assert {b.worker_id for b in beats} == {"v1"} and beats[0].interval_s == 0.2
    assert snaps and snaps[-1].kind == "verifier"


async def test_registration_is_idempotent_and_epoch_moves_on_change(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    subjects = Subjects(nats_config.prefix)
    worker = VerifierWorker(runtime(nats_config, tmp_path))
    assert await membership.register(nc, subjects, "v1", worker.identity)
    first = await membership.read_pool(nc, subjects)
    assert not await membership.register(nc, subjects, "v1", worker.identity)
    assert (await membership.read_pool(nc, subjects)).epoch == first.epoch
    other = VerifierWorker(runtime(nats_config, tmp_path, "v2"))
    assert await membership.register(nc, subjects, "v2", other.identity)
    second = await membership.read_pool(nc, subjects)
    assert second.epoch > first.epoch and len(second.keys) == 2
    assert await membership.remove(nc, subjects, "v2")
    third = await membership.read_pool(nc, subjects)
    assert third.epoch > second.epoch and third.keys == first.keys


async def test_signal_handler_stops_run_cleanly(nats_config: NatsConfig, tmp_path: Path) -> None:
    worker = VerifierWorker(runtime(nats_config, tmp_path))
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        if worker.nc is not None and worker.nc.is_connected and worker._intake:
            break
        await asyncio.sleep(0.05)
    worker.request_stop()  # what SIGTERM calls
    await asyncio.wait_for(task, 10)
    assert worker.nc is not None and worker.nc.is_closed


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_exit_code_for_bad_config(tmp_path: Path) -> None:
    result = run_cli("worker", "tally", "--threshold", "0.67", "--data-dir", str(tmp_path))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "exact fraction" in result.stderr
    result = run_cli("worker", "verifier", "--id", "bad id!", "--data-dir", str(tmp_path))
    assert result.returncode == EXIT_CONFIG


def test_exit_code_when_nats_is_unreachable(tmp_path: Path) -> None:
    result = run_cli(
        "worker",
        "verifier",
        "--id",
        "v1",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--data-dir",
        str(tmp_path),
    )
    assert result.returncode == EXIT_CONNECT, result.stderr
    assert "cannot connect" in result.stderr


def test_cli_sign_and_keygen_roundtrip(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    made = run_cli("keygen", "--out", str(key), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["did"].startswith("did:key:z6Mk")
    assert run_cli("keygen", "--out", str(key)).returncode == EXIT_CONFIG  # no overwrite
    signed = run_cli(
        "sign", "--key", str(key), "--message", "hi", "--json", "--out", str(tmp_path / "r.msgpack")
    )
    assert signed.returncode == 0
    from schemas.identity import verify_signature
    from schemas.messages import VerificationRequest

    req = VerificationRequest.decode((tmp_path / "r.msgpack").read_bytes())
    assert verify_signature(req.public_key, b"hi", req.signature)
    assert json.loads(signed.stdout)["signature"] == req.signature.hex()


def test_exit_code_for_insecure_key_file(tmp_path: Path) -> None:
    from schemas.identity import AgentIdentity

    key = AgentIdentity.generate().save(tmp_path / "v.key")
    key.chmod(0o644)
    result = run_cli(
        "worker",
        "verifier",
        "--id",
        "v1",
        "--key-file",
        str(key),
        "--nats-url",
        "nats://127.0.0.1:1",
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "KEY_FILE_INSECURE" in result.stderr and "chmod 600" in result.stderr


def test_exit_code_without_jetstream(tmp_path: Path) -> None:
    from bus.natsserver import start_nats_server

    server = start_nats_server(tmp_path / "plain", jetstream=False)
    try:
        result = run_cli(
            "worker",
            "verifier",
            "--id",
            "v1",
            "--nats-url",
            server.url,
            "--data-dir",
            str(tmp_path),
        )
    finally:
        server.stop()
    assert result.returncode == EXIT_CONNECT, result.stderr
    assert "JetStream is not available" in result.stderr


async def test_stop_twice_waits_for_the_first(nats_config: NatsConfig, tmp_path: Path) -> None:
    worker = VerifierWorker(runtime(nats_config, tmp_path))
    await worker.start()
    first = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    await worker.stop()  # returns only when the first stop has finished
    assert first.done() and worker.nc is not None and worker.nc.is_closed


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_non_finite_numbers_are_usage_errors(value: str, tmp_path: Path) -> None:
    result = run_cli("worker", "tally", "--max-pending-mib", value, "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "positive finite" in result.stderr


async def test_check_probe_exit_codes(nats_config: NatsConfig, tmp_path: Path) -> None:
    env = {"NATS_URL": nats_config.url, "AP_PREFIX": nats_config.prefix}
    async with VerifierWorker(runtime(nats_config, tmp_path)) as worker:
        ok = await asyncio.to_thread(run_cli, "check", "--kind", "verifier", "--id", "v1", env=env)
        assert ok.returncode == 0 and "Healthy" in ok.stdout, ok.stderr
        for _ in range(6):  # processing failures (not verdicts): 6 of 6 -> Unhealthy
            worker.stats.record(1.0, ok=False)
        sick = await asyncio.to_thread(
            run_cli, "check", "--kind", "verifier", "--id", "v1", env=env
        )
        assert sick.returncode == 1 and "Unhealthy" in sick.stdout
    gone = await asyncio.to_thread(
        run_cli, "check", "--kind", "verifier", "--id", "v1", "--timeout", "0.5", env=env
    )
    assert gone.returncode == EXIT_CONNECT
