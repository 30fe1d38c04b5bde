"""The decisions bucket against a real JetStream: create-only writes, batched lookups."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from bus.config import NatsConfig
from bus.decisions import MAX_BATCH, DecisionStore, decision_key
from bus.subjects import Subjects

pytestmark = pytest.mark.integration


async def _stored(store: DecisionStore, ids: list[str]) -> None:
    for rid in ids:
        await store.store(rid, f"cert-{rid}".encode())
    for _ in range(100):
        if len(await store.get_many(ids)) == len(ids):
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("direct", [True, False])
async def test_batched_lookup_and_create_only(
    nats_config: NatsConfig, nc: Client, direct: bool
) -> None:
    subjects = Subjects(nats_config.prefix)
    if not direct:  # an older bucket without direct gets: one get per key
        await nc.jetstream().create_key_value(bucket=subjects.decisions_bucket, history=1)
    errors: list[bool] = []
    store = DecisionStore(nc, subjects, lambda rid, exc, already: errors.append(already))
    await store.start()
    ids = [f"req {i}/é" for i in range(MAX_BATCH + 44)]  # more than one batch, odd characters
    await _stored(store, ids)
    found = await store.get_many([*ids, "never-decided"])
    assert found == {rid: f"cert-{rid}".encode() for rid in ids}
    assert errors == []
    # a second write for the same id is refused: the first certificate stays
    await store.store(ids[0], b"other")
    for _ in range(100):
        if errors:
            break
        await asyncio.sleep(0.02)
    assert errors == [True]
    assert (await store.get_many([ids[0]]))[ids[0]] == f"cert-{ids[0]}".encode()
    assert await store.get_many(["nothing", "here"]) == {}
    await store.stop()


def test_keys_are_safe_and_stable() -> None:
    assert decision_key("a b*>.") == decision_key("a b*>.")
    assert all(c in "0123456789abcdef" for c in decision_key("a b*>."))
    assert decision_key("x") != decision_key("y")
