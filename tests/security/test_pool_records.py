"""Hole 2: one verifier could shrink the pool by what it wrote in its own record.

A verifier may write its own member record ``$KV.{prefix}_members.<its id>``
(bus/permissions.py). The pool used to honour whatever that record said: v1 wrote
v2's public key with status ``quarantined`` and the pool lost v2 (and v1); naming
``worker_id: v2`` inside v1's record sent the anomaly worker's quarantine to v2's
record, so the Byzantine v1 stayed in the pool. Records are now claims by their
writer (schemas/pool.py): a self-registered record must name its KV key and be
signed by the key it names, one seat per key, quarantine only via
``quarantined.<id>``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.connection import connect
from bus.kv import subject_keys
from bus.subjects import Subjects
from schemas.codec import encode
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult
from schemas.pool import self_record
from tests.secure import SecureCluster, start_anomaly, until

HONEST = ("v2", "v3", "v4", "v5")


def old_style_record(worker_id: str, public_key: bytes, status: str) -> bytes:
    """The record as v1 may write it: any fields it likes (no proof of possession)."""
    return encode(
        {
            "type": "member",
            "v": 1,
            "worker_id": worker_id,
            "public_key": public_key,
            "status": status,
            "registered_at_ms": time.time_ns() // 1_000_000,
        }
    )


async def decides(cluster: SecureCluster, tag: str) -> None:
    """A good and a bad request both get a checked certificate (the pool keeps deciding)."""
    agent = AgentIdentity.generate()
    good = signed_request(agent, f"pay 1 EUR ({tag})", f"{tag}-good")
    assert cluster.secure is not None
    async with await VerifyClient.connect(
        cluster.secure.config("alice"), timeout=15.0, retries=1
    ) as client:
        result = await client.verify_with_consensus(good)
    assert isinstance(result, ConsensusResult)
    assert result.decision == "VALID", result


async def test_v1_cannot_quarantine_v2_by_writing_v2s_key_into_its_own_record(
    secure_cluster: SecureCluster, attacker: Callable[[str], Awaitable[Client]]
) -> None:
    for name in HONEST:
        secure_cluster.start_verifier(name)
    await secure_cluster.wait_pool(4)
    secure_cluster.start_tally("t1")
    await secure_cluster.wait_tally()
    before = await secure_cluster.wait_pool(4)
    v2_key = next(m.public_key for m in before.members if m.worker_id == "v2")

    v1 = await attacker("v1")
    bucket = Subjects(secure_cluster.prefix).members_bucket
    await v1.publish(f"$KV.{bucket}.v1", old_style_record("v1", v2_key, "quarantined"))
    await v1.flush()

    admin = await connect(secure_cluster.admin(), name="test-admin")
    try:
        after = await membership.read_pool(admin, Subjects(secure_cluster.prefix))
        assert after.epoch > before.epoch  # the write landed
        assert after.keys == before.keys, "v1's claim about v2's key changed the pool"
    finally:
        await admin.close()
    await decides(secure_cluster, "after-v1-record")


@pytest.mark.parametrize("form", ["unsigned", "signed"])
async def test_record_naming_another_seat_neither_counts_nor_diverts_quarantine(
    secure_cluster: SecureCluster, attacker: Callable[[str], Awaitable[Client]], form: str
) -> None:
    """A Byzantine v1 (holding its own key) rewrites its record to name worker_id v2,
    then equivocates: the pool must not keep counting v1's key under v2's name, and no
    quarantine may land on v2. ``signed``: the same claim as a current-format record
    with a valid proof of possession by v1's key (only the KV key it names is wrong)."""
    for name in HONEST:
        secure_cluster.start_verifier(name)
    secure_cluster.start_byzantine("v1", "equivocate")
    await secure_cluster.wait_pool(5)
    start_anomaly(secure_cluster, "anomaly1")
    secure_cluster.start_tally("t1")
    await secure_cluster.wait_tally()
    before = await secure_cluster.wait_pool(5)
    v1_identity = AgentIdentity.load(secure_cluster.data_dir / "keys" / "byzantine-v1.key")
    v1_key = v1_identity.public_key
    honest = before.keys - {v1_key}
    assert len(honest) == 4

    v1 = await attacker("v1")
    bucket = Subjects(secure_cluster.prefix).members_bucket
    forged = (
        old_style_record("v2", v1_key, "active")
        if form == "unsigned"
        else self_record(v1_identity, network=secure_cluster.prefix, key="v2").encode()
    )
    await v1.publish(f"$KV.{bucket}.v1", forged)
    await v1.flush()

    subjects = Subjects(secure_cluster.prefix)
    admin = await connect(secure_cluster.admin(), name="test-admin")
    try:

        async def v1_out() -> bool:
            await decides(secure_cluster, f"probe-{time.monotonic_ns()}")
            return v1_key not in (await membership.read_pool(admin, subjects)).keys

        await until(v1_out, "the Byzantine v1's key to leave the pool", secure_cluster, 40.0)
        pool = await membership.read_pool(admin, subjects)
        assert pool.keys == honest
        kv = await admin.jetstream().key_value(bucket)
        assert "quarantined.v2" not in await subject_keys(kv), "the quarantine went to v2"
    finally:
        await admin.close()
    await decides(secure_cluster, "after")
