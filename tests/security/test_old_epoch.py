"""Hole 3: certificates from any past epoch were accepted.

``VerifyClient`` checked a certificate against the pool of whatever epoch the
certificate named, however old. An attacker holding the keys of 2 verifiers that
made up an early 3-member epoch (and any tally key) forged a VALID certificate
for a request with a bad signature, although the pool had grown to 7 since —
only f=2 of 7. A client now accepts a certificate only at the current epoch, or at
one superseded at most ``pool_grace_s`` ago (server time of the superseding
revision), and rebuilds a past pool by message gets that fail closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.connection import connect
from bus.subjects import Subjects
from schemas import merkle
from schemas.certificate import sign_certificate
from schemas.errors import CertificateInvalid
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, VerificationRequest, VoteProof
from schemas.signing import entry_bytes, request_digest, vote_signing_bytes
from tests.secure import SecureCluster


def forged_certificate(
    request: VerificationRequest,
    voters: list[AgentIdentity],
    tally: AgentIdentity,
    *,
    epoch: int,
    n: int,
    network: str,
) -> ConsensusResult:
    """A VALID certificate at ``epoch`` (pool size ``n``, q = 2 for n = 3), every
    signature genuine: the attacker holds the voters' and the tally's keys."""
    digest = request_digest(request.encode())
    ts = time.time_ns() // 1_000_000
    leaf = merkle.leaf_hash(entry_bytes(request.request_id, digest, True, "OK"))
    root = merkle.root([leaf])
    proofs = []
    for voter in voters:
        body = vote_signing_bytes(
            network=network,
            ballot_id="forged-ballot",
            epoch=epoch,
            tally_id="t9",
            verifier_key=voter.public_key,
            ts_ms=ts,
            count=1,
            root=root,
            state_rev=0,
        )
        proofs.append(VoteProof(voter.public_key, ts, 1, 0, True, "OK", (), voter.sign(body)))
    cert = ConsensusResult(
        request_id=request.request_id,
        request_digest=digest,
        decision="VALID",
        votes_for=len(proofs),
        votes_against=0,
        total_votes=len(proofs),
        n=n,
        q=2,
        f=0,
        threshold="2/3",
        epoch=epoch,
        ballot_id="forged-ballot",
        votes=tuple(proofs),
        tally_id="t9",
        tally_key=tally.public_key,
        decided_at_ms=ts,
        latency_us=1000,
        state_rev=0,
    )
    return sign_certificate(tally, cert, network=network)


async def test_certificate_from_an_early_small_epoch_is_refused(
    secure_cluster: SecureCluster, attacker: Callable[[str], Awaitable[Client]]
) -> None:
    subjects = Subjects(secure_cluster.prefix)
    stolen = [AgentIdentity.generate(), AgentIdentity.generate()]
    for name, identity in zip(("v1", "v2"), stolen, strict=True):
        nc = await attacker(name)  # the attacker's verifiers register like any verifier
        await membership.register(nc, subjects, name, identity)
    secure_cluster.start_verifier("v3")
    early = await secure_cluster.wait_pool(3)
    assert len(early.keys) == 3 and {i.public_key for i in stolen} <= early.keys
    for name in ("v4", "v5", "v6", "v7"):
        secure_cluster.start_verifier(name)
    now = await secure_cluster.wait_pool(7)
    assert now.epoch > early.epoch

    agent = AgentIdentity.generate()
    good = signed_request(agent, "pay 1000 EUR to mallory", "old-epoch-1")
    bad = VerificationRequest(good.request_id, good.message, bytes(64), good.public_key)
    cert = forged_certificate(
        bad, stolen, AgentIdentity.generate(), epoch=early.epoch, n=3, network=secure_cluster.prefix
    )

    # wait until the revision that superseded the early epoch is older than the
    # grace period the client pins (server and test share this machine's clock)
    admin = await connect(secure_cluster.admin(), name="test-admin")
    try:
        msg = await admin.jetstream().get_msg(f"KV_{subjects.members_bucket}", seq=early.epoch + 1)
        assert msg.time is not None
        # time is the subject: the record must be older than the client's tolerance
        await asyncio.sleep(max(0.0, 1.5 - (time.time() - msg.time.timestamp())))
    finally:
        await admin.close()

    assert secure_cluster.secure is not None
    alice = await connect(secure_cluster.secure.config("alice"), name="alice")
    try:
        client = VerifyClient(alice, prefix=secure_cluster.prefix, pool_grace_s=1.0)
        with pytest.raises(CertificateInvalid, match="superseded"):
            await client.check(cert, bad.request_id, request_digest(bad.encode()))
    finally:
        await alice.close()
