"""Hole 7: vote floods and amplification.

The adversary is verifier v1 (a real pool member: the test holds v1's identity file,
which the v1 worker process also runs with). It listens to ballots as the v1 user and
floods the tally's vote subject with (a) thousands of copies of one validly signed
vote, (b) many distinct re-signed votes with conflicting verdicts for one ballot.

Before the fix the tally built a Merkle tree and checked a signature for every copy
before it noticed the duplicate, and published equivocation evidence once per
re-signed vote (amplification: one vote in, one evidence message out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.client import VerifyClient, signed_request
from bus.subjects import Subjects
from schemas.codec import decode
from schemas.identity import AgentIdentity
from schemas.messages import (
    Ballot,
    ConsensusResult,
    ErrorReply,
    MetricsSnapshot,
    VerificationRequest,
    VoteEntry,
    decode_reply,
)
from schemas.signing import request_digest
from schemas.votes import sign_vote
from tests.secure import SecureCluster

pytestmark = pytest.mark.slow

Attacker = Callable[[str], Awaitable[Client]]
COPIES = 10_000
#: at most this many callers may wait for one request id (the tally's MAX_WAITERS is 32)
JOIN_LIMIT = 100
RESIGNED = 1_000


async def tally_counters(nc: Client, prefix: str) -> dict[str, int]:
    reply = await nc.request(Subjects(prefix).status("tally", "t1"), b"", timeout=5.0)
    return MetricsSnapshot.decode(reply.data).counters


def dropped(counters: dict[str, int]) -> int:
    """Every vote the tally refused or dropped, whatever the counter's name."""
    return sum(v for k, v in counters.items() if k.startswith(("vote_rejected_", "vote_dropped_")))


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def v1_vote(
    identity: AgentIdentity, ballot: Ballot, ts_ms: int, *, lie: bool, network: str
) -> bytes:
    """v1's signed vote on ``ballot``: honest verdicts, or every one flipped."""
    entries = []
    for raw in ballot.requests:
        request = VerificationRequest.decode(raw)
        valid = not lie
        entries.append(
            VoteEntry(
                request.request_id, request_digest(raw), valid, "OK" if valid else "BAD_SIGNATURE"
            )
        )
    return sign_vote(identity, ballot, entries, ts_ms, network=network).encode()


async def start(secure_cluster: SecureCluster) -> AgentIdentity:
    # v1 runs with an identity file the test (the adversary) holds as well
    identity = AgentIdentity.load_or_create(secure_cluster.data_dir / "keys" / "verifier-v1.key")
    await secure_cluster.start_system(4, "--deadline-ms", "30000")
    return identity


async def one_ballot(
    v1: Client, alice_config: object, secure_cluster: SecureCluster, tag: str
) -> tuple[Ballot, str, ConsensusResult]:
    """Submit one request as alice; return the ballot v1 saw, its reply subject, and
    the decision."""
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await v1.subscribe(Subjects(secure_cluster.prefix).ballot, cb=got.put)
    await v1.flush()
    agent = AgentIdentity.generate()
    async with await VerifyClient.connect(alice_config, timeout=15.0, retries=0) as client:  # type: ignore[arg-type]
        result = await client.verify_with_consensus(signed_request(agent, f"pay 1 {tag}", tag))
    msg = await asyncio.wait_for(got.get(), 10)
    await sub.unsubscribe()
    assert isinstance(result, ConsensusResult) and result.decision == "VALID", result
    ballot = Ballot.decode(msg.data)
    # votes go to the ballot's tally's own vote subject (ballots carry no reply subject)
    return ballot, Subjects(secure_cluster.prefix).votes(ballot.tally_id), result


async def decisions_keep_coming(alice_config: object, tag: str) -> None:
    agent = AgentIdentity.generate()
    async with await VerifyClient.connect(alice_config, timeout=15.0, retries=0) as client:  # type: ignore[arg-type]
        for i in range(3):
            result = await client.verify_with_consensus(
                signed_request(agent, f"pay {i}", f"{tag}-{i}")
            )
            assert isinstance(result, ConsensusResult) and result.decision == "VALID", result


async def test_copies_of_one_vote_are_dropped_before_any_signature_check(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    identity = await start(secure_cluster)
    assert secure_cluster.secure is not None
    alice = secure_cluster.secure.config("alice")
    v1 = await attacker("v1")
    admin = await attacker("admin")
    ballot, reply, _ = await one_ballot(v1, alice, secure_cluster, "flood-copies")
    before = await tally_counters(admin, secure_cluster.prefix)

    data = v1_vote(
        identity, ballot, int(time.time() * 1000), lie=False, network=secure_cluster.prefix
    )
    for _ in range(COPIES):
        await v1.publish(reply, data)
    await v1.flush()

    async def all_seen() -> bool:
        return (
            dropped(await tally_counters(admin, secure_cluster.prefix)) - dropped(before)
            >= COPIES - 1
        )

    await wait_for(all_seen, "the tally to take in the flood")
    after = await tally_counters(admin, secure_cluster.prefix)
    checks = after.get("vote_signature_checks")
    assert checks is not None, f"the tally counts no signature checks: {after}"
    # the real votes of this ballot and at most one of the attacker's copies
    assert checks - before.get("vote_signature_checks", 0) <= 1, after
    assert after.get("vote_dropped_duplicate_bytes", 0) >= COPIES - 1, after
    await decisions_keep_coming(alice, "after-copies")


async def test_resigned_conflicting_votes_publish_one_evidence_per_key_and_ballot(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    identity = await start(secure_cluster)
    assert secure_cluster.secure is not None
    alice = secure_cluster.secure.config("alice")
    v1 = await attacker("v1")
    admin = await attacker("admin")
    subjects = Subjects(secure_cluster.prefix)
    evidence: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        evidence.append(decode(msg.data))

    await admin.subscribe(subjects.equivocation, cb=collect)
    await admin.flush()
    ballot, reply, result = await one_ballot(v1, alice, secure_cluster, "flood-resigned")
    before = await tally_counters(admin, secure_cluster.prefix)

    # v1's first vote: honest (the real v1 process may have sent the same verdicts first)
    await v1.publish(reply, v1_vote(identity, ballot, 1, lie=False, network=subjects.prefix))
    # then RESIGNED distinct signatures over the opposite verdicts
    for i in range(RESIGNED):
        await v1.publish(reply, v1_vote(identity, ballot, 2 + i, lie=True, network=subjects.prefix))
    await v1.flush()

    async def all_seen() -> bool:
        return (
            dropped(await tally_counters(admin, secure_cluster.prefix)) - dropped(before)
            >= RESIGNED
        )

    await wait_for(all_seen, "the tally to take in the re-signed votes")
    await admin.flush()
    await asyncio.sleep(0.5)  # let in-flight evidence messages arrive (none should follow)
    mine = [
        e
        for e in evidence
        if e.get("verifier_key") == identity.public_key and e.get("ballot_id") == ballot.ballot_id
    ]
    assert len(mine) == 1, f"{len(mine)} evidence messages for one (key, ballot)"
    after = await tally_counters(admin, secure_cluster.prefix)
    checks = after.get("vote_signature_checks", 0) - before.get("vote_signature_checks", 0)
    assert "vote_signature_checks" in after and checks <= 4, after
    assert result.decision == "VALID"
    await decisions_keep_coming(alice, "after-resigned")


async def test_identical_requests_with_new_reply_subjects_are_capped(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    """Hole 7c: every copy of a pending request with a new reply subject was appended
    to that request's waiters, without bound. Now at most MAX_WAITERS join; the rest are
    answered OVERLOADED at once."""
    for i in range(1, 5):
        secure_cluster.start_verifier(f"v{i}")
    await secure_cluster.wait_pool(4)
    secure_cluster.start_tally("t1", "--deadline-ms", "4000")
    await secure_cluster.wait_tally()
    await secure_cluster.wait_pool(4)
    for name in ("verifier-v3", "verifier-v4"):  # still members: no quorum until the deadline
        secure_cluster.kill(name)
        secure_cluster.processes[name].wait(10)
    alice = await attacker("alice")
    data = signed_request(AgentIdentity.generate(), "pay 1", "waiters-flood").encode()
    replies: list[object] = []
    done = asyncio.Event()
    copies = 2_000

    async def collect(msg: Msg) -> None:
        replies.append(decode_reply(msg.data))
        if len(replies) >= copies:
            done.set()

    sub = await alice.subscribe(alice.new_inbox() + ".*", cb=collect)
    base = sub.subject[:-2]
    for i in range(copies):
        await alice.publish(Subjects(secure_cluster.prefix).request, data, reply=f"{base}.{i}")
    await alice.flush()
    await asyncio.wait_for(done.wait(), 30)
    overloaded = [r for r in replies if isinstance(r, ErrorReply) and r.code == "OVERLOADED"]
    answered = [r for r in replies if isinstance(r, ConsensusResult)]
    assert len(overloaded) >= copies - JOIN_LIMIT, f"{len(overloaded)} OVERLOADED of {copies}"
    assert answered and all(r.decision == "TIMEOUT" for r in answered)
