"""Attacks and failure modes found in review, each pinned by a test against a real server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.decisions import decision_key, scope_id
from bus.runtime import RuntimeConfig
from bus.subjects import Subjects
from schemas.certificate import sign_certificate
from schemas.codec import encode
from schemas.errors import CertificateInvalid, ConfigError, RemoteError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult
from tests.wait import eventually
from workers.consensus.tally import TallyOptions, TallyWorker
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration


def rt(nats_config: NatsConfig, tmp_path: Path, worker_id: str) -> RuntimeConfig:
    return RuntimeConfig(
        worker_id=worker_id, nats=nats_config, data_dir=tmp_path, drain_timeout_s=2
    )


async def start_verifiers(
    nats_config: NatsConfig, tmp_path: Path, count: int = 4
) -> list[VerifierWorker]:
    workers = [VerifierWorker(rt(nats_config, tmp_path, f"v{i}")) for i in range(1, count + 1)]
    for w in workers:
        await w.start()
    return workers


@dataclass
class System:
    tally: TallyWorker
    verifiers: list[VerifierWorker]


@contextlib.asynccontextmanager
async def running(
    nats_config: NatsConfig,
    tmp_path: Path,
    *,
    verifiers: int = 4,
    options: TallyOptions | None = None,
) -> AsyncIterator[System]:
    """Verifiers and a tally in this process; everything stopped on the way out."""
    system = System(
        TallyWorker(rt(nats_config, tmp_path, "t1"), options),
        await start_verifiers(nats_config, tmp_path, verifiers),
    )
    await system.tally.start()
    try:
        yield system
    finally:
        await system.tally.stop()
        for v in system.verifiers:
            await v.stop()


@pytest.mark.parametrize("forged_decision", ["VALID", "TIMEOUT"])
async def test_forged_certificate_in_the_bucket_is_not_served(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, forged_decision: str
) -> None:
    async with running(nats_config, tmp_path) as system:
        tally = system.tally
        agent, attacker = AgentIdentity.generate(), AgentIdentity.generate()
        bad = signed_request(agent, "steal", "poisoned-1")
        bad = replace(bad, message=b"steal everything")  # signature no longer matches
        from schemas.signing import request_digest

        assert tally._pool is not None
        forged = sign_certificate(
            attacker,
            ConsensusResult(
                request_id="poisoned-1",
                request_digest=request_digest(bad.encode()),
                decision=forged_decision,
                votes_for=4 if forged_decision == "VALID" else 0,
                votes_against=0,
                total_votes=0,
                n=4,
                q=3,
                f=1,
                threshold="2/3",
                epoch=tally._pool.view.epoch,
                ballot_id="x",
                votes=(),
                tally_id="evil",
                tally_key=attacker.public_key,
                decided_at_ms=1,
                latency_us=1000,
            ),
            network=nats_config.prefix,
        )
        kv = await nc.jetstream().key_value(Subjects(nats_config.prefix).decisions_bucket)
        # where this request's own (bad-signature) decision is looked up and stored
        exact = scope_id(agent.public_key, "poisoned-1", request_digest(bad.encode()))
        await kv.put(decision_key(exact), forged.encode())
        async with await VerifyClient.connect(nats_config) as client:
            cert = await client.verify_with_consensus(bad)
            again = await client.verify_with_consensus(bad)
        assert cert.decision == "INVALID" and cert.tally_key == tally.identity.public_key
        assert again == cert  # the forged one never replaces ours, even after the write clash
        # rejected at lookup, and again when our create-only write found the key taken
        assert tally.stats.counters["decision_lookup_rejected"] == 2


async def test_timeout_is_not_final_and_byte_budget_overloads(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    verifiers = await start_verifiers(nats_config, tmp_path)
    for v in verifiers:  # still members, but nobody votes
        await v.stop()
    tally = TallyWorker(
        rt(nats_config, tmp_path, "t1"), TallyOptions(deadline_s=1.0, max_pending_bytes=600)
    )
    await tally.start()
    agent = AgentIdentity.generate()
    reqs = [signed_request(agent, f"pay {i}", f"budget-{i}") for i in range(8)]
    try:
        async with await VerifyClient.connect(nats_config, retries=0) as client:
            results = await client.verify_many(reqs)
            codes = [getattr(r, "code", None) or r.decision for r in results]  # type: ignore[union-attr]
            assert "OVERLOADED" in codes and "TIMEOUT" in codes, codes
            timed_out = reqs[codes.index("TIMEOUT")]
            verifiers = await start_verifiers(nats_config, tmp_path)  # same ids and keys
            retry = await client.verify_with_consensus(timed_out)
        assert retry.decision == "VALID"  # a new round, not the cached TIMEOUT
    finally:
        await tally.stop()
        for v in verifiers:
            await v.stop()


def test_max_batch_beyond_what_verifiers_accept_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="exceeds"):
        TallyOptions(max_batch=5000)


async def test_republished_ballot_gets_the_same_vote_not_equivocation(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    async with running(nats_config, tmp_path) as system:
        tally, verifiers = system.tally, system.verifiers
        subjects = Subjects(nats_config.prefix)
        ballots: list[Msg] = []
        votes: list[bytes] = []

        async def grab(msg: Msg) -> None:
            ballots.append(msg)

        async def collect(msg: Msg) -> None:
            votes.append(msg.data)

        await nc.subscribe(subjects.ballot, cb=grab)
        async with await VerifyClient.connect(nats_config) as client:
            await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "x"))
        await eventually(lambda: bool(ballots), "the ballot to reach the spy")
        original = ballots[0]
        assert not original.reply  # votes go to {p}.vote.<tally id>, not a reply subject
        # an attacker replays the ballot, once with its own inbox as the reply subject
        await nc.subscribe(subjects.votes(tally.worker_id), cb=collect)
        await nc.subscribe("spy.votes", cb=collect)
        for _ in range(2):
            await nc.publish(subjects.ballot, original.data)
            await nc.publish(subjects.ballot, original.data, reply="spy.votes")
        await eventually(
            lambda: (
                sum(v.stats.counters["ballot_repeated"] for v in verifiers) >= 16
                and len(votes) >= 16
            ),
            "every replay to be answered",
        )
        await nc.flush()
        # each verifier: its one vote, repeated to the tally's vote subject only
        assert len(votes) == 16 and len(set(votes)) == 4
        assert tally.stats.counters["vote_rejected_VOTE_EQUIVOCATION"] == 0
        assert sum(v.stats.counters["ballot_repeated"] for v in verifiers) == 16


async def test_malformed_member_record_is_skipped(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    async with running(nats_config, tmp_path, verifiers=3) as system:
        tally, verifiers = system.tally, system.verifiers
        subjects = Subjects(nats_config.prefix)
        kv = await membership.members_bucket(nc, subjects)
        await kv.put(
            "junk",
            encode(
                {
                    "type": "member",
                    "v": 1,
                    "worker_id": "junk",
                    "public_key": b"k" * 32,
                    "status": "active",
                    "registered_at_ms": "not a number",
                }
            ),
        )
        await kv.put("junk2", b"\xc1")
        extra = VerifierWorker(rt(nats_config, tmp_path, "v4"))
        await extra.start()
        verifiers.append(extra)
        await eventually(
            lambda: tally._pool is not None and len(tally._pool.view.keys) == 4,
            "the tally's pool watcher to see v4 (it survived the junk records)",
        )
        pool = await membership.read_pool(nc, subjects)
        assert {m.worker_id for m in pool.verifiers} == {"v1", "v2", "v3", "v4"}
        async with await VerifyClient.connect(nats_config) as client:
            cert = await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "y"))
        assert cert.n == 4 and cert.decision == "VALID"


async def test_remote_errors_keep_their_codes(nats_config: NatsConfig, tmp_path: Path) -> None:
    tally = TallyWorker(rt(nats_config, tmp_path, "t1"))
    await tally.start()
    try:
        async with await VerifyClient.connect(nats_config, retries=0) as client:
            with pytest.raises(RemoteError) as err:
                await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "z"))
        assert err.value.code == "POOL_TOO_SMALL"
    finally:
        await tally.stop()


async def test_client_rejects_certificates_from_a_rogue_tally(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    async with running(nats_config, tmp_path) as system:
        tally = system.tally
        agent, rogue = AgentIdentity.generate(), AgentIdentity.generate()
        async with await VerifyClient.connect(nats_config) as client:
            genuine = await client.verify_with_consensus(signed_request(agent, "pay 1", "g-1"))
        await tally.stop()
        subjects = Subjects(nats_config.prefix)
        answers: list[bytes] = []

        async def rogue_tally(msg: Msg) -> None:
            await msg.respond(answers[0])

        await nc.subscribe(subjects.request, queue="tally", cb=rogue_tally)
        forged_req = replace(signed_request(agent, "pay 2", "steal-1"), message=b"pay 2000")
        from schemas.signing import request_digest

        cases = {
            "another request": genuine.encode(),  # a real certificate, wrong request
            "do not match the signed votes": sign_certificate(
                rogue,
                replace(  # no real votes
                    genuine,
                    request_id="steal-1",
                    request_digest=request_digest(forged_req.encode()),
                    votes=(),
                    total_votes=0,
                ),
                network=nats_config.prefix,
            ).encode(),
        }
        async with await VerifyClient.connect(nats_config, retries=0) as client:
            for needle, answer in cases.items():
                answers[:] = [answer]
                with pytest.raises(CertificateInvalid, match=needle):
                    await client.verify_with_consensus(forged_req)


async def test_requests_held_past_the_drain_get_shutting_down(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    verifiers = await start_verifiers(nats_config, tmp_path)
    for v in verifiers:  # members that never vote: the request stays held
        await v.stop()
    runtime = RuntimeConfig(
        worker_id="t1", nats=nats_config, data_dir=tmp_path, drain_timeout_s=0.3
    )
    tally = TallyWorker(runtime, TallyOptions(deadline_s=30))
    await tally.start()
    async with await VerifyClient.connect(nats_config, retries=0) as client:
        task = asyncio.create_task(
            client.verify_with_consensus(signed_request(AgentIdentity.generate(), "held"))
        )
        await eventually(lambda: bool(tally._ballots), "the tally to hold the request")
        await tally.stop()
        with pytest.raises(RemoteError) as err:
            await task
    assert err.value.code == "SHUTTING_DOWN"


async def test_client_rechecks_old_epoch_certificates_and_other_thresholds(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    options = TallyOptions(threshold=Fraction(3, 4))
    async with running(nats_config, tmp_path, options=options) as system:
        verifiers = system.verifiers
        subjects = Subjects(nats_config.prefix)
        req = signed_request(AgentIdentity.generate(), "pay", "epoch-1")
        async with await VerifyClient.connect(nats_config, threshold=Fraction(3, 4)) as client:
            first = await client.verify_with_consensus(req)
            # membership changes twice: v5 joins, v1 leaves; the retry still gets the
            # original certificate, which the client re-checks against the old pool
            verifiers.append(VerifierWorker(rt(nats_config, tmp_path, "v5")))
            await verifiers[-1].start()
            await membership.remove(nc, subjects, "v1")
            again = await VerifyClient.connect(nats_config, threshold=Fraction(3, 4))
            async with again:
                retry = await again.verify_with_consensus(req)
            assert retry == first
            old = await membership.pool_at(nc, subjects, first.epoch)
            now = await membership.read_pool(nc, subjects)
            assert len(old.keys) == 4 and now.epoch > first.epoch and old.keys != now.keys
        async with await VerifyClient.connect(nats_config) as strict:  # expects 2/3
            with pytest.raises(CertificateInvalid, match="not the expected 2/3"):
                await strict.verify_with_consensus(req)


async def test_stored_certificate_for_another_request_is_not_served(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    async with running(nats_config, tmp_path) as system:
        tally = system.tally
        agent = AgentIdentity.generate()
        async with await VerifyClient.connect(nats_config) as client:
            other = await client.verify_with_consensus(signed_request(agent, "b", "req-B"))
            kv = await nc.jetstream().key_value(Subjects(nats_config.prefix).decisions_bucket)
            # B's genuine cert under A's scope
            await kv.put(decision_key(scope_id(agent.public_key, "req-A")), other.encode())
            mine = await client.verify_with_consensus(signed_request(agent, "a", "req-A"))
        assert mine.request_id == "req-A" and mine.decision == "VALID"
        assert tally.stats.counters["decision_lookup_rejected"] >= 1


async def test_stopping_tally_takes_no_new_work_and_conflicts_while_pending(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    import nats.errors

    from schemas.messages import ErrorReply, decode_reply

    verifiers = await start_verifiers(nats_config, tmp_path)
    for v in verifiers:  # members that never vote: requests stay pending
        await v.stop()
    runtime = RuntimeConfig(
        worker_id="t1", nats=nats_config, data_dir=tmp_path, drain_timeout_s=1.0
    )
    tally = TallyWorker(runtime, TallyOptions(deadline_s=30))
    await tally.start()
    subject = Subjects(nats_config.prefix).request
    agent = AgentIdentity.generate()
    first = signed_request(agent, "pay 1", "same-id")
    held = asyncio.create_task(nc.request(subject, first.encode(), timeout=10))
    await eventually(lambda: bool(tally._ballots), "the tally to hold the first request")
    # different bytes, same id, while the first is still pending
    clash = replace(first, message=b"pay 1000", signature=agent.sign(b"pay 1000"))
    reply = decode_reply((await nc.request(subject, clash.encode(), timeout=5)).data)
    assert isinstance(reply, ErrorReply) and reply.code == "REQUEST_ID_CONFLICT"
    stopping = asyncio.create_task(tally.stop())
    await eventually(  # intake drained (UNSUB flushed to the server): nobody takes new work
        lambda: bool(tally._intake) and all(s._closed for s in tally._intake),
        "the tally's intake to be drained",
    )
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(subject, signed_request(agent, "late").encode(), timeout=2)
    await stopping
    answer = decode_reply((await held).data)
    assert isinstance(answer, ErrorReply) and answer.code == "SHUTTING_DOWN"
