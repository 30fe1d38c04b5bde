"""End-to-end: a real anomaly worker process catches a lying verifier in a real pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from schemas.alerts import Severity
from schemas.certificate import verify_certificate
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, VerificationRequest
from tests.helpers import Cluster
from tests.secure import start_anomaly as shared_start_anomaly
from tests.secure import until as shared_until
from tests.secure import worker_answers, worker_counters
from workers.anomaly.cli import read_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def requests(agent: AgentIdentity, count: int, tag: str) -> list[tuple[VerificationRequest, bool]]:
    out = []
    for i in range(count):
        req = signed_request(agent, f"pay {i} EUR to merchant-{i}", f"{tag}-{i}")
        if i % 2:
            req = VerificationRequest(
                req.request_id, req.message + b" (altered)", req.signature, req.public_key
            )
        out.append((req, i % 2 == 0))
    return out


def start_anomaly(cluster: Cluster, *extra: str) -> None:
    shared_start_anomaly(cluster, "a1", "--metrics-s", "1", *extra)


async def anomaly_counters(nc: Client, prefix: str, timeout: float = 2.0) -> dict[str, int]:
    return await worker_counters(nc, prefix, "anomaly", "a1", timeout)


async def until(
    check: Callable[[], Awaitable[bool]], what: str, cluster: Cluster, timeout: float = 60.0
) -> None:
    await shared_until(check, what, cluster, timeout, show_log="anomaly-a1")


async def decide(
    cluster: Cluster, batch: list[tuple[VerificationRequest, bool]]
) -> list[ConsensusResult]:
    async with await VerifyClient.connect(
        NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), timeout=15.0, retries=0
    ) as client:
        results = await client.verify_many([r for r, _ in batch], concurrency=4)
    out = []
    for (_, good), result in zip(batch, results, strict=True):
        assert isinstance(result, ConsensusResult), result
        assert result.decision == ("VALID" if good else "INVALID")
        out.append(result)
    return out


@pytest.mark.parametrize("mode", ["lie", "equivocate"])
async def test_byzantine_verifier_is_quarantined_and_the_pool_keeps_deciding(
    cluster: Cluster, mode: str
) -> None:
    for i in range(1, 4):
        cluster.start_verifier(f"v{i}")
    cluster.start_byzantine("b1", mode)
    before = await cluster.wait_pool(4)
    subjects = Subjects(cluster.prefix)
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="test")
    try:
        start_anomaly(cluster)
        await until(lambda: _answers(nc, cluster.prefix), "anomaly worker up", cluster)
        cluster.start_tally()
        await cluster.wait_tally()
        before = await cluster.wait_pool(4)  # after the tally's own record
        agent = AgentIdentity.generate()
        await decide(cluster, requests(agent, 6, "before"))

        async def quarantined() -> bool:
            pool = await membership.read_pool(nc, subjects)
            return any(
                m.worker_id == "b1" and m.status == membership.QUARANTINED for m in pool.members
            )

        await until(quarantined, "b1 quarantined", cluster)
        after = await membership.read_pool(nc, subjects)
        assert after.epoch > before.epoch
        assert after.keys == before.keys - {
            m.public_key for m in before.members if m.worker_id == "b1"
        }
        assert len(after.keys) == 3

        alerts = [a for a, ok in await read_alerts(nc, subjects, 600) if ok]
        critical = [a for a in alerts if a.severity == Severity.CRITICAL]
        assert critical, alerts
        assert {a.subject_id for a in critical} == {"b1"}
        # an equivocator also signs a flipped vote: whichever evidence is seen first wins
        assert critical[0].code in (
            {"BYZANTINE_VOTE"} if mode == "lie" else {"BYZANTINE_VOTE", "EQUIVOCATION"}
        )
        if mode == "equivocate":
            assert (await anomaly_counters(nc, cluster.prefix)).get("equivocations", 0) >= 1
        assert critical[0].details["quarantined"] is True
        assert critical[0].details["new_epoch"] > before.epoch

        # the tally picks up the new epoch; the 3 honest verifiers keep deciding correctly
        async def new_epoch_certificates() -> bool:
            certs = await decide(cluster, requests(agent, 2, f"probe-{time.monotonic_ns()}"))
            return all(c.epoch >= after.epoch and c.n == 3 for c in certs)

        await until(new_epoch_certificates, "certificates under the new epoch", cluster)
        certs = await decide(cluster, requests(agent, 10, "after"))
        for cert in certs:
            assert (cert.n, cert.q) == (3, 2)
            pool_then = await membership.pool_at(nc, subjects, cert.epoch)
            verify_certificate(cert, pool_then.keys, network=cluster.prefix)
            assert {v.verifier_key for v in cert.votes} <= after.keys
        # b1 keeps lying but is out: nobody else gets quarantined
        await asyncio.sleep(1.0)  # time is the subject: nobody else is quarantined meanwhile
        final = await membership.read_pool(nc, subjects)
        assert [m.worker_id for m in final.members if m.status != membership.ACTIVE] == ["b1"]
    finally:
        await nc.close()


async def _answers(nc: Client, prefix: str) -> bool:
    return await worker_answers(nc, prefix, "anomaly", "a1")


@pytest.mark.timeout(120)  # 34 s under load
async def test_forged_votes_quarantine_nobody(cluster: Cluster) -> None:
    """Votes signed by an unknown key, and votes claiming an honest member's key but
    signed by another, are ignored: no Byzantine alert, no quarantine, same epoch."""
    for i in range(1, 5):
        cluster.start_verifier(f"v{i}")
    cluster.start_byzantine("b1", "forge")
    cluster.start_byzantine("b2", "unknown-key")
    before = await cluster.wait_pool(6)
    subjects = Subjects(cluster.prefix)
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="test")
    try:
        start_anomaly(cluster)
        await until(lambda: _answers(nc, cluster.prefix), "anomaly worker up", cluster)
        cluster.start_tally()
        await cluster.wait_tally()
        before = await cluster.wait_pool(6)  # after the tally's own record
        agent = AgentIdentity.generate()
        await decide(cluster, requests(agent, 12, "forged"))

        async def all_seen() -> bool:
            c = await anomaly_counters(nc, cluster.prefix)
            return (
                c.get("decisions_checked", 0) >= 12
                and c.get("vote_ignored_bad_signature", 0) >= 1
                and c.get("vote_ignored_not_member", 0) >= 1
            )

        await until(all_seen, "the anomaly worker to see the forged votes", cluster)
        counters = await anomaly_counters(nc, cluster.prefix)
        assert counters.get("byzantine_votes", 0) == 0
        assert counters.get("quarantines", 0) == 0
        after = await membership.read_pool(nc, subjects)
        assert after.epoch == before.epoch and after.keys == before.keys
        alerts = [a for a, _ in await read_alerts(nc, subjects, 600)]
        assert not [a for a in alerts if a.severity == Severity.CRITICAL]
    finally:
        await nc.close()


async def test_no_quarantine_below_the_minimum_pool(cluster: Cluster) -> None:
    """2 honest + 1 liar: quarantine would leave 2 (< 3), so the liar is alerted, stays."""
    cluster.start_verifier("v1")
    cluster.start_verifier("v2")
    cluster.start_byzantine("b1", "lie")
    before = await cluster.wait_pool(3)
    subjects = Subjects(cluster.prefix)
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="test")
    try:
        start_anomaly(cluster)
        await until(lambda: _answers(nc, cluster.prefix), "anomaly worker up", cluster)
        cluster.start_tally("t1", "--deadline-ms", "1500")
        await cluster.wait_tally()
        before = await cluster.wait_pool(3)  # after the tally's own record
        agent = AgentIdentity.generate()
        async with await VerifyClient.connect(
            NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), timeout=15.0, retries=0
        ) as client:
            await client.verify_many([r for r, _ in requests(agent, 4, "small")])

        async def alerted() -> bool:
            return any(
                a.severity == Severity.CRITICAL for a, _ in await read_alerts(nc, subjects, 600)
            )

        await until(alerted, "a critical alert", cluster)
        critical = [
            a
            for a, ok in await read_alerts(nc, subjects, 600)
            if ok and a.severity == Severity.CRITICAL
        ]
        assert critical[0].subject_id == "b1"
        assert critical[0].details["quarantined"] is False
        assert "below the minimum" in str(critical[0].details["reason"])
        after = await membership.read_pool(nc, subjects)
        assert after.epoch == before.epoch and after.keys == before.keys
    finally:
        await nc.close()


async def test_rate_limit_delays_the_second_quarantine(cluster: Cluster) -> None:
    """Two liars among seven (f=2, so the pool honours both quarantines): the first is
    quarantined at once, the second only after the minimum interval (alerted meanwhile,
    with the rate limit as the reason)."""
    for i in range(1, 6):
        cluster.start_verifier(f"v{i}")
    cluster.start_byzantine("b1", "lie")
    cluster.start_byzantine("b2", "lie")
    await cluster.wait_pool(7)
    subjects = Subjects(cluster.prefix)
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="test")
    try:
        start_anomaly(cluster, "--quarantine-interval-s", "4")
        await until(lambda: _answers(nc, cluster.prefix), "anomaly worker up", cluster)
        cluster.start_tally()
        await cluster.wait_tally()
        agent = AgentIdentity.generate()
        await decide(cluster, requests(agent, 4, "first"))

        async def out() -> list[str]:
            pool = await membership.read_pool(nc, subjects)
            return sorted(m.worker_id for m in pool.members if m.status != membership.ACTIVE)

        async def one_out() -> bool:
            return len(await out()) == 1

        await until(one_out, "one liar quarantined", cluster)
        first_at = time.monotonic()

        async def second_alerted() -> bool:
            return any(
                a.severity == Severity.CRITICAL and not a.details["quarantined"]
                for a, _ in await read_alerts(nc, subjects, 600)
            )

        await until(second_alerted, "the other liar alerted, not quarantined", cluster)
        assert len(await out()) == 1
        held = [
            a
            for a, _ in await read_alerts(nc, subjects, 600)
            if a.severity == Severity.CRITICAL and not a.details["quarantined"]
        ]
        assert "rate limit" in str(held[0].details["reason"])

        async def both_out() -> bool:
            await decide(cluster, requests(agent, 2, f"more-{time.monotonic_ns()}"))
            return await out() == ["b1", "b2"]

        await until(both_out, "both liars quarantined", cluster)
        assert time.monotonic() - first_at >= 3.0
        pool = await membership.read_pool(nc, subjects)
        assert len(pool.keys) == 5
    finally:
        await nc.close()
