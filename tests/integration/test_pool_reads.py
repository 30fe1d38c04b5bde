"""A pool read that fails or comes back partial is a transport error, never a smaller pool.

Real nats-server behind tests/natsproxy.py, which answers the membership stream's
direct gets with ``404`` (what a replica or mirror that has not caught up answers:
any of them may serve ``$JS.API.DIRECT.GET``) while the stream info, from the
stream leader, still lists the records. Before the fix the records were taken as
deleted: the pool had 0 keys and a valid certificate was refused with
``CertificateInvalid: certificate says n=4 but the pool has 0 keys`` (issue #11).
"""

from __future__ import annotations

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
from schemas.messages import ConsensusResult
from tests.factories import Scenario
from tests.natsproxy import NatsProxy, Rule

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
    """A valid certificate of the current pool epoch (4 registered verifiers)."""
    subjects = Subjects(prefix)
    sc = Scenario(network=prefix)
    for i, v in enumerate(sc.verifiers):
        await membership.register(nc, subjects, f"v{i}", v)
    sc.epoch = (await membership.read_pool(nc, subjects)).epoch
    ballot_round = sc.round()
    for i in range(len(sc.verifiers)):
        ballot_round.offer(sc.vote(i))
    body = ballot_round.certificate(0, tally_key=sc.tally.public_key, decided_at_ms=1, latency_us=1)
    return sign_certificate(sc.tally, body, network=prefix)


def _not_found_for(prefix: str, budget: list[int]) -> Rule:
    stream = f"$JS.API.DIRECT.GET.KV_{Subjects(prefix).members_bucket}"

    def rule(subject: str) -> str | None:
        if not subject.startswith(stream) or budget[0] == 0:
            return None
        budget[0] -= 1
        return "404 Message Not Found"

    return rule


async def test_a_persistently_partial_pool_read_is_a_transport_error_not_certificate_invalid(
    nats_config: NatsConfig, nc: Client, proxy: NatsProxy
) -> None:
    cert = await _certificate(nc, nats_config.prefix)
    via = await connect(NatsConfig(url=proxy.url, prefix=nats_config.prefix), name="via-proxy")
    try:
        proxy.rule = _not_found_for(nats_config.prefix, [10**9])
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
        budget = [3]  # the first three direct gets find nothing, later ones do
        proxy.rule = _not_found_for(nats_config.prefix, budget)
        client = VerifyClient(via, prefix=nats_config.prefix)
        await client.check(cert, cert.request_id, cert.request_digest)
        assert budget == [0]  # the fault did hit the reads
        # and the pool it cached is the whole one
        assert len(await client.pool_keys(cert.epoch)) == cert.n
    finally:
        await via.close()
