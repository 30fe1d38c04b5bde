"""A pool read that fails, comes back partial or stale is never a smaller pool.

Real nats-server behind tests/natsproxy.py, which answers the gets of the members
stream's records with "not found" (a direct get's ``404``, which a replica or mirror
that has not caught up answers: any of them may serve ``$JS.API.DIRECT.GET``,
nats-server #4643; or a message get's error) while the stream info still lists
the records; or answers a direct get with an older revision of a record
(nats-server #4162, after a restart). Before the fix the missing records were taken
as deleted (the pool had 0 keys: ``CertificateInvalid: certificate says n=4 but
the pool has 0 keys``, as in issue #11) and the stale one as current.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from schemas.certificate import sign_certificate
from schemas.errors import PoolUnreadable
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult
from tests.factories import Scenario
from tests.natsproxy import NatsProxy, Reply, Rule

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy(nats_url: str) -> AsyncIterator[NatsProxy]:
    p = NatsProxy(nats_url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def _certificate(nc: Client, prefix: str) -> ConsensusResult:
    """A valid certificate of the current pool epoch (4 registered verifiers; v0 held
    another key first, so its record has an older revision naming that key)."""
    subjects = Subjects(prefix)
    sc = Scenario(network=prefix)
    await membership.register(nc, subjects, "v0", AgentIdentity.generate())
    for i, v in enumerate(sc.verifiers):
        await membership.register(nc, subjects, f"v{i}", v)
    sc.epoch = (await membership.read_pool(nc, subjects)).epoch
    ballot_round = sc.round()
    for i in range(len(sc.verifiers)):
        ballot_round.offer(sc.vote(i))
    body = ballot_round.certificate(0, tally_key=sc.tally.public_key, decided_at_ms=1, latency_us=1)
    return sign_certificate(sc.tally, body, network=prefix)


def _not_found(prefix: str, budget: list[int]) -> Rule:
    """Every get of a pool record finds nothing (while ``budget`` lasts): a direct
    get's ``404`` status, a message get's "no message found" error."""
    stream = f"KV_{Subjects(prefix).members_bucket}"
    direct, msg_get = f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}"
    error = {"code": 404, "err_code": 10037, "description": "no message found"}
    body = json.dumps({"type": "io.nats.jetstream.api.v1.stream_msg_get_response", "error": error})

    def rule(subject: str) -> Reply | None:
        if budget[0] == 0:
            return None
        if subject.startswith(direct):
            budget[0] -= 1
            return Reply("NATS/1.0 404 Message Not Found")
        if subject == msg_get:
            budget[0] -= 1
            return Reply(data=body.encode())
        return None

    return rule


async def test_a_persistently_partial_pool_read_is_a_transport_error_not_certificate_invalid(
    nats_config: NatsConfig, nc: Client, proxy: NatsProxy
) -> None:
    cert = await _certificate(nc, nats_config.prefix)
    via = await connect(NatsConfig(url=proxy.url, prefix=nats_config.prefix), name="via-proxy")
    try:
        proxy.rule = _not_found(nats_config.prefix, [10**9])
        client = VerifyClient(via, prefix=nats_config.prefix, retries=2)
        with pytest.raises(PoolUnreadable) as raised:  # retried by the client, then surfaced
            await client.check(cert, cert.request_id, cert.request_digest)
        assert raised.value.code == "POOL_UNREADABLE"
        assert "partial read" in str(raised.value)
        # the client read the pool 3 times (its 2 retries), each read retried itself
        assert len(proxy.answered) > 2 * membership.READ_ATTEMPTS
        reads = len(proxy.answered)
        with pytest.raises(PoolUnreadable, match="partial read"):
            await membership.read_pool(via, Subjects(nats_config.prefix))
        assert len(proxy.answered) - reads > 1
    finally:
        await via.close()


async def test_a_transiently_partial_pool_read_is_retried_and_the_certificate_checks_out(
    nats_config: NatsConfig, nc: Client, proxy: NatsProxy
) -> None:
    cert = await _certificate(nc, nats_config.prefix)
    via = await connect(NatsConfig(url=proxy.url, prefix=nats_config.prefix), name="via-proxy")
    try:
        budget = [3]  # the first three record gets find nothing, later ones do
        proxy.rule = _not_found(nats_config.prefix, budget)
        client = VerifyClient(via, prefix=nats_config.prefix)
        await client.check(cert, cert.request_id, cert.request_digest)
        assert budget == [0]  # the fault did hit the reads
        assert len(await client.pool_keys(cert.epoch)) == cert.n  # the whole pool was cached
    finally:
        await via.close()


async def test_a_direct_get_answered_from_a_stale_replica_does_not_change_the_pool(
    nats_config: NatsConfig, nc: Client, proxy: NatsProxy
) -> None:
    """nats-server #4162: right after a restart a replica answers direct gets with
    revisions older than the leader's. Here every direct get of record v0 answers
    its first revision (another key); the leader's listing and epoch are current."""
    cert = await _certificate(nc, nats_config.prefix)
    members = Subjects(nats_config.prefix).members_bucket
    stream = f"KV_{members}"
    first = await nc.jetstream().get_msg(stream, seq=1)
    assert first.subject == f"$KV.{members}.v0"
    stale = Reply(
        f"NATS/1.0\r\nNats-Stream: {stream}\r\nNats-Subject: {first.subject}\r\n"
        f"Nats-Sequence: 1\r\nNats-Time-Stamp: 2026-01-01T00:00:00Z",
        first.data or b"",
    )
    v0_get = f"$JS.API.DIRECT.GET.{stream}.{first.subject}"
    proxy.rule = lambda subject: stale if subject == v0_get else None
    via = await connect(NatsConfig(url=proxy.url, prefix=nats_config.prefix), name="via-proxy")
    try:
        await VerifyClient(via, prefix=nats_config.prefix).check(
            cert, cert.request_id, cert.request_digest
        )
        view = await membership.read_pool(via, Subjects(nats_config.prefix))
        assert view == await membership.read_pool(nc, Subjects(nats_config.prefix))
    finally:
        await via.close()


async def test_the_pool_watcher_reports_every_epoch_move_and_wakes_who_waits(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    seen: list[int] = []
    watcher = membership.PoolWatcher(nc, subjects, on_change=lambda view: seen.append(view.epoch))
    await watcher.start()
    try:
        assert not await watcher.wait_for_epoch(1, 0.2)  # an empty pool stays at 0
        waiting = asyncio.create_task(watcher.wait_for_epoch(2, 10.0))
        await membership.register(nc, subjects, "w0", AgentIdentity.generate())
        await membership.register(nc, subjects, "w1", AgentIdentity.generate())
        assert await waiting
        now = await membership.read_pool(nc, subjects)
        assert watcher.view.epoch == now.epoch == 2 and watcher.view == now
        assert seen and seen[-1] == 2 and seen == sorted(set(seen))  # each move once, in order
        assert await watcher.wait_for_epoch(2, 0.0)  # reached: no wait at all
    finally:
        await watcher.stop()
