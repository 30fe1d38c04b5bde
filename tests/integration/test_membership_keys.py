"""One key, one pool seat (real nats-server): the admin cannot admit a key under a
second id, the first holder of a key keeps its seat, and a quarantine applies to a
seat only while it holds the quarantined key."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from bus import membership
from bus.config import NatsConfig
from bus.subjects import Subjects
from schemas.errors import ConfigError
from schemas.identity import AgentIdentity
from schemas.pool import self_record

pytestmark = pytest.mark.integration


async def _others(nc: Client, subjects: Subjects, count: int = 3) -> None:
    """Seats besides the one under test, so the quarantine cap f is at least 1."""
    for i in range(count):
        await membership.register(nc, subjects, f"o{i}", AgentIdentity.generate())


async def test_a_key_holds_one_seat(nats_config: NatsConfig, nc: Client) -> None:
    subjects = Subjects(nats_config.prefix)
    me = AgentIdentity.generate()
    assert await membership.register(nc, subjects, "v2", me)
    with pytest.raises(ConfigError, match="already registered as v2"):
        await membership.admit(nc, subjects, "v9", me.public_key)
    assert not await membership.register(nc, subjects, "v2", me)  # itself again: a no-op
    # the key's holder registering a second id gets no second seat: the first keeps it
    assert await membership.register(nc, subjects, "v9", me)
    pool = await membership.read_pool(nc, subjects)
    assert [m.worker_id for m in pool.verifiers if m.public_key == me.public_key] == ["v2"]
    assert any("already holds seat 'v2'" in why for _, why in pool.rejected)


async def test_quarantine_applies_to_the_seat_holding_the_key(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    await _others(nc, subjects)
    me = AgentIdentity.generate()
    await membership.register(nc, subjects, "v2", me)
    assert (
        await membership.quarantine(nc, subjects, "v2", AgentIdentity.generate().public_key) is None
    )
    assert me.public_key in (await membership.read_pool(nc, subjects)).keys
    assert await membership.quarantine(nc, subjects, "v2", me.public_key) is not None
    pool = await membership.read_pool(nc, subjects)
    assert me.public_key not in pool.keys
    assert [m.status for m in pool.verifiers if m.worker_id == "v2"] == ["quarantined"]


async def test_a_quarantined_verifier_cannot_undo_it_by_rewriting_its_record(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    await _others(nc, subjects)
    me = AgentIdentity.generate()
    await membership.register(nc, subjects, "v3", me)
    assert await membership.quarantine(nc, subjects, "v3", me.public_key) is not None
    kv = await membership.members_bucket(nc, subjects)
    # what a Byzantine verifier may write: its own record (permissions allow only that)
    record = self_record(me, network=subjects.prefix, key="v3", at_ms=1)
    await kv.put("v3", record.encode())
    assert me.public_key not in (await membership.read_pool(nc, subjects)).keys
    assert not await membership.register(nc, subjects, "v3", me)  # refuses, logs
    assert await membership.remove(nc, subjects, "v3")  # the operator's decision
    assert await membership.register(nc, subjects, "v3", me)
    assert me.public_key in (await membership.read_pool(nc, subjects)).keys


async def test_admitted_seat_needs_no_private_key_and_beats_a_squatter(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    org = AgentIdentity.generate()  # the other organisation's verifier key
    squatter = AgentIdentity.generate()
    await membership.register(nc, subjects, "v9", squatter)
    assert await membership.admit(nc, subjects, "v9", org.public_key)
    pool = await membership.read_pool(nc, subjects)
    assert [(m.worker_id, m.public_key) for m in pool.verifiers] == [("v9", org.public_key)]
    # the organisation's verifier registering itself confirms the admitted seat
    await membership.remove(nc, subjects, "v9")
    assert await membership.admit(nc, subjects, "v9", org.public_key)
    await membership.register(nc, subjects, "v9", org)
    assert (await membership.read_pool(nc, subjects)).keys == {org.public_key}
