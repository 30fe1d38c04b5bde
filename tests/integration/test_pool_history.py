"""Rebuilding a past pool (real nats-server): exact at every epoch, by message gets
only (no consumer), and failing closed when any revision up to the epoch is gone."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from schemas.errors import CertificateInvalid, PoolHistoryMissing, TransportError
from schemas.identity import AgentIdentity
from tests.factories import Scenario

pytestmark = pytest.mark.integration


async def test_pool_at_every_epoch_matches_the_pool_read_then(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    seen: list[membership.PoolView] = []
    ids = [AgentIdentity.generate() for _ in range(5)]
    for i, ident in enumerate(ids):
        await membership.register(nc, subjects, f"v{i}", ident)
        seen.append(await membership.read_pool(nc, subjects))
    await membership.quarantine(nc, subjects, "v1", ids[1].public_key)
    seen.append(await membership.read_pool(nc, subjects))
    await membership.remove(nc, subjects, "v3")
    seen.append(await membership.read_pool(nc, subjects))
    await membership.admit(nc, subjects, "v9", AgentIdentity.generate().public_key)
    seen.append(await membership.read_pool(nc, subjects))
    stream = f"KV_{subjects.members_bucket}"
    js = nc.jetstream()
    consumers = (await js.stream_info(stream)).state.consumer_count
    for view in seen:
        assert await membership.pool_at(nc, subjects, view.epoch) == view
    assert (await js.stream_info(stream)).state.consumer_count == consumers == 0


async def test_pool_at_fails_closed_when_history_is_gone(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    for i in range(3):
        await membership.register(nc, subjects, f"o{i}", AgentIdentity.generate())
    early = await membership.read_pool(nc, subjects)
    for _ in range(6):  # six key changes of one record: history 5 trims its first revision
        await membership.register(nc, subjects, "o0", AgentIdentity.generate())
    with pytest.raises(PoolHistoryMissing, match="is gone"):
        await membership.pool_at(nc, subjects, early.epoch)
    # epochs after the trimmed revisions rebuild fine (from the current records back)
    later = await membership.read_pool(nc, subjects)
    await membership.register(nc, subjects, "o3", AgentIdentity.generate())
    assert await membership.pool_at(nc, subjects, later.epoch) == later
    now = await membership.read_pool(nc, subjects)
    assert (await membership.pool_at(nc, subjects, now.epoch)).keys == now.keys
    kv = await membership.members_bucket(nc, subjects)
    await kv.purge("o1")  # an operator's purge removes o1's history as well
    with pytest.raises(PoolHistoryMissing):
        await membership.pool_at(nc, subjects, now.epoch)
    with pytest.raises(PoolHistoryMissing):
        await membership.superseded_at(nc, subjects, 0)  # revision 1 was trimmed


async def test_a_client_refuses_what_it_cannot_rebuild_and_retries_what_it_cannot_read(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    sc = Scenario(network=nats_config.prefix)
    for i, v in enumerate(sc.verifiers):
        await membership.register(nc, subjects, f"v{i}", v)
    sc.epoch = (await membership.read_pool(nc, subjects)).epoch
    ballot_round = sc.round()
    for i in range(len(sc.verifiers)):
        ballot_round.offer(sc.vote(i))
    from schemas.certificate import sign_certificate

    cert = sign_certificate(
        sc.tally,
        ballot_round.certificate(0, tally_key=sc.tally.public_key, decided_at_ms=1, latency_us=1),
        network=sc.network,
    )
    client = VerifyClient(nc, prefix=nats_config.prefix)
    await client.check(cert, cert.request_id, cert.request_digest)  # current epoch
    for _ in range(6):  # the pool moves on and the epoch's history is trimmed
        await membership.register(nc, subjects, "v0", AgentIdentity.generate())
    fresh = VerifyClient(nc, prefix=nats_config.prefix)
    with pytest.raises(CertificateInvalid):
        await fresh.check(cert, cert.request_id, cert.request_digest)
    closed = await connect(nats_config, name="closed")
    await closed.close()
    with pytest.raises(TransportError):  # not CertificateInvalid: retry later
        await VerifyClient(closed, prefix=nats_config.prefix).check(
            cert, cert.request_id, cert.request_digest
        )
