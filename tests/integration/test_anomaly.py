"""The anomaly worker against a real nats-server: metrics in, signed alerts out."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.config import NatsConfig
from bus.connection import barrier
from bus.runtime import RuntimeConfig
from bus.streams import ensure_telemetry_streams
from bus.subjects import Subjects
from schemas.alerts import Alert, Severity
from schemas.codec import encode
from schemas.messages import MetricsSnapshot
from workers.anomaly.baseline import BaselineConfig, Method
from workers.anomaly.cli import read_alerts
from workers.anomaly.worker import AnomalyOptions, AnomalyWorker

pytestmark = pytest.mark.integration


def runtime(config: NatsConfig, tmp_path: Path, worker_id: str = "a1") -> RuntimeConfig:
    return RuntimeConfig(
        worker_id=worker_id,
        nats=config,
        heartbeat_s=30,
        metrics_s=30,
        drain_timeout_s=2,
        data_dir=tmp_path,
    )


@asynccontextmanager
async def anomaly(
    config: NatsConfig, tmp_path: Path, method: Method = Method.SIGMA, worker_id: str = "a1"
) -> AsyncIterator[AnomalyWorker]:
    worker = AnomalyWorker(
        runtime(config, tmp_path, worker_id), AnomalyOptions(baseline=BaselineConfig(method=method))
    )
    await worker.start()
    try:
        await asyncio.wait_for(worker.replayed.wait(), 30)
        yield worker
    finally:
        await worker.stop()


class Feeder:
    """Publishes a tally's MetricsSnapshots (stored by the metrics stream)."""

    def __init__(self, nc: Client, subjects: Subjects, worker_id: str = "t1") -> None:
        self.nc, self.subjects, self.worker_id = nc, subjects, worker_id
        self.tasks = 0
        self.total_ms = 0.0
        self.rng = random.Random(3)

    async def send(self, interval_ms: list[float], per_interval: int = 100) -> None:
        js = self.nc.jetstream()
        for ms in interval_ms:
            self.tasks += per_interval
            self.total_ms += ms * per_interval
            snap = MetricsSnapshot(
                kind="tally",
                worker_id=self.worker_id,
                instance="i1",
                ts_ms=time.time_ns() // 1_000_000,
                tasks=self.tasks,
                successes=self.tasks,
                failures=0,
                avg_ms=round(self.total_ms / self.tasks, 3),
                p99_ms=0.0,
                health="Healthy",
            )
            await js.publish(self.subjects.metrics("tally", self.worker_id), snap.encode())

    async def normal(self, count: int) -> None:
        await self.send([self.rng.gauss(5.0, 0.3) for _ in range(count)])


async def collect(nc: Client, subject: str) -> list[tuple[str, Alert]]:
    """Every alert published on ``subject`` from now on, with the subject it came on."""
    got: list[tuple[str, Alert]] = []

    async def cb(msg: Msg) -> None:
        got.append((msg.subject, Alert.decode(msg.data)))

    await nc.subscribe(subject, cb=cb)
    await barrier(nc)
    return got


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("method", [Method.SIGMA, Method.MAD])
async def test_spike_raises_one_signed_alert_on_its_severity_subject_and_in_the_stream(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, method: Method
) -> None:
    subjects = Subjects(nats_config.prefix)
    got = await collect(nc, subjects.alerts_all)
    async with anomaly(nats_config, tmp_path, method) as worker:
        feeder = Feeder(nc, subjects)
        await feeder.normal(30)
        await feeder.send([50.0])  # one spike: hysteresis keeps quiet
        await feeder.normal(5)
        await until(lambda: worker.stats.counters["metrics_live"] >= 36)
        assert got == []
        await feeder.send([50.0, 50.0, 50.0])
        await until(lambda: len(got) >= 1)
        subject, alert = got[0]
        assert alert.code == "METRIC_ANOMALY"
        assert subject == subjects.alert(alert.severity)
        # MAD is not moved by the earlier spike and the burst itself; sigma is (the burst
        # samples in the window inflate the stddev), so it may report a lower severity
        assert (
            alert.severity == Severity.HIGH
            if method is Method.MAD
            else alert.severity != Severity.CRITICAL
        )
        assert (alert.subject_kind, alert.subject_id) == ("tally", "t1")
        assert alert.details["metric"] == "processing_ms"
        assert alert.details["method"] == method.value
        assert alert.signature_ok() and alert.signer == worker.identity.public_key
        await feeder.normal(5)
        await until(lambda: any(a.code == "METRIC_ANOMALY_CLEARED" for _, a in got))
        stored = await read_alerts(nc, subjects, 600)
        assert [a.alert_id for a, ok in stored if ok] == [a.alert_id for _, a in got]
        assert len(got) == 2


async def test_restart_catches_up_from_the_stream(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    """History published while no anomaly worker ran is replayed: the baseline is warm at
    once (without the replay, 3 spikes would fall in the warm-up and say nothing), and an
    alert raised before a restart is not raised again by the replay."""
    subjects = Subjects(nats_config.prefix)
    await ensure_telemetry_streams(nc, subjects)
    feeder = Feeder(nc, subjects)
    await feeder.normal(30)
    got = await collect(nc, subjects.alerts_all)
    async with anomaly(nats_config, tmp_path) as worker:
        assert worker.stats.counters["metrics_replayed"] >= 30
        await feeder.send([60.0, 60.0, 60.0])
        await until(lambda: len(got) == 1)
    first = got[0][1]
    async with anomaly(nats_config, tmp_path) as again:  # same id: replays all of it
        assert again.stats.counters["metrics_replayed"] >= 33
        assert again.stats.counters["alerts_already_published"] >= 1
        await asyncio.sleep(0.5)  # time is the subject: no second alert is published
        assert [a.alert_id for _, a in got] == [first.alert_id]
        # and it still watches: the baseline it rebuilt raises the next anomaly
        await feeder.normal(40)
        await feeder.send([200.0, 200.0, 200.0])
        await until(
            lambda: any(a.code == "METRIC_ANOMALY" and a.alert_id != first.alert_id for _, a in got)
        )


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        b"",
        b"\x92\x01",
        b"\xdb" + b"\xff" * 8,
        encode({"type": "metrics", "v": 99}),
        b"\x91" + b"\x00" * (900 * 1024),
    ],
)
async def test_bad_input_is_counted_and_the_worker_keeps_serving(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, payload: bytes
) -> None:
    subjects = Subjects(nats_config.prefix)
    async with anomaly(nats_config, tmp_path) as worker:
        await nc.jetstream().publish(subjects.metrics("tally", "t1"), payload)
        for subject in (subjects.votes("t1"), subjects.decision("VALID"), subjects.equivocation):
            await nc.publish(subject, payload)
        await until(lambda: any(k.startswith("metrics_rejected_") for k in worker.stats.counters))
        await until(
            lambda: (
                any(k.startswith("vote_ignored_") for k in worker.stats.counters)
                and any(k.startswith("decision_ignored_") for k in worker.stats.counters)
                and any(k.startswith("evidence_ignored_") for k in worker.stats.counters)
            )
        )
        reply = await nc.request(subjects.status("anomaly", "a1"), b"", timeout=5)
        assert MetricsSnapshot.decode(reply.data).worker_id == "a1"
        got = await collect(nc, subjects.alerts_all)
        feeder = Feeder(nc, subjects)
        await feeder.normal(30)
        await feeder.send([80.0] * 3)
        await until(lambda: len(got) >= 1)


async def test_alerts_cli_reads_the_stream(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.cli.main import main

    subjects = Subjects(nats_config.prefix)
    argv = ["alerts", "--nats-url", nats_config.url, "--prefix", nats_config.prefix, "--json"]
    assert await asyncio.to_thread(main, argv) == 69  # no alerts stream yet
    capsys.readouterr()
    got = await collect(nc, subjects.alerts_all)
    async with anomaly(nats_config, tmp_path):
        assert await asyncio.to_thread(main, argv) == 1  # stream, but nothing in it
        capsys.readouterr()
        feeder = Feeder(nc, subjects)
        await feeder.normal(30)
        await feeder.send([90.0] * 3)
        await until(lambda: len(got) >= 1)
    assert await asyncio.to_thread(main, argv) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [a["alert_id"] for a in out["alerts"]] == [a.alert_id for _, a in got]
    assert all(a["signature_ok"] and a["code"] == "METRIC_ANOMALY" for a in out["alerts"])
    assert await asyncio.to_thread(main, [*argv, "--severity", "critical"]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        ["--warmup", "1"],
        ["--window", "1"],
        ["--min-pool", "2"],
        ["--byzantine-after", "0"],
        ["--raise-after", "0"],
    ],
)
def test_bad_worker_configuration_exits_78(bad: list[str], tmp_path: Path) -> None:
    from workers.cli.main import main

    assert main(["worker", "anomaly", "--data-dir", str(tmp_path), *bad]) == 78


async def test_quarantine_is_compare_and_set_and_sticks(nc: Client, prefix: str) -> None:
    from bus import membership
    from schemas.errors import ConfigError
    from schemas.identity import AgentIdentity

    subjects = Subjects(prefix)
    ids = [AgentIdentity.generate() for _ in range(4)]
    keys = [i.public_key for i in ids]
    for i, ident in enumerate(ids):
        await membership.register(nc, subjects, f"v{i}", ident)
    before = await membership.read_pool(nc, subjects)
    assert await membership.quarantine(nc, subjects, "v0", keys[1]) is None  # not its key
    assert await membership.quarantine(nc, subjects, "nobody", keys[0]) is None
    epoch = await membership.quarantine(nc, subjects, "v0", keys[0])
    assert epoch is not None and epoch > before.epoch
    after = await membership.read_pool(nc, subjects)
    assert after.epoch == epoch and after.keys == before.keys - {keys[0]}
    assert await membership.quarantine(nc, subjects, "v0", keys[0]) is None  # already out
    # a restarted Byzantine verifier does not let itself back in
    assert await membership.register(nc, subjects, "v0", ids[0]) is False
    with pytest.raises(ConfigError):  # nor is another member's key admitted: one key, one seat
        await membership.admit(nc, subjects, "v0", keys[1])
    assert (await membership.read_pool(nc, subjects)).keys == after.keys
    # an operator's removal does
    assert await membership.remove(nc, subjects, "v0")
    assert await membership.register(nc, subjects, "v0", ids[0]) is True
    assert keys[0] in (await membership.read_pool(nc, subjects)).keys


async def test_forged_certificate_blames_nobody_a_real_one_catches_the_liar(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    """Votes and certificates published by hand: a certificate signed by an attacker that
    claims the opposite outcome (so that honest votes would look like lies) is ignored;
    the real certificate makes the one lying member's signed vote Byzantine evidence."""
    from dataclasses import replace

    from bus import membership
    from schemas.certificate import sign_certificate
    from schemas.identity import AgentIdentity
    from tests.factories import Scenario

    subjects = Subjects(nats_config.prefix)
    sc = Scenario(network=nats_config.prefix)
    for i, v in enumerate(sc.verifiers):
        await membership.register(nc, subjects, f"v{i}", v)
    sc.epoch = (await membership.read_pool(nc, subjects)).epoch
    got = await collect(nc, subjects.alerts_all)
    async with anomaly(nats_config, tmp_path) as worker:
        votes = [sc.vote(i, lie=i == 3) for i in range(4)]
        for vote in votes:
            await nc.publish(subjects.votes(sc.tally_id), vote.encode())
        ballot_round = sc.round()
        for vote in votes:
            ballot_round.offer(vote)
        real = sign_certificate(
            sc.tally,
            ballot_round.certificate(
                0, tally_key=sc.tally.public_key, decided_at_ms=1, latency_us=1000
            ),
            network=sc.network,
        )
        assert real.decision == "VALID"
        forged = sign_certificate(
            AgentIdentity.generate(),
            replace(
                real, decision="INVALID", votes_for=real.votes_against, votes_against=real.votes_for
            ),
            network=sc.network,
        )
        await nc.publish(subjects.decision("INVALID"), forged.encode())
        await until(
            lambda: (
                worker.stats.counters["votes_checked"] >= 4
                and worker.stats.counters["decision_ignored_CERTIFICATE_INVALID"] >= 1
            )
        )
        await asyncio.sleep(0.3)  # time is the subject: no alert follows
        assert got == []
        assert worker.stats.counters["byzantine_votes"] == 0
        await nc.publish(subjects.decision("VALID"), real.encode())
        await until(lambda: len(got) >= 1)
        subject, alert = got[0]
        assert subject == subjects.alert("critical")
        assert (alert.code, alert.subject_id) == ("BYZANTINE_VOTE", "v3")
        assert alert.details["quarantined"] is True and alert.signature_ok()
        pool = await membership.read_pool(nc, subjects)
        assert pool.keys == sc.pool - {sc.verifiers[3].public_key}
        assert pool.epoch == alert.details["new_epoch"] > sc.epoch
