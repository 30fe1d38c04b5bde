"""One key, one pool seat (real nats-server): a key cannot be registered under a second
id, and a key quarantined under any id is out of the pool."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from bus import membership
from bus.config import NatsConfig
from bus.subjects import Subjects
from schemas.errors import ConfigError
from schemas.identity import AgentIdentity

pytestmark = pytest.mark.integration


async def test_a_key_holds_one_seat(nats_config: NatsConfig, nc: Client) -> None:
    subjects = Subjects(nats_config.prefix)
    key = AgentIdentity.generate().public_key
    assert await membership.register(nc, subjects, "v2", key)
    with pytest.raises(ConfigError, match="already registered as v2"):
        await membership.register(nc, subjects, "v9", key)
    assert not await membership.register(nc, subjects, "v2", key)  # itself again: a no-op


async def test_quarantine_applies_to_the_key_not_the_id(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    key = AgentIdentity.generate().public_key
    kv = await membership.members_bucket(nc, subjects)
    # two records with one key, written behind register's back (an old admit, a raw put)
    for wid in ("v2", "v9"):
        await kv.put(wid, membership.MemberRecord(wid, key).encode())
    assert key in (await membership.read_pool(nc, subjects)).keys
    assert await membership.quarantine(nc, subjects, "v2", key) is not None
    pool = await membership.read_pool(nc, subjects)
    assert key not in pool.keys
    assert {m.worker_id for m in pool.members if m.public_key == key} == {"v2", "v9"}


async def test_a_quarantined_verifier_cannot_undo_it_by_rewriting_its_record(
    nats_config: NatsConfig, nc: Client
) -> None:
    subjects = Subjects(nats_config.prefix)
    key = AgentIdentity.generate().public_key
    await membership.register(nc, subjects, "v3", key)
    assert await membership.quarantine(nc, subjects, "v3", key) is not None
    kv = await membership.members_bucket(nc, subjects)
    # what a Byzantine verifier may write: its own record (permissions allow only that)
    await kv.put("v3", membership.MemberRecord("v3", key).encode())
    assert key not in (await membership.read_pool(nc, subjects)).keys
    assert await membership.remove(nc, subjects, "v3")  # the operator's decision
    assert await membership.register(nc, subjects, "v3", key)
    assert key in (await membership.read_pool(nc, subjects)).keys
