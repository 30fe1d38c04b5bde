"""Hole 8: a vote's state revision always comes with that revision's records.

A vote says "judged at verdict-state revision R"; the tally and the client trust
that every record up to R was applied. The verifier's state mirror
(``BucketMirror``, bus/state.py) used to re-read the bucket after its watch fell
behind (more than 1 s behind the bucket's last revision) and, while replaying,
moved ``revision`` forward entry by entry but swapped the replayed records in
only at the end: a ballot judged meanwhile was signed at a revision past a
revocation over the state from before it.

The attack, with real processes: the key manager's user ``keys1`` floods the
state bucket with records (it may write ``key.>``), so that v1's mirror falls
behind and has a long read to do; within the flood the key manager (keys1, real
process) revokes 8 keys, one every FLOOD_EACH records; a Byzantine tally (user t1, its
own admitted key) sends v1 a ballot for payments signed by those keys every 10 ms
meanwhile. No vote may call a payment VALID at a state revision at or past its
key's revocation. Now the mirror applies a read to a copy and publishes the copy with
the revision reached in one step, so a reader never sees a revision ahead of its
items.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus.connection import connect
from bus.subjects import Subjects
from tests.secure import (
    SecureCluster,
    VoteTap,
    admitted_tally,
    managed_key,
    payment,
    signed_ballot,
    start_keys,
    until,
)

Attacker = Callable[[str], Awaitable[Client]]
#: Keys revoked one after another inside the flood, FLOOD_EACH records apart: where
#: an old mirror gave up following depends on the machine's speed, so one of the
#: revocations lands after that point and before the end of a re-read.
KEYS = 8
FLOOD_EACH = 2_000
#: Records written after the last revocation (the re-read goes on past it).
FLOOD_AFTER = 8_000


async def _flood(keys1: Client, subjects: Subjects, tag: str, count: int) -> None:
    for i in range(count):
        await keys1.publish(f"$KV.{subjects.state_bucket}.key.{tag}{i:060x}", b"x")
        if i % 1000 == 999:
            await keys1.flush()
    await keys1.flush()


@pytest.mark.timeout(240)
async def test_no_vote_is_signed_at_a_revision_without_its_revocation(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    subjects = Subjects(c.prefix)
    c.start_verifier("v1")
    await c.wait_pool(1)
    start_keys(c)
    admin = await connect(c.admin(), name="test-operator")
    sender: asyncio.Task[None] | None = None
    try:
        managed = [
            await managed_key(admin, c.prefix, f"agent-8-{k}", b"pay 8") for k in range(KEYS)
        ]
        paid = [payment(signed, b"pay 8", f"r-8-{k}") for k, (_, signed) in enumerate(managed)]
        t1, me, epoch = await admitted_tally(await attacker("t1"), admin, subjects, "t1")
        tap = await VoteTap.open(t1, subjects.votes("t1"))

        async def ballots() -> None:
            while True:
                raw = signed_ballot(
                    me, c.prefix, ballot_id=uuid.uuid4().hex, epoch=epoch, requests=paid
                )
                await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(ballots())
        await until(lambda: bool(tap.votes), "v1 voting", c, 30.0)
        assert all(e[2] for _, v, _ in tap.votes for e in v["entries"]), "VALID before revoking"

        keys1 = await attacker("keys1")
        state = await admin.jetstream().key_value(subjects.state_bucket)
        revoked_at: dict[str, int] = {}  # request id -> its key's revocation revision
        for k, (keys, signed) in enumerate(managed):
            await _flood(keys1, subjects, f"{k:x}", FLOOD_EACH)
            await keys.revoke(f"agent-8-{k}", "key material leaked")
            entry = await state.get(f"key.{signed.public_key.hex()}")
            revoked_at[f"r-8-{k}"] = entry.revision
        await _flood(keys1, subjects, "f", FLOOD_AFTER)
        last = (await state.status()).stream_info.state.last_seq

        def stale() -> list[tuple[int, str]]:
            """(revision, request) where v1 said VALID at or past the key's revocation."""
            return sorted(
                {
                    (int(v["state_rev"]), str(e[0]))
                    for _, v, _ in tap.votes
                    for e in v["entries"]
                    if e[2] and int(v.get("state_rev", 0)) >= revoked_at[str(e[0])]
                }
            )

        def caught_up_or_stale() -> bool:
            return bool(stale()) or any(v.get("state_rev", 0) >= last for _, v, _ in tap.votes)

        await until(caught_up_or_stale, f"v1 voting at revision {last}", c, 120.0)
        found = stale()
        assert not found, (
            f"v1 signed VALID for a revoked key at a state revision at or past its "
            f"revocation's: {found[:3]} ({len(found)} in all; revoked at {revoked_at})"
        )
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await admin.close()
