"""Hole 1: every request/reply worker was a confused deputy through reply subjects.

A request's reply subject is chosen by the requester. nats-server's
``allow_responses`` lets the receiving worker publish one answer to *any* reply
subject it was handed, and the tally's own grants cover the decisions bucket
anyway. So a client that publishes one malformed byte to ``{p}.verify.request``
with its reply set to ``$KV.<bucket>.<key>`` had the tally's ErrorReply
written into that bucket: a member record (eviction), a quarantine record
(lifted), a key record (corrupted, so ``keys revoke`` failed), a stored
certificate (overwritten). The micro-service handlers ($SRV.PING/INFO/STATS)
of every worker did the same for any role allowed to ping.

The defence (bus/replies.py): a worker answers only reply subjects inside the
``_INBOX.`` namespace; anything else is counted (REPLY_SUBJECT_REFUSED) and
not answered. Each test sends the attack, then proves the worker still serves
(a proper request on the same subscription, so it was handled after the
attack), and that the targeted KV entry did not move.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from bus import membership
from bus.client import VerifyClient
from bus.connection import connect
from bus.decisions import decision_key, scope_id
from bus.key_client import KeyClient
from bus.subjects import Subjects, service_name
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, ErrorReply, VerificationRequest, decode_reply
from tests.secure import SecureCluster

Attacker = Callable[[str], Awaitable[Client]]
#: How long an entry must stay put after the worker answered a later request
#: (on the old code the overwrite landed within milliseconds).
SETTLE_S = 2.0


async def entry(nc: Client, bucket: str, key: str) -> tuple[int, bytes] | None:
    kv = await nc.jetstream().key_value(bucket)
    try:
        got = await kv.get(key)
    except KeyNotFoundError:
        return None
    return got.revision or 0, got.value or b""


async def assert_unchanged(
    nc: Client, bucket: str, key: str, before: tuple[int, bytes] | None
) -> None:
    """Poll until the entry changes (fail) or SETTLE_S passes (pass)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        now = await entry(nc, bucket, key)
        assert now == before, f"{bucket}/{key} was overwritten: {before!r:.60} -> {now!r:.90}"
        await asyncio.sleep(0.05)


async def tally_still_answers(nc: Client, s: Subjects) -> None:
    """A proper request (reply in the requester's own inbox) gets its ErrorReply."""
    msg = await nc.request(s.request, b"\xc1", timeout=10)
    reply = decode_reply(msg.data, ConsensusResult)
    assert isinstance(reply, ErrorReply) and reply.code == "MALFORMED_PAYLOAD", reply


async def attack_tally(alice: Client, s: Subjects, target: str) -> None:
    await alice.publish(s.request, b"\xc1", reply=target)
    await alice.flush()
    await tally_still_answers(alice, s)


async def test_tally_reply_cannot_evict_a_member(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    s = Subjects(c.prefix)
    await c.start_system(4)
    admin = await connect(c.admin(), name="test-admin")
    try:
        before = await entry(admin, s.members_bucket, "v1")
        assert before is not None
        alice = await attacker("alice")
        await attack_tally(alice, s, f"$KV.{s.members_bucket}.v1")
        await assert_unchanged(admin, s.members_bucket, "v1", before)
        assert len((await membership.read_pool(admin, s)).keys) == 4
    finally:
        await admin.close()


async def test_tally_reply_cannot_lift_a_quarantine(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    s = Subjects(c.prefix)
    pool = await c.start_system(4)
    admin = await connect(c.admin(), name="test-admin")
    try:
        v4 = next(m for m in pool.members if m.worker_id == "v4")
        assert await membership.quarantine(admin, s, "v4", v4.public_key) is not None
        key = membership.quarantine_key("v4")
        before = await entry(admin, s.members_bucket, key)
        assert before is not None
        assert len((await membership.read_pool(admin, s)).keys) == 3
        alice = await attacker("alice")
        await attack_tally(alice, s, f"$KV.{s.members_bucket}.{key}")
        await assert_unchanged(admin, s.members_bucket, key, before)
        assert len((await membership.read_pool(admin, s)).keys) == 3
    finally:
        await admin.close()


async def test_tally_reply_cannot_corrupt_a_key_record(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    s = Subjects(c.prefix)
    c.start_tally("t1")
    c._spawn("keys-keys1", ["-m", "workers.cli", "worker", "keys", "--id", "keys1"])
    await c.wait_tally()
    admin = await connect(c.admin(), name="test-admin")
    try:
        keys = KeyClient(admin, c.prefix, timeout=30)
        await keys.create("agent-a", "agent_identity")
        before = await entry(admin, s.keys_bucket, "agent-a")
        assert before is not None
        alice = await attacker("alice")
        await attack_tally(alice, s, f"$KV.{s.keys_bucket}.agent-a")
        await assert_unchanged(admin, s.keys_bucket, "agent-a", before)
        revoked = await keys.revoke("agent-a", "stolen")
        assert all(v.revoked_at_ms for v in revoked.record.versions), revoked
    finally:
        await admin.close()


async def test_tally_reply_cannot_overwrite_a_certificate(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    s = Subjects(c.prefix)
    await c.start_system(4)
    assert c.secure is not None
    agent = AgentIdentity.generate()
    request = VerificationRequest(
        request_id="deputy-1",
        message=b"pay 1",
        signature=agent.sign(b"pay 1"),
        public_key=agent.public_key,
    )
    admin = await connect(c.admin(), name="test-admin")
    try:
        async with await VerifyClient.connect(c.secure.config("alice"), timeout=15) as client:
            cert = await client.verify_with_consensus(request)
            assert cert.decision == "VALID"
            key = decision_key(scope_id(request.public_key, request.request_id))
            before = await entry(admin, s.decisions_bucket, key)
            assert before is not None
            alice = await attacker("alice")
            await attack_tally(alice, s, f"$KV.{s.decisions_bucket}.{key}")
            await assert_unchanged(admin, s.decisions_bucket, key, before)
            again = await client.verify_with_consensus(request)
            assert again == cert
    finally:
        await admin.close()


async def test_srv_ping_reply_cannot_write_a_member_record(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    """The micro service's own PING handler (nats-py) answered any reply subject too:
    the recovery role pings with reply ``$KV.<members>.v1`` and every verifier's
    PING answer lands in v1's member record."""
    c = secure_cluster
    s = Subjects(c.prefix)
    for i in range(1, 5):
        c.start_verifier(f"v{i}")
    await c.wait_pool(4)
    admin = await connect(c.admin(), name="test-admin")
    try:
        before = await entry(admin, s.members_bucket, "v1")
        assert before is not None
        recovery = await attacker("recovery1")
        await recovery.publish("$SRV.PING", b"", reply=f"$KV.{s.members_bucket}.v1")
        await recovery.flush()
        # the verifiers still answer a proper ping (same subscription, so after the attack)
        pong = await recovery.request(f"$SRV.PING.{service_name('verifier')}", b"", timeout=10)
        assert b"verifier" in pong.data
        await assert_unchanged(admin, s.members_bucket, "v1", before)
        assert len((await membership.read_pool(admin, s)).keys) == 4
    finally:
        await admin.close()
