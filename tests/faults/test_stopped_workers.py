"""Faults: a worker process frozen with SIGSTOP (a GC pause, a stuck VM, a debugger)
while clients keep sending, then thawed with SIGCONT."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from nats.aio.msg import Msg

from bus import membership
from bus.client import VerifyClient
from bus.connection import connect
from bus.subjects import Subjects
from schemas.messages import Ballot, Vote
from tests.faults.load import Load, counters, report
from tests.helpers import Cluster
from workers.consensus.verifier import ISSUED_SKEW_MS

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


async def _client(cluster: Cluster) -> VerifyClient:
    return await VerifyClient.connect(cluster.control(), timeout=4.0, retries=0)


def _assert_alive(cluster: Cluster) -> None:
    for name, proc in cluster.processes.items():
        assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{cluster.log(name)}"


@pytest.mark.timeout(90)
async def test_tally_stopped_for_3s(cluster: Cluster) -> None:
    await cluster.start_system(4)
    tally = cluster.processes["tally-t1"]
    audit_nc = await connect(cluster.control(), name="fault-audit")
    try:
        async with await _client(cluster) as client, Load(client, "tallystop") as load:
            await load.wait_decided(20, timeout=30)
            stopped = time.monotonic()
            tally.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(3.0)  # the fault itself is "stopped for 3 s"
            finally:
                tally.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            first = await load.first_decision_after(resumed, timeout=20)
            await load.wait_decided(40, sent_after=resumed, timeout=40)
            await load.stop(drain_s=20)
            result = await load.audit(audit_nc, cluster.prefix)
    finally:
        await audit_nc.close()
    report(
        "tally_sigstop_3s",
        outage_ms=round(load.max_gap_ms(stopped)),
        first_decision_after_sigcont_ms=round((first - resumed) * 1000),
        **result,
    )
    _assert_alive(cluster)
    assert result["lost"] == 0, result
    assert result["wrong"] == 0, result


@pytest.mark.timeout(90)
async def test_verifier_stopped_past_the_ballot_deadline(cluster: Cluster) -> None:
    """Three of four verifiers still reach q=3; the thawed one must not vote on the
    ballots that queued up while it was stopped (they were issued long ago)."""
    deadline_s = 2.0
    pool = await cluster.start_system(4, "--deadline-ms", str(int(deadline_s * 1000)))
    frozen_key = next(m.public_key for m in pool.verifiers if m.worker_id == "v4")
    frozen = cluster.processes["verifier-v4"]
    subjects = Subjects(cluster.prefix)
    nc = await connect(cluster.control(), name="fault-watch")
    issued: dict[str, int] = {}
    thawed_votes: list[str] = []  # ballot ids the thawed verifier voted on
    evidence: list[bytes] = []
    thawed_at_ms: int | None = None

    async def on_ballot(msg: Msg) -> None:
        ballot = Ballot.decode(msg.data)
        issued[ballot.ballot_id] = ballot.issued_ms

    async def on_vote(msg: Msg) -> None:
        vote = Vote.decode(msg.data)
        if vote.verifier_key == frozen_key and thawed_at_ms is not None:
            thawed_votes.append(vote.ballot_id)

    async def on_evidence(msg: Msg) -> None:
        evidence.append(msg.data)

    await nc.subscribe(f"{cluster.prefix}.evidence.equivocation", cb=on_evidence)
    await nc.subscribe(subjects.ballot, cb=on_ballot)
    await nc.subscribe(subjects.votes("t1"), cb=on_vote)
    try:
        async with await _client(cluster) as client, Load(client, "verifierstop") as load:
            await load.wait_decided(20, timeout=30)
            stopped = time.monotonic()
            stopped_at_ms = int(time.time() * 1000)
            frozen.send_signal(signal.SIGSTOP)
            try:
                # the pool decides without it, while it is still stopped
                await load.wait_decided(30, sent_after=stopped + deadline_s, timeout=30)
                # the fault: stopped past the deadline and the skew margin, so that the
                # ballots of at least a second are too old to judge once it is thawed
                frozen_for = deadline_s + ISSUED_SKEW_MS / 1000 + 1.0
                await asyncio.sleep(max(0.0, stopped + frozen_for - time.monotonic()))
            finally:
                frozen.send_signal(signal.SIGCONT)
                thawed_at_ms = int(time.time() * 1000)
            frozen_s = time.monotonic() - stopped
            resumed = time.monotonic()
            await load.wait_decided(40, sent_after=resumed, timeout=40)
            await load.stop(drain_s=20)
            result = await load.audit(nc, cluster.prefix)
            frozen_counters = await counters(nc, subjects.status("verifier", "v4"))
            tally_counters = await counters(nc, subjects.status("tally", "t1"))
            after = await membership.read_pool(nc, subjects)
    finally:
        await nc.close()
    report(
        "verifier_sigstop_past_deadline",
        frozen_ms=round(frozen_s * 1000),
        deadline_ms=round(deadline_s * 1000),
        outage_ms=round(load.max_gap_ms(stopped)),
        thawed_votes=len(thawed_votes),
        thawed_refused_skew=frozen_counters.get("ballot_refused_BALLOT_ISSUED_SKEW", 0),
        **result,
    )
    assert frozen_s > deadline_s
    _assert_alive(cluster)
    assert result["lost"] == 0, result
    assert result["wrong"] == 0, result
    # Stale: a ballot issued while it was stopped, more than the skew margin before the
    # thaw. It admits a ballot only within ISSUED_SKEW_MS of its clock, which is past
    # the thaw (200 ms: the two clocks are one machine's, read at slightly different
    # moments). A ballot issued before the SIGSTOP may have been admitted before it:
    # its vote, judged in time, may still go out after the thaw.
    assert thawed_at_ms is not None
    stale = [
        f"{b} issued {thawed_at_ms - issued[b]} ms before the thaw" if b in issued else b
        for b in thawed_votes
        if b not in issued or stopped_at_ms + 200 < issued[b] < thawed_at_ms - ISSUED_SKEW_MS - 200
    ]
    assert not stale, stale[:5]
    # it saw the ballots that queued up and refused them, and it votes again
    assert frozen_counters.get("ballot_refused_BALLOT_ISSUED_SKEW", 0) > 0, frozen_counters
    assert thawed_votes
    # its late votes broke nothing: no equivocation, and it is still in the pool
    assert not evidence
    assert tally_counters.get("vote_rejected_VOTE_EQUIVOCATION", 0) == 0, tally_counters
    assert frozen_key in after.keys
