"""Hole 9c: one certificate, one wire form.

The adversary is a Byzantine tally: the real tally t1 decided a request (real
verifier processes voted), and t1 then turns Byzantine — the test holds t1's
identity file and connects as user t1, which may answer requests on
``{prefix}.verify.request``. It answers the client's retry with the very same
decision re-encoded: the latency as a float, an integer as a float, the vote
proofs as arrays, an extra key. Before the fix the certificate signing body held
maps and a float and the decoder turned an int latency into a float, so one
certificate had several wire forms that all verified (whoever stores, compares or
hashes certificates by their bytes sees two certificates for one decision). Now
the signing body is arrays and integers only and the decoders are strict: the
client (``VerifyClient.verify_with_consensus``, the code ``agentic-payments
verify`` runs) refuses every other form with SCHEMA_VIOLATION, and the canonical
one verifies.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.client import VerifyClient
from bus.subjects import Subjects
from schemas.certificate import sign_certificate
from schemas.codec import encode
from schemas.errors import AgenticPaymentsError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, VerificationRequest
from tests.secure import SecureCluster

Attacker = Callable[[str], Awaitable[Client]]


def _flip_number(value: Any) -> Any:
    return float(value) if isinstance(value, int) else int(value)


def _latency(wire: dict[str, Any]) -> str:
    return "latency_us" if "latency_us" in wire else "latency_ms"


#: Re-encodings of one certificate's wire map, each the same decision.
FORMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "latency-other-number-type": lambda w: {**w, _latency(w): _flip_number(w[_latency(w)])},
    "integer-as-float": lambda w: {**w, "votes_for": float(w["votes_for"])},
    "vote-proofs-as-arrays": lambda w: {**w, "votes": [list(v.values()) for v in w["votes"]]},
    "extra-key": lambda w: {**w, "note": "same decision"},
}


def wide_msgpack(obj: Any) -> bytes:
    """``obj`` as MessagePack with every value in its widest encoding (valid
    MessagePack, not the shortest form ``schemas.codec.encode`` writes)."""
    if isinstance(obj, bool):
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return b"\xd3" + struct.pack(">q", obj) if obj < 0 else b"\xcf" + struct.pack(">Q", obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(obj, bytes):
        return b"\xc6" + struct.pack(">I", len(obj)) + obj
    if isinstance(obj, list):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(wide_msgpack(v) for v in obj)
    if isinstance(obj, dict):
        return (
            b"\xdf"
            + struct.pack(">I", len(obj))
            + b"".join(wide_msgpack(k) + wide_msgpack(v) for k, v in obj.items())
        )
    raise TypeError(type(obj).__name__)


async def _byzantine_tally(
    secure_cluster: SecureCluster, attacker: Attacker
) -> tuple[VerificationRequest, ConsensusResult, AgentIdentity, list[bytes], VerifyClient]:
    """A real decision, then t1 Byzantine: it answers every request with ``answer[0]``."""
    c = secure_cluster
    assert c.secure is not None
    await c.start_system(4)
    agent = AgentIdentity.generate()
    request = VerificationRequest(
        request_id="r-9c", message=b"pay 9", signature=agent.sign(b"pay 9"),
        public_key=agent.public_key,
    )  # fmt: skip
    client = await VerifyClient.connect(c.secure.config("alice"), timeout=5, retries=0)
    cert = await client.verify_with_consensus(request)
    assert cert.decision == "VALID", cert.summary()
    c.kill("tally-t1")
    c.processes["tally-t1"].wait(10)
    tally = AgentIdentity.load(c.data_dir / "keys" / "tally-t1.key")
    assert tally.public_key == cert.tally_key
    answer: list[bytes] = [b""]
    t1 = await attacker("t1")

    async def on_request(msg: Msg) -> None:
        await t1.publish(msg.reply, answer[0])

    await t1.subscribe(Subjects(c.prefix).request, cb=on_request)
    await t1.flush()
    return request, cert, tally, answer, client


async def _outcome(client: VerifyClient, request: VerificationRequest) -> str:
    try:
        result = await client.verify_with_consensus(request)
    except AgenticPaymentsError as exc:
        return exc.code
    return f"accepted {result.decision}"


@pytest.mark.timeout(120)
async def test_every_other_wire_form_of_a_certificate_is_refused(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    request, cert, tally, answer, client = await _byzantine_tally(secure_cluster, attacker)
    try:
        # t1 signs the decision itself, with a whole-number latency (so that the
        # old float field had an int form of the same value)
        lat = "latency_us" if hasattr(cert, "latency_us") else "latency_ms"
        value = getattr(cert, lat)
        canonical = sign_certificate(
            tally, replace(cert, **{lat: type(value)(round(value))}), network=secure_cluster.prefix
        )
        answer[0] = canonical.encode()
        assert await _outcome(client, request) == "accepted VALID"
        outcomes = {}
        for name, form in FORMS.items():
            answer[0] = encode(form(canonical.to_wire()))
            outcomes[name] = await _outcome(client, request)
        accepted = {k: v for k, v in outcomes.items() if v.startswith("accepted")}
        assert not accepted, f"other wire forms of one certificate verified: {accepted}"
        assert outcomes == dict.fromkeys(FORMS, "SCHEMA_VIOLATION"), outcomes
        answer[0] = canonical.encode()  # and the canonical form still does
        assert await _outcome(client, request) == "accepted VALID"
    finally:
        await client.close()


@pytest.mark.timeout(120)
async def test_a_non_shortest_msgpack_encoding_is_refused(
    secure_cluster: SecureCluster, attacker: Attacker
) -> None:
    request, cert, _, answer, client = await _byzantine_tally(secure_cluster, attacker)
    try:
        answer[0] = wide_msgpack(cert.to_wire())
        assert answer[0] != cert.encode()
        outcome = await asyncio.wait_for(_outcome(client, request), 30)
        assert not outcome.startswith("accepted"), f"a re-encoded certificate verified: {outcome}"
    finally:
        await client.close()
