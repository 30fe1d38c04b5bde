"""End-to-end: real verifier and tally processes over a real nats-server."""

from __future__ import annotations

import asyncio
import signal

import pytest
from nats.aio.msg import Msg

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import connect
from schemas.certificate import verify_certificate
from schemas.errors import RemoteError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, ErrorReply, VerificationRequest
from tests.helpers import Cluster
from tests.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def requests(agent: AgentIdentity, count: int, tag: str) -> list[tuple[VerificationRequest, bool]]:
    """Alternate good and tampered requests; the bool is the right answer."""
    out = []
    for i in range(count):
        req = signed_request(agent, f"pay {i} EUR to merchant-{i}", f"{tag}-{i}")
        if i % 2:
            req = VerificationRequest(
                req.request_id, req.message + b" (altered)", req.signature, req.public_key
            )
        out.append((req, i % 2 == 0))
    return out


async def client_for(cluster: Cluster) -> VerifyClient:
    return await VerifyClient.connect(
        NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), timeout=15.0, retries=0
    )


async def test_honest_pool_decides_valid_and_invalid(cluster: Cluster) -> None:
    pool = await cluster.start_system(4)
    agent = AgentIdentity.generate()
    async with await client_for(cluster) as client:
        batch = requests(agent, 40, "honest")
        results = await client.verify_many([r for r, _ in batch])
    for (req, good), result in zip(batch, results, strict=True):
        assert isinstance(result, ConsensusResult), result
        assert result.request_id == req.request_id
        assert result.decision == ("VALID" if good else "INVALID")
        assert (result.n, result.q, result.f) == (4, 3, 1)
        verify_certificate(result, pool.keys, network=cluster.prefix)


async def test_one_liar_never_changes_a_decision(cluster: Cluster) -> None:
    for i in range(1, 4):
        cluster.start_verifier(f"v{i}")
    cluster.start_byzantine("b1", "lie")
    pool = await cluster.wait_pool(4)
    cluster.start_tally()
    await cluster.wait_tally()
    agent = AgentIdentity.generate()
    async with await client_for(cluster) as client:
        batch = requests(agent, 30, "liar")
        results = await client.verify_many([r for r, _ in batch])
    for (_, good), result in zip(batch, results, strict=True):
        assert isinstance(result, ConsensusResult), result
        assert result.decision == ("VALID" if good else "INVALID")
        verify_certificate(result, pool.keys, network=cluster.prefix)


async def test_two_liars_of_four_never_produce_a_wrong_valid(cluster: Cluster) -> None:
    cluster.start_verifier("v1")
    cluster.start_verifier("v2")
    cluster.start_byzantine("b1", "lie")
    cluster.start_byzantine("b2", "lie")
    await cluster.wait_pool(4)
    cluster.start_tally("t1", "--deadline-ms", "1500")
    await cluster.wait_tally()
    agent = AgentIdentity.generate()
    async with await client_for(cluster) as client:
        batch = requests(agent, 20, "twoliars")
        results = await client.verify_many([r for r, _ in batch])
    for (_, good), result in zip(batch, results, strict=True):
        assert isinstance(result, ConsensusResult), result
        assert result.decision in ("NO_QUORUM", "TIMEOUT", "VALID" if good else "INVALID")
        if not good:
            assert result.decision != "VALID"


@pytest.mark.parametrize("mode", ["equivocate", "replay", "unknown-key", "forge", "garbage"])
async def test_misbehaving_voter_is_rejected(cluster: Cluster, mode: str) -> None:
    for i in range(1, 4):
        cluster.start_verifier(f"v{i}")
    cluster.start_byzantine("b1", mode)
    pool = await cluster.wait_pool(4)
    cluster.start_tally()
    await cluster.wait_tally()
    agent = AgentIdentity.generate()
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="t")
    evidence: list[bytes] = []

    async def collect(msg: Msg) -> None:
        evidence.append(msg.data)

    await nc.subscribe(f"{cluster.prefix}.evidence.equivocation", cb=collect)
    async with await client_for(cluster) as client:
        batch = requests(agent, 12, mode)
        results = [await client.verify_with_consensus(r) for r, _ in batch]
        for (_, good), result in zip(batch, results, strict=True):
            assert result.decision == ("VALID" if good else "INVALID")
            verify_certificate(result, pool.keys, network=cluster.prefix)
            # the misbehaving member's bad votes never appear in a certificate
            if mode != "equivocate":
                byz = {m.public_key for m in pool.members if m.worker_id == "b1"}
                assert not any(v.verifier_key in byz and v.valid != good for v in result.votes)
        status = await nc.request(f"{cluster.prefix}.status.tally.t1", b"", timeout=2)
    from schemas.messages import MetricsSnapshot

    counters = MetricsSnapshot.decode(status.data).counters
    expected = {
        "equivocate": "vote_rejected_VOTE_EQUIVOCATION",
        "replay": "vote_rejected_VOTE_MISMATCH",
        "unknown-key": "vote_rejected_VOTE_NOT_MEMBER",
        "forge": "vote_rejected_VOTE_BAD_SIGNATURE",
        "garbage": "vote_rejected_MALFORMED_PAYLOAD",
    }[mode]
    assert counters.get(expected, 0) > 0, counters
    if mode == "equivocate":
        await eventually(lambda: bool(evidence), "equivocation evidence to be published")
    await nc.close()


async def test_verifier_killed_mid_stream(cluster: Cluster) -> None:
    pool = await cluster.start_system(4)
    agent = AgentIdentity.generate()
    async with await client_for(cluster) as client:
        batch = requests(agent, 300, "kill")
        task = asyncio.create_task(  # noqa: RUF006 - awaited below
            client.verify_many([r for r, _ in batch], concurrency=32)
        )
        await asyncio.sleep(0.3)  # time is the subject: kill v2 while the batch is in flight
        cluster.kill("verifier-v2", signal.SIGKILL)
        results = await task
    assert cluster.processes["verifier-v2"].wait(5) == -signal.SIGKILL
    for (_, good), result in zip(batch, results, strict=True):
        assert isinstance(result, ConsensusResult), result
        assert result.decision == ("VALID" if good else "INVALID")
        verify_certificate(result, pool.keys, network=cluster.prefix)


async def test_malformed_payloads_get_errors_and_workers_keep_serving(cluster: Cluster) -> None:
    await cluster.start_system(4)
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="t")
    subject = f"{cluster.prefix}.verify.request"
    from schemas.codec import encode
    from schemas.messages import decode_reply

    cases = {
        b"\xc1": "MALFORMED_PAYLOAD",
        b"\x92\x01": "MALFORMED_PAYLOAD",
        b"\x00" * 300_000: "PAYLOAD_TOO_LARGE",
        encode({"type": "verification_request", "v": 9}): "UNSUPPORTED_VERSION",
        encode(
            {
                "v": 1,
                "request_id": "x",
                "message": b"m",
                "signature": b"s" * 63,
                "public_key": b"k" * 32,
            }
        ): "SCHEMA_VIOLATION",
        encode([1, 2, 3]): "SCHEMA_VIOLATION",
    }
    for payload, code in cases.items():
        reply = decode_reply((await nc.request(subject, payload, timeout=5)).data)
        assert isinstance(reply, ErrorReply) and reply.code == code, (payload[:20], reply)
    # junk on the ballot subject does not hurt verifiers either
    await nc.publish(f"{cluster.prefix}.ballot", b"\xc1junk", reply="nowhere")
    await nc.close()
    async with await client_for(cluster) as client:
        ok = await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "still"))
    assert ok.decision == "VALID"
    assert all(p.poll() is None for p in cluster.processes.values())


async def test_retry_returns_same_certificate(cluster: Cluster) -> None:
    await cluster.start_system(4)
    agent = AgentIdentity.generate()
    req = signed_request(agent, "pay once", "idem-1")
    async with await client_for(cluster) as client:
        first = await client.verify_with_consensus(req)
        again = await asyncio.gather(*(client.verify_with_consensus(req) for _ in range(5)))
        assert all(a == first for a in again)
        other = VerificationRequest(
            "idem-1", b"pay twice", agent.sign(b"pay twice"), agent.public_key
        )
        with pytest.raises(RemoteError) as err:
            await client.verify_with_consensus(other)
        assert err.value.code == "REQUEST_ID_CONFLICT"
    # a restarted tally still answers from the decisions bucket, not a second round
    cluster.kill("tally-t1", signal.SIGTERM)
    assert cluster.processes["tally-t1"].wait(15) == 0
    cluster.start_tally("t1")
    await cluster.wait_tally()
    async with await client_for(cluster) as client:
        after = await client.verify_with_consensus(req)
    assert after == first


async def test_pool_below_minimum_is_an_error(cluster: Cluster) -> None:
    cluster.start_verifier("v1")
    cluster.start_verifier("v2")
    await cluster.wait_pool(2)
    cluster.start_tally()
    await cluster.wait_tally()
    async with await client_for(cluster) as client:
        with pytest.raises(RemoteError) as err:
            await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "x"))
    assert err.value.code == "POOL_TOO_SMALL"


async def test_membership_change_moves_epoch(cluster: Cluster) -> None:
    pool = await cluster.start_system(4)
    async with await client_for(cluster) as client:
        before = await client.verify_with_consensus(signed_request(AgentIdentity.generate(), "a"))
        assert before.epoch == pool.epoch
        nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="t")
        from bus.subjects import Subjects

        cluster.start_verifier("v5")
        await cluster.wait_pool(5)
        after = before

        async def decided_by_five() -> bool:  # the tally's pool watcher catches up on its own
            nonlocal after
            after = await client.verify_with_consensus(
                signed_request(AgentIdentity.generate(), "b")
            )
            return after.n == 5

        await eventually(decided_by_five, "a certificate from the 5-member pool", interval=0.1)
        new_pool = await membership.read_pool(nc, Subjects(cluster.prefix))
        await nc.close()
    assert after.epoch > before.epoch and after.n == 5 and after.q == 4
    verify_certificate(after, new_pool.keys, network=cluster.prefix)
    with pytest.raises(Exception, match="pool has"):
        verify_certificate(after, pool.keys, network=cluster.prefix)


async def test_sigterm_exits_zero_after_finishing_work(cluster: Cluster) -> None:
    await cluster.start_system(4)
    agent = AgentIdentity.generate()
    async with await client_for(cluster) as client:
        batch = requests(agent, 100, "term")
        task = asyncio.create_task(  # noqa: RUF006 - awaited below
            client.verify_many([r for r, _ in batch], concurrency=50)
        )
        await asyncio.sleep(0.05)  # time is the subject: SIGTERM while the batch is in flight
        cluster.kill("tally-t1", signal.SIGTERM)
        results = await task
    assert cluster.processes["tally-t1"].wait(15) == 0
    decided = [r for r in results if isinstance(r, ConsensusResult)]
    # whatever the tally accepted before SIGTERM it finished; nothing it held was lost
    assert decided, results[:3]
    for (_, good), result in zip(batch, results, strict=True):
        if isinstance(result, ConsensusResult):
            assert result.decision == ("VALID" if good else "INVALID")
    codes = cluster.stop_all()
    assert all(code == 0 for name, code in codes.items() if name.startswith("verifier")), codes


async def test_cli_verify_json_and_exit_codes(cluster: Cluster) -> None:
    import json
    import subprocess
    import sys

    await cluster.start_system(4)
    key = cluster.data_dir / "agent.key"
    AgentIdentity.generate().save(key)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.cli", *args],
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = await asyncio.to_thread(cli, "verify", "--key", str(key), "--message", "pay 5", "--json")
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["decision"] == "VALID" and body["n"] == 4 and body["votes_for"] >= 3
    sig = AgentIdentity.load(key).sign(b"pay 5").hex()
    pub = AgentIdentity.load(key).public_key_hex
    bad = await asyncio.to_thread(
        cli, "verify", "--public-key", pub, "--signature", sig, "--message", "pay 6"
    )
    assert bad.returncode == 1 and "INVALID" in bad.stdout
    members = await asyncio.to_thread(cli, "members", "list", "--json")
    assert len(json.loads(members.stdout)["members"]) == 4


async def test_every_wycheproof_vector_through_the_network(cluster: Cluster) -> None:
    """All 151 vectors, end to end: 4 verifier processes must agree with Wycheproof."""
    from tests.unit.test_wycheproof import CASES

    pool = await cluster.start_system(4)
    reqs, expected, malformed = [], [], []
    for i, case in enumerate(CASES):
        pk, msg, sig, valid = case.values
        if len(pk) == 32 and len(sig) == 64:
            reqs.append(VerificationRequest(f"wp-{i}", msg, sig, pk))
            expected.append("VALID" if valid else "INVALID")
        else:
            assert not valid
            malformed.append(VerificationRequest(f"wp-{i}", msg, sig, pk))
    async with await client_for(cluster) as client:
        results = await client.verify_many(reqs, concurrency=64)
        for req in malformed:  # wrong key/signature lengths never reach a round
            reply = await client.submit_raw(req.encode())
            assert isinstance(reply, ErrorReply) and reply.code == "SCHEMA_VIOLATION", reply
    got = [getattr(r, "decision", r) for r in results]
    assert got == expected
    for r in results:
        assert isinstance(r, ConsensusResult)
        verify_certificate(r, pool.keys, network=cluster.prefix)
        assert r.votes_for in (0, r.total_votes)  # unanimous among counted votes
    assert malformed, "some vectors have wrong lengths; those are SCHEMA_VIOLATION"
