"""Hole 9d: the key manager's ``sign`` ignored the key's purpose and added no domain tag.

Whoever may call ``{p}.keys.sign`` (the operator, here ``admin``) could make any
key the manager holds sign bytes that are valid as *another* protocol's message:
a ``certificate_signing`` key that is a trust anchor minted a TrustCertificate
for a key of the caller's choosing, and an ``agent_identity`` key signed a
vote-shaped message. Now ``sign`` serves agent_identity keys (the message as is,
never one that starts with a project signing domain) and document_signing keys
(under DOMAIN_DOCUMENT), and refuses every other purpose with KEY_POLICY_DENIED.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus.key_client import KeyClient
from schemas.codec import encode
from schemas.errors import RemoteError
from schemas.identity import AgentIdentity, verify_signature
from schemas.keys import DOMAIN_DOCUMENT
from schemas.signing import DOMAIN_VOTE
from schemas.trust import TrustCertificate
from tests.secure import SecureCluster

Attacker = Callable[[str], Awaitable[Client]]
#: A document may say anything: signed under DOMAIN_DOCUMENT it is no vote.
LOOKS_LIKE_A_VOTE = b"agentic-payments/vote/v1\x00 looks like a vote"


async def refused(call: Awaitable[object]) -> str:
    try:
        got = await call
    except RemoteError as exc:
        return exc.code
    pytest.fail(f"the key manager signed a protocol message: {got!r}")


async def test_managed_keys_sign_no_protocol_message(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    c = secure_cluster
    c._spawn("keys-keys1", ["-m", "workers.cli", "worker", "keys", "--id", "keys1"])
    operator = await attacker("admin")
    keys = KeyClient(operator, c.prefix, timeout=30)
    ca = (await keys.create("ca", "certificate_signing")).record.latest.public_key
    agent = (await keys.create("agent", "agent_identity")).record.latest.public_key

    # a trust certificate issued by the CA key for a key the caller holds
    now = int(time.time() * 1000)
    forged = TrustCertificate(
        serial="forged-1",
        subject_key=AgentIdentity.generate().public_key,
        issuer_key=ca,
        not_before_ms=now - 1000,
        not_after_ms=now + 86_400_000,
        purposes=("ca", "payment"),
        path_len=5,
    )
    assert await refused(keys.sign("ca", forged.signing_bytes())) == "KEY_POLICY_DENIED"
    # a vote-shaped message signed by the agent key
    vote = DOMAIN_VOTE + encode([2, "ballot-1", 7, "t1", agent, now, 1, b"\x00" * 32, 0])
    assert await refused(keys.sign("agent", vote)) == "KEY_POLICY_DENIED"

    # what the keys are for still works: a payment authorization as is, a document tagged
    payment = await keys.sign("agent", b"pay 12.50 EUR")
    assert verify_signature(agent, b"pay 12.50 EUR", payment.signature)
    doc_key = (await keys.create("doc", "document_signing")).record.latest.public_key
    doc = await keys.sign("doc", LOOKS_LIKE_A_VOTE)
    assert verify_signature(doc_key, DOMAIN_DOCUMENT + LOOKS_LIKE_A_VOTE, doc.signature)
    assert not verify_signature(doc_key, LOOKS_LIKE_A_VOTE, doc.signature)
