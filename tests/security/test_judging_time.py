"""Holes 5b and 5c: a verifier judges each ballot once, at the ballot's own time.

The adversary is a Byzantine tally: user ``t1`` with its own admitted key (the
record ``tally.t1``), so it may publish signed ballots and read its own vote
subject ``{prefix}.vote.t1``. The verifier is a real process (user v1) whose
verdict state a real key manager (user keys1) writes.

5b: the tally collects v1's VALID vote on a ballot, the request's key is then
revoked, and the tally makes v1 forget that vote (before the fix the vote cache
kept the 10,000 newest votes, so 10,000 further ballots pushed it out) and sends
the *same* ballot again, then a variant under the same ballot id. A second,
different vote on one ballot id (VALID, then INVALID) is what frames a verifier
as an equivocator. Now v1 repeats the very same vote bytes, and refuses the variant
(BALLOT_ID_REUSED): it remembers every vote until the ballot can no longer be
judged (``VoteMemory``, workers/consensus/ballot.py).

5c: the tally sends ballots whose ``issued_ms`` lies 10 s in the past or the future
(within the deadline). Before the fix v1 ignored such an ``issued_ms`` and judged at
its own clock — every honest verifier at a different time, so they split near an
expiry. Now it refuses them (BALLOT_ISSUED_SKEW) and publishes no vote.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client

from bus.connection import connect
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from tests.secure import (
    SecureCluster,
    VoteTap,
    admitted_tally,
    managed_key,
    payment,
    signed_ballot,
    start_keys,
    until,
    worker_counters,
)

Attacker = Callable[[str], Awaitable[Client]]
#: More ballots than the old vote cache held (MAX_REMEMBERED_VOTES was 10,000).
FLOOD = 10_050
#: Ballots published before waiting for their votes (keeps v1's intake from overflowing).
BATCH = 250


def _valid(vote: dict[str, Any]) -> list[tuple[bool, str]]:
    """(valid, reason) per entry of a vote (entries are [request_id, digest, valid, reason])."""
    return [(bool(e[2]), str(e[3])) for e in vote.get("entries", [])]


def _assert_one_vote(tap: VoteTap, ballot_id: str, first: bytes) -> None:
    votes = tap.on(ballot_id)
    different = [v for _, v, data in votes if data != first]
    assert not different, (
        f"v1 published a second, different vote for ballot {ballot_id}: "
        f"{_valid(votes[0][1])} then {[_valid(v) for v in different]}"
    )


@pytest.mark.timeout(240)
async def test_a_forgotten_ballot_is_never_judged_again(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    subjects = Subjects(c.prefix)
    c.start_verifier("v1")
    await c.wait_pool(1)
    start_keys(c)
    admin = await connect(c.admin(), name="test-operator")
    try:
        keys, signed = await managed_key(admin, c.prefix, "agent-5b", b"pay 5")
        paid = payment(signed, b"pay 5", "r-5b")
        t1, me, epoch = await admitted_tally(await attacker("t1"), admin, subjects, "t1")
        tap = await VoteTap.open(t1, subjects.votes("t1"))
        net = c.prefix
        ballot_id = uuid.uuid4().hex
        deadline = time.time_ns() // 1_000_000 + 60_000  # open for the whole attack
        ballot = signed_ballot(
            me, net, ballot_id=ballot_id, epoch=epoch, requests=[paid], deadline_ms=deadline
        )

        async def voted_on(bid: str, raw: bytes) -> bool:
            await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
            await t1.flush()
            await until(lambda: bool(tap.on(bid)), f"a vote on {bid}", c, 2.0)
            return True

        await until(lambda: voted_on(ballot_id, ballot), "v1's first vote", c, 30.0)
        first = tap.on(ballot_id)[0][2]
        assert _valid(tap.on(ballot_id)[0][1])[0][0], tap.on(ballot_id)[0][1]  # VALID

        # the verdict's input changes: the key is revoked (v1 sees it: a fresh ballot says so)
        await keys.revoke("agent-5b", "key material leaked")

        async def revoked_seen() -> bool:
            probe = uuid.uuid4().hex
            raw = signed_ballot(me, net, ballot_id=probe, epoch=epoch, requests=[paid])
            await voted_on(probe, raw)
            return not _valid(tap.on(probe)[0][1])[0][0]

        await until(revoked_seen, "v1 to judge the revoked key INVALID", c, 30.0)

        # make v1 forget: more ballots (cheap ones, a malformed request each) than the
        # old cache held, published in batches and each answered
        flood_ids = [f"flood-{i}" for i in range(FLOOD)]
        for start in range(0, FLOOD, BATCH):
            batch = flood_ids[start : start + BATCH]
            for bid in batch:
                raw = signed_ballot(
                    me, net, ballot_id=bid, epoch=epoch, requests=[b"\xc1"], deadline_ms=deadline
                )
                await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
            await t1.flush()
            await until(
                lambda batch=batch: all(tap.on(b) for b in batch[-5:]),
                f"votes on flood batch {start}",
                c,
                30.0,
            )

        # the same ballot again, then variants under the same id (fresh issued_ms,
        # the request once more under another request id)
        before = len(tap.on(ballot_id))
        await t1.publish(subjects.ballot, ballot, reply=subjects.votes("t1"))
        await t1.flush()
        await until(lambda: len(tap.on(ballot_id)) > before, "v1's answer to the replay", c, 30.0)
        _assert_one_vote(tap, ballot_id, first)
        other = payment(signed, b"pay 5", "r-5b-2")
        variants = [
            signed_ballot(me, net, ballot_id=ballot_id, epoch=epoch, requests=[paid]),
            signed_ballot(me, net, ballot_id=ballot_id, epoch=epoch, requests=[paid, other]),
        ]
        reused = 0
        for i, raw in enumerate(variants):
            before = len(tap.on(ballot_id))
            await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
            await t1.flush()

            async def answered_or_refused(before: int = before, want: int = i + 1) -> bool:
                counters = await worker_counters(admin, c.prefix, "verifier", "v1")
                refused = counters.get("ballot_refused_BALLOT_ID_REUSED", 0)
                return len(tap.on(ballot_id)) > before or refused >= want

            await until(answered_or_refused, f"v1's answer to variant {i}", c, 30.0)
            reused = (await worker_counters(admin, c.prefix, "verifier", "v1")).get(
                "ballot_refused_BALLOT_ID_REUSED", 0
            )
        await admin.flush()
        await t1.flush()
        _assert_one_vote(tap, ballot_id, first)
        assert reused >= len(variants), f"variants not refused as BALLOT_ID_REUSED: {reused}"
    finally:
        await admin.close()


@pytest.mark.parametrize("skew_ms", [-10_000, 10_000], ids=["10s-past", "10s-future"])
async def test_a_ballot_issued_outside_the_skew_window_gets_no_vote(
    secure_cluster: SecureCluster, attacker: Attacker, skew_ms: int
) -> None:
    c = secure_cluster
    subjects = Subjects(c.prefix)
    c.start_verifier("v1")
    await c.wait_pool(1)
    admin = await connect(c.admin(), name="test-operator")
    try:
        t1, me, epoch = await admitted_tally(await attacker("t1"), admin, subjects, "t1")
        tap = await VoteTap.open(t1, subjects.votes("t1"))
        agent = AgentIdentity.generate()
        paid = VerificationRequest(
            request_id="r-5c", message=b"pay 5", signature=agent.sign(b"pay 5"),
            public_key=agent.public_key,
        ).encode()  # fmt: skip
        # v1 is up and votes on a ballot issued now (so silence below is a refusal)
        probe = uuid.uuid4().hex

        async def probe_voted() -> bool:
            raw = signed_ballot(me, c.prefix, ballot_id=probe, epoch=epoch, requests=[paid])
            await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
            await t1.flush()
            await until(lambda: bool(tap.on(probe)), "a vote", c, 2.0)
            return True

        await until(probe_voted, "v1 voting on a ballot issued now", c, 30.0)
        now = time.time_ns() // 1_000_000
        ballot_id = uuid.uuid4().hex
        raw = signed_ballot(
            me, c.prefix, ballot_id=ballot_id, epoch=epoch, requests=[paid],
            issued_ms=now + skew_ms, deadline_ms=now + 25_000,
        )  # fmt: skip
        await t1.publish(subjects.ballot, raw, reply=subjects.votes("t1"))
        await t1.flush()

        async def voted_or_refused() -> bool:
            counters = await worker_counters(admin, c.prefix, "verifier", "v1")
            return (
                bool(tap.on(ballot_id)) or counters.get("ballot_refused_BALLOT_ISSUED_SKEW", 0) >= 1
            )

        await until(voted_or_refused, "v1 to vote on or refuse the skewed ballot", c, 30.0)
        await t1.flush()
        voted = tap.on(ballot_id)
        assert not voted, (
            f"v1 voted on a ballot issued {skew_ms / 1000:+.0f} s from its clock, judged "
            f"at its own clock: {_valid(voted[0][1])}"
        )
    finally:
        await admin.close()
