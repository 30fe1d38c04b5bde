"""Hole 6a: rogue ballots.

A ballot used to be judged from anyone whose bytes reached ``{prefix}.ballot``,
and the vote went to the message's reply subject. The key manager's user
(keys1) cannot publish on the ballot subject, but it can write keys of the
verdict-state bucket and create consumers on its stream; nats-server does not
check a push consumer's deliver subject against the creator's publish
permissions, so JetStream itself delivers keys1's bytes to ``{prefix}.ballot``
(with a ``$JS.ACK...`` reply subject). Every verifier judged that ballot and
signed a vote for it. Consumers are now refused to every role but admin, but the
same bytes still reach the ballot subject another way: a direct get whose reply
subject is the ballot subject makes the server publish them there.

Now a ballot is judged only if it is signed by the key that the record
``tally.<ballot.tally_id>`` of the current pool holds, and the vote goes to
``{prefix}.vote.<tally_id>`` only. The test watches (as admin) every subject a
vote could reach and waits until every verifier has counted the ballot as
refused (its metrics), so it cannot pass just because the ballot never
arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus import membership
from bus.connection import connect
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import MetricsSnapshot
from tests.factories import request
from tests.secure import SecureCluster, VoteTap, signed_ballot

VERIFIERS = ("v1", "v2", "v3", "v4")


def rogue_ballot(tally_id: str, epoch: int, ballot_id: str) -> bytes:
    """A ballot as the attacker writes it: every field, a signature by its own key
    over other bytes."""
    me = AgentIdentity.generate()
    tampered = request(me, b"pay 1", f"r-{ballot_id}", tamper=True)
    return signed_ballot(
        me, "-", ballot_id=ballot_id, epoch=epoch, requests=[tampered], tally_id=tally_id,
        sig=me.sign(b"whatever"),
    )  # fmt: skip


def _count_refusals(refused: dict[str, int]) -> Callable[[Msg], Awaitable[None]]:
    """A metrics callback keeping each verifier's count of refused ballots."""

    async def on_metrics(msg: Msg) -> None:
        snap = MetricsSnapshot.decode(msg.data)
        refused[snap.worker_id] = sum(
            v for k, v in snap.counters.items() if k.startswith("ballot_refused_")
        )

    return on_metrics


async def test_ballot_delivered_by_a_keys_role_consumer_gets_no_vote(
    secure_cluster: SecureCluster, attacker: Any
) -> None:
    c = secure_cluster
    assert c.secure is not None
    await c.start_system(len(VERIFIERS))
    subjects = Subjects(c.prefix)
    admin = await connect(c.admin(), name="test-admin")
    refused: dict[str, int] = {}
    try:
        # where a vote sent to the delivered message's reply subject lands
        tap = await VoteTap.open(admin, subjects.votes_all, f"$JS.ACK.KV_{subjects.state_bucket}.>")
        await admin.subscribe(subjects.metrics("verifier", "*"), cb=_count_refusals(refused))
        await admin.flush()
        pool = await membership.read_pool(admin, subjects)

        keys1 = await attacker("keys1")
        ballot_id = uuid.uuid4().hex
        key = f"key.{'ab' * 32}"
        ack = await keys1.request(
            f"$KV.{subjects.state_bucket}.{key}", rogue_ballot("t1", pool.epoch, ballot_id), 5
        )
        assert b"error" not in ack.data, ack.data
        js = keys1.jetstream()
        # route 1, the one that worked on the old code: a push consumer delivering the
        # stored bytes to the ballot subject (now refused: no role creates consumers)
        with contextlib.suppress(Exception):
            await js.add_consumer(
                f"KV_{subjects.state_bucket}",
                ConsumerConfig(
                    deliver_subject=subjects.ballot,
                    filter_subject=f"$KV.{subjects.state_bucket}.{key}",
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    ack_policy=AckPolicy.NONE,
                ),
                timeout=2.0,
            )
        # route 2, still open (docs/security.md "JetStream API replies"): a direct get
        # of the stored bytes with the ballot subject as its reply, so the server itself
        # publishes them there. Only the ballot signature stops this one.
        await keys1.publish(
            f"$JS.API.DIRECT.GET.KV_{subjects.state_bucket}",
            json.dumps({"last_by_subj": f"$KV.{subjects.state_bucket}.{key}"}).encode(),
            reply=subjects.ballot,
        )
        await keys1.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rogue = tap.on(ballot_id)
            assert not rogue, (
                f"{len(rogue)} verifier(s) voted on a ballot keys1 injected through a "
                f"consumer's deliver subject (first to {rogue[0][0]})"
            )
            if all(refused.get(v, 0) >= 1 for v in VERIFIERS):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"not every verifier counted the rogue ballot refused: {refused}")
        # a vote published after the counters moved would still be a vote
        await admin.flush()
        assert not tap.on(ballot_id)
    finally:
        await admin.close()


async def test_admitted_tally_cannot_route_votes_to_another_tally(
    secure_cluster: SecureCluster, attacker: Any
) -> None:
    """A Byzantine tally t2 — admitted, its own record tally.t2 — publishes a ballot
    signed by its key that names tally t1 (with t1's vote subject as reply): votes on
    it would land in t1's rounds. Verifiers refuse it: tally.t1 holds another key."""
    c = secure_cluster
    await c.start_system(len(VERIFIERS))
    subjects = Subjects(c.prefix)
    admin = await connect(c.admin(), name="test-admin")
    refused: dict[str, int] = {}
    try:
        tap = await VoteTap.open(admin, subjects.votes_all)
        await admin.subscribe(subjects.metrics("verifier", "*"), cb=_count_refusals(refused))
        await admin.flush()
        t2 = await attacker("t2")
        me = AgentIdentity.generate()
        await membership.register_tally(t2, subjects, "t2", me)
        pool = await membership.read_pool(admin, subjects)
        assert me.public_key in pool.tally_keys
        ballot_id = uuid.uuid4().hex
        raw = request(me, b"pay 1", f"r-{ballot_id}")
        wire = signed_ballot(
            me, c.prefix, ballot_id=ballot_id, epoch=pool.epoch, requests=[raw], tally_id="t1"
        )
        await t2.publish(subjects.ballot, wire, reply=subjects.votes("t1"))
        await t2.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rogue = tap.on(ballot_id)
            assert not rogue, f"{len(rogue)} verifier(s) voted on t2's ballot naming t1"
            if all(refused.get(v, 0) >= 1 for v in VERIFIERS):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"not every verifier counted t2's ballot refused: {refused}")
        await admin.flush()
        assert not tap.on(ballot_id)
    finally:
        await admin.close()
