"""Hole 5a: framing an honest verifier through weak equivocation evidence.

The adversary has the tally role (user t2, an admitted tally): it may publish
ballots and evidence on ``{prefix}.evidence.equivocation``. It publishes two signed
ballots that share one ballot id but carry different requests. A verifier remembers
what it voted on, so it refuses the second (BALLOT_ID_REUSED) — but not across a
restart, which an honest verifier may do at any time: the adversary waits for v2 to
restart between the two. v2 then answers each (two honest answers to two
questions), and the adversary publishes v2's two real, validly signed votes as
equivocation evidence.

Before the fix the anomaly worker compared only key, ballot id and epoch, so it
alerted on v2 and quarantined it. Now it admits evidence by the tally's own vote
admission rules (schemas/votes.equivocation_refusal): the two votes answer different
questions, so they prove nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.client import signed_request
from bus.subjects import Subjects
from schemas.codec import encode
from schemas.identity import AgentIdentity
from schemas.messages import Ballot, Vote
from schemas.signing import sign_ballot
from tests.secure import SecureCluster, start_anomaly, until, worker_answers, worker_counters
from workers.anomaly.cli import read_alerts

pytestmark = pytest.mark.slow

Attacker = Callable[[str], Awaitable[Client]]


async def anomaly_counters(nc: Client, prefix: str) -> dict[str, int]:
    return await worker_counters(nc, prefix, "anomaly", "anomaly1")


async def publish_ballot(
    nc: Client, subjects: Subjects, ballot: Ballot, tally: AgentIdentity
) -> None:
    """The adversary's ballot, signed with its admitted tally key (votes come back on
    its own vote subject, ``{prefix}.vote.t2``)."""
    signed = sign_ballot(tally, ballot, network=subjects.prefix)
    await nc.publish(subjects.ballot, signed.encode())


async def test_two_honest_answers_to_two_questions_do_not_frame_a_verifier(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    for i in range(1, 5):
        secure_cluster.start_verifier(f"v{i}")
    pool = await secure_cluster.wait_pool(4)
    start_anomaly(secure_cluster, "anomaly1")
    admin = await attacker("admin")
    subjects = Subjects(secure_cluster.prefix)
    await until(
        lambda: worker_answers(admin, secure_cluster.prefix, "anomaly", "anomaly1"),
        "the anomaly worker",
        timeout=60,
    )
    v2_key = next(m.public_key for m in pool.members if m.worker_id == "v2")

    t2 = await attacker("t2")
    me = AgentIdentity.generate()
    await membership.register_tally(t2, subjects, "t2", me)  # an admitted tally
    pool = await membership.read_pool(admin, subjects)
    votes: asyncio.Queue[Vote] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        vote = Vote.decode(msg.data)
        if vote.verifier_key == v2_key:
            await votes.put(vote)

    await t2.subscribe(subjects.votes("t2"), cb=collect)
    await t2.flush()
    agent = AgentIdentity.generate()
    ballot_id = uuid.uuid4().hex
    got: list[Vote] = []
    for rid in ("frame-a", "frame-b"):
        if got:  # v2 restarts (its vote memory is gone; its key and seat stay)
            secure_cluster.kill("verifier-v2")
            secure_cluster.processes["verifier-v2"].wait(10)
            secure_cluster.start_verifier("v2")

        async def answered(rid: str = rid) -> bool:
            # re-sent until v2 answers: a restarted verifier takes a moment to subscribe
            # (a copy it already answered gets the same vote; another copy under the id
            # is refused). Built afresh each time: a ballot issued more than 2 s before
            # v2 is back would be refused as BALLOT_ISSUED_SKEW.
            now = int(time.time() * 1000)
            ballot = Ballot(
                ballot_id=ballot_id,
                epoch=pool.epoch,
                tally_id="t2",
                deadline_ms=now + 10_000,
                requests=(signed_request(agent, f"pay {rid}", rid).encode(),),
                issued_ms=now,
            )
            await publish_ballot(t2, subjects, ballot, me)
            try:
                got.append(await asyncio.wait_for(votes.get(), 1.0))
            except TimeoutError:
                return False
            return True

        await until(answered, f"v2's vote on {rid}", timeout=60)
        while not votes.empty():
            votes.get_nowait()  # copies of the same answer
    first, second = got
    assert first.ballot_id == second.ballot_id and first.entries != second.entries

    async def judged() -> bool:
        c = await anomaly_counters(admin, secure_cluster.prefix)
        return c.get("evidence_ignored_unproven", 0) >= 1 or c.get("equivocations", 0) >= 1

    evidence = encode(
        {
            "type": "equivocation",
            "v": 1,
            "verifier_key": v2_key,
            "ballot_id": ballot_id,
            "epoch": pool.epoch,
            "first": first.encode(),
            "second": second.encode(),
        }
    )

    async def published_and_judged() -> bool:
        # re-sent until judged: the status endpoint answers before the worker has
        # subscribed to the evidence subject (copies of judged bytes are dropped)
        await t2.publish(subjects.equivocation, evidence)
        await t2.flush()
        return await judged()

    await until(published_and_judged, "the anomaly worker to judge the evidence", timeout=60)
    counters = await anomaly_counters(admin, secure_cluster.prefix)
    assert counters.get("equivocations", 0) == 0, f"v2 framed as an equivocator: {counters}"
    after = await membership.read_pool(admin, subjects)
    quarantined = [m.worker_id for m in after.members if m.status != membership.ACTIVE]
    assert quarantined == [], f"framed: {quarantined} quarantined ({counters})"
    alerts = [a for a, _ in await read_alerts(admin, subjects, 600)]
    assert not [a for a in alerts if a.code == "EQUIVOCATION"], alerts
