"""Hole 9b: a certificate of one deployment does not verify in another.

Two deployments, A and B, each with its own nats-server, subject prefix and user
credentials, whose verifiers and tally share identity seeds (an operator who
cloned a deployment, or one organization's keys in two networks). A client
(alice) of A obtains a VALID certificate from real workers. The adversary — t1 of
B gone Byzantine (user t1 on B's server, which may answer
``{prefix}.verify.request``) — answers a B client's request for the same signed
payment with A's certificate. Before the fix the vote and certificate signing
bytes named no deployment, so B's client, re-checking against B's pool (same keys,
same epoch), accepted it. Now the network id (the prefix) is in every signing
body and B's client refuses it as CERTIFICATE_INVALID.
"""

from __future__ import annotations

import shutil

import pytest
from nats.aio.msg import Msg

from bus import membership
from bus.client import VerifyClient
from bus.connection import connect
from bus.subjects import Subjects
from schemas.errors import AgenticPaymentsError
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from tests.secure import SecureCluster


@pytest.mark.timeout(150)
async def test_a_certificate_from_another_deployment_is_refused(
    secure_cluster: SecureCluster, other_deployment: SecureCluster
) -> None:
    a, b = secure_cluster, other_deployment
    assert a.secure is not None and b.secure is not None
    pool_a = await a.start_system(4)
    # B runs with A's identity files: the same verifier and tally keys
    shutil.copytree(a.data_dir / "keys", b.data_dir / "keys")
    pool_b = await b.start_system(4)
    assert (pool_b.epoch, pool_b.keys) == (pool_a.epoch, pool_a.keys), (
        "the two deployments must differ only in their network id"
    )
    agent = AgentIdentity.generate()
    request = VerificationRequest(
        request_id="r-9b", message=b"pay 9", signature=agent.sign(b"pay 9"),
        public_key=agent.public_key,
    )  # fmt: skip
    async with await VerifyClient.connect(a.secure.config("alice"), timeout=10) as alice_a:
        cert = await alice_a.verify_with_consensus(request)
    assert cert.decision == "VALID", cert.summary()

    b.kill("tally-t1")
    b.processes["tally-t1"].wait(10)
    t1_b = await connect(b.secure.config("t1"), name="attacker-t1-b")
    try:

        async def replay(msg: Msg) -> None:
            await t1_b.publish(msg.reply, cert.encode())

        await t1_b.subscribe(Subjects(b.prefix).request, cb=replay)
        await t1_b.flush()
        async with await VerifyClient.connect(
            b.secure.config("alice"), timeout=10, retries=0
        ) as alice_b:
            pool_now = await membership.read_pool(alice_b.nc, Subjects(b.prefix))
            assert (pool_now.epoch, pool_now.keys) == (cert.epoch, pool_a.keys)
            try:
                replayed = await alice_b.verify_with_consensus(request)
            except AgenticPaymentsError as exc:
                assert exc.code == "CERTIFICATE_INVALID", repr(exc)
                # refused for its signatures (the network id), not for its pool or epoch
                assert "signature does not verify" in str(exc), repr(exc)
            else:
                raise AssertionError(f"B's client accepted A's certificate: {replayed.summary()}")
    finally:
        await t1_b.close()
