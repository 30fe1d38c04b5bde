"""Hole 6c: erasing or undoing a revocation in the verdict state.

A revoked key's status lives at ``$KV.{prefix}_state.key.<hex>``. Three ways to
overwrite it, each by a role the threat model does not trust with that power:

* ``keys1`` (the key manager's user, which may write ``key.>``) publishes a
  KV delete marker over it — "one compromised service worker must never revive
  a revoked key";
* ``v2`` (a Byzantine verifier) has JetStream copy the key's *older*, active
  status over it: a direct get whose reply subject is the status subject (the
  server does not check reply subjects; the copy is stored like any put);
* ``alice`` (a client, who may only read the pool) has JetStream copy a delete
  marker from the members bucket over it, the same way.

Before the fix a missing status read as "not managed, so allowed" and the
newest record simply won: the verifiers answered VALID again. Now the
verifier's mirror keeps a revocation once seen (tombstones read as revoked,
replays and un-revocations are kept out: workers/consensus/verdict_state.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus.client import VerifyClient
from bus.connection import connect
from bus.subjects import Subjects
from bus.tail import read_until_caught_up
from schemas.messages import ConsensusResult, VerificationRequest
from tests.secure import SecureCluster, managed_key, start_keys

Attacker = Callable[[str], Awaitable[Client]]
#: How long the verifiers are asked after the attack (many mirror polls, POLL_S 0.25 s)
WATCH_S = 2.5


async def _erase_with_delete_marker(attacker: Attacker, subjects: Subjects, subject: str) -> None:
    keys1 = await attacker("keys1")
    await keys1.jetstream().publish(subject, b"", headers={"KV-Operation": "DEL"})


async def _replay_the_active_status(attacker: Attacker, subjects: Subjects, subject: str) -> None:
    v2 = await attacker("v2")
    stream = f"KV_{subjects.state_bucket}"
    history = [m for m in await read_until_caught_up(v2, stream, seq=1) if m.subject == subject]
    active = history[0].seq  # the status written at creation, before the revocation
    await v2.publish(
        f"$JS.API.DIRECT.GET.{stream}",
        json.dumps({"seq": active, "no_hdr": True}).encode(),
        reply=subject,
    )
    await v2.flush()


async def _copy_a_members_delete_marker(
    attacker: Attacker, subjects: Subjects, subject: str
) -> None:
    admin = await attacker("admin")
    members = await admin.jetstream().key_value(subjects.members_bucket)
    await members.put("gone", b"x")
    await members.delete("gone")  # e.g. a lifted quarantine leaves such a marker
    alice = await attacker("alice")
    await alice.publish(
        f"$JS.API.DIRECT.GET.KV_{subjects.members_bucket}",
        json.dumps({"last_by_subj": f"$KV.{subjects.members_bucket}.gone"}).encode(),
        reply=subject,
    )
    await alice.flush()


ATTACKS = {
    "keys1-deletes-the-status": _erase_with_delete_marker,
    "verifier-replays-the-active-status": _replay_the_active_status,
    "client-copies-a-delete-marker": _copy_a_members_delete_marker,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_a_revocation_cannot_be_erased_or_replayed_away(
    secure_cluster: SecureCluster, attacker: Attacker, attack: str
) -> None:
    c = secure_cluster
    assert c.secure is not None
    subjects = Subjects(c.prefix)
    await c.start_system(4)
    start_keys(c)
    admin = await connect(c.admin(), name="test-operator")
    try:
        keys, signed = await managed_key(admin, c.prefix, "agent-r", b"pay 5")
        subject = f"$KV.{subjects.state_bucket}.key.{signed.public_key.hex()}"

        async with await VerifyClient.connect(c.secure.config("bob"), timeout=15) as client:
            asked = 0

            async def ask() -> ConsensusResult:
                nonlocal asked
                asked += 1
                return await client.verify_with_consensus(
                    VerificationRequest(
                        request_id=f"r-{asked}",
                        message=b"pay 5",
                        signature=signed.signature,
                        public_key=signed.public_key,
                    )
                )

            assert (await ask()).decision == "VALID"
            await keys.revoke("agent-r", "key material leaked")
            loop = asyncio.get_running_loop()
            end = loop.time() + 15.0  # generous: a loaded CI machine
            while (result := await ask()).decision != "INVALID":
                assert loop.time() < end, result.summary()
            await ATTACKS[attack](attacker, subjects, subject)
            end = loop.time() + WATCH_S
            while loop.time() < end:
                result = await ask()
                assert result.decision == "INVALID", f"revocation undone: {result.summary()}"
                assert {v.reason for v in result.votes} == {"KEY_REVOKED"}, result.votes
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
