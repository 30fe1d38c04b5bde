"""A client written only from ``schemas/asyncapi.yaml``, against real worker processes.

Everything the client does — subject, field names and MessagePack types, domain tags, signing
bytes, Merkle rule, quorum formula, the members bucket — comes from the document, with plain
``nats``, ``msgpack``, ``nacl`` and ``hashlib``. Nothing is imported from ``schemas/`` or
``bus/``, so if the document and the system disagree this test fails the way a Go or JS client
would.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import nacl.exceptions
import nacl.signing
import nats
import pytest
import yaml

if TYPE_CHECKING:
    from tests.helpers import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DOC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml").read_text(encoding="utf-8")
)
SCHEMAS = DOC["components"]["schemas"]
DOMAIN_VOTE = bytes.fromhex(DOC["x-signing"]["domains"]["vote"]["hex"])
DOMAIN_CERTIFICATE = bytes.fromhex(DOC["x-signing"]["domains"]["certificate"]["hex"])
#: VoteProof keys in the order the certificate signing body encodes them.
PROOF_KEYS = list(SCHEMAS["VoteProof"]["properties"])
TIMEOUT_S = 15.0


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def request_subject(prefix: str) -> str:
    return DOC["channels"]["verifyRequest"]["address"].replace("{prefix}", prefix)


def request_map(signer: nacl.signing.SigningKey, message: bytes, **override: Any) -> dict[str, Any]:
    obj = {
        "type": "verification_request",
        "v": 1,
        "request_id": uuid.uuid4().hex,
        "message": message,
        "signature": signer.sign(message).signature,
        "public_key": bytes(signer.verify_key),
    }
    obj.update(override)
    return obj


async def ask(nc: Any, prefix: str, payload: bytes) -> tuple[bytes, dict[str, Any]]:
    msg = await nc.request(request_subject(prefix), payload, timeout=TIMEOUT_S)
    reply = msgpack.unpackb(msg.data, raw=False)
    assert isinstance(reply, dict) and reply.get("v") == 1, reply
    schema = SCHEMAS["ConsensusResult" if reply.get("type") == "certificate" else "ErrorReply"]
    assert set(schema["required"]) <= set(reply) <= set(schema["properties"]), reply
    return msg.data, reply


async def pool_keys(nc: Any, prefix: str) -> tuple[set[bytes], int]:
    """The pool's verifier keys and the bucket's latest revision (the epoch), by the
    rules of x-kv-buckets.members and x-signing.member_signing_bytes."""
    kv = await nc.jetstream().key_value(
        DOC["x-kv-buckets"]["members"]["name"].replace("{prefix}", prefix)
    )
    tag = bytes.fromhex(DOC["x-signing"]["domains"]["member"]["hex"])
    own: dict[str, tuple[int, bytes]] = {}
    admitted: dict[str, tuple[int, bytes]] = {}
    quarantines: list[tuple[int, str, bytes]] = []
    revision = (await kv.status()).stream_info.state.last_seq
    for key in await kv.keys():
        entry = await kv.get(key)
        r = msgpack.unpackb(entry.value, raw=False)
        if r.get("v") != 2 or r.get("worker_id") != key or r.get("network") != prefix:
            continue
        if key.startswith("quarantined."):
            if r["status"] == "quarantined":
                quarantines.append((entry.revision, key.split(".", 1)[1], r["public_key"]))
        elif r["status"] != "active" or key.startswith("tally."):
            continue
        elif key.startswith("admitted."):
            admitted[key.split(".", 1)[1]] = (entry.revision, r["public_key"])
        elif "." not in key and r["role"] == "verifier":
            body = tag + msgpack.packb(
                [2, prefix, key, r["role"], r["public_key"], r["status"], r["registered_at_ms"]]
            )
            if signature_ok(r["public_key"], body, r["sig"]):
                own[key] = (entry.revision, r["public_key"])
    claims = {**own}
    for seat, (rev, key) in admitted.items():  # an admission beats the seat's own record
        held = claims.get(seat)
        claims[seat] = (min(rev, held[0]) if held and held[1] == key else rev, key)
    seats: dict[str, bytes] = {}
    for seat, (_, key) in sorted(claims.items(), key=lambda c: c[1][0]):
        if key not in seats.values():  # one seat per key: the lowest revision keeps it
            seats[seat] = key
    f = max(0, (len(seats) - 1) // 3)
    out: list[str] = []
    for _, seat, key in sorted(quarantines):  # at most f, earliest first
        if seats.get(seat) == key and len(out) < f:
            out.append(seat)
    return {key for seat, key in seats.items() if seat not in out}, revision


def merkle_root(leaf: bytes, index: int, count: int, path: list[bytes]) -> bytes | None:
    """x-signing.merkle.verify, transcribed."""
    if not 0 <= index < count:
        return None
    h, idx, size, k = leaf, index, count, 0
    while size > 1:
        if idx % 2 == 1 or idx + 1 < size:
            if k >= len(path) or len(path[k]) != 32:
                return None
            pair = path[k] + h if idx % 2 == 1 else h + path[k]
            h = hashlib.sha256(b"\x01" + pair).digest()
            k += 1
        idx //= 2
        size = (size + 1) // 2
    return h if k == len(path) else None


def signature_ok(key: bytes, body: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(body, sig)
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def check_certificate(
    cert: dict[str, Any], raw_request: bytes, pool: set[bytes], network: str
) -> None:
    """'Verifying a certificate offline' from info.description, step by step, with the
    pins it names: the network id (the prefix), the threshold, the pool floor and the
    request sent."""
    sent = msgpack.unpackb(raw_request, raw=False)
    assert set(cert) <= set(SCHEMAS["ConsensusResult"]["properties"])  # strict: no extras
    assert cert["request_id"] == sent["request_id"]
    assert cert["request_digest"] == hashlib.sha256(raw_request).digest()
    body = [
        3,
        cert["type"],
        cert["v"],
        network,
        cert["request_id"],
        cert["request_digest"],
        cert["decision"],
        cert["votes_for"],
        cert["votes_against"],
        cert["total_votes"],
        cert["n"],
        cert["q"],
        cert["f"],
        cert["threshold"],
        cert["epoch"],
        cert["ballot_id"],
        [[vote[k] for k in PROOF_KEYS] for vote in cert["votes"]],
        cert["tally_id"],
        cert["tally_key"],
        cert["decided_at_ms"],
        cert["latency_us"],
        cert["state_rev"],
    ]
    assert signature_ok(cert["tally_key"], DOMAIN_CERTIFICATE + pack(body), cert["sig"])

    n = cert["n"]
    quorum = DOC["x-signing"]["quorum"]
    assert n == len(pool) and n >= quorum["min_pool"]  # the pool floor this client pins
    assert cert["threshold"] == quorum["default_threshold"]  # pinned, not read
    a, b = (int(x) for x in cert["threshold"].split("/"))
    assert (cert["q"], cert["f"]) == (-(-a * n // b), (n - 1) // 3)

    seen: set[bytes] = set()
    counts = {True: 0, False: 0}
    for vote in cert["votes"]:
        assert set(vote) <= set(PROOF_KEYS)
        assert vote["verifier_key"] in pool and vote["verifier_key"] not in seen
        seen.add(vote["verifier_key"])
        entry = pack([cert["request_id"], cert["request_digest"], vote["valid"], vote["reason"]])
        root = merkle_root(
            hashlib.sha256(b"\x00" + entry).digest(), vote["index"], vote["count"], vote["path"]
        )
        assert root is not None
        signed = DOMAIN_VOTE + pack(
            [
                3,
                "vote",
                1,
                network,
                cert["ballot_id"],
                cert["epoch"],
                cert["tally_id"],
                vote["verifier_key"],
                vote["ts_ms"],
                vote["count"],
                root,
                cert["state_rev"],
            ]
        )
        assert signature_ok(vote["verifier_key"], signed, vote["sig"])
        counts[vote["valid"]] += 1
    assert (cert["votes_for"], cert["votes_against"]) == (counts[True], counts[False])
    assert cert["total_votes"] == len(cert["votes"])
    q = cert["q"]
    assert {
        "VALID": counts[True] >= q,
        "INVALID": counts[True] < q <= counts[False],
    }.get(cert["decision"], False)


async def test_plain_client(cluster: Cluster, nats_url: str, prefix: str) -> None:
    await cluster.start_system(4)
    signer = nacl.signing.SigningKey.generate()
    nc = await nats.connect(nats_url, name="plain-client")
    try:
        pool, revision = await pool_keys(nc, prefix)
        assert len(pool) == 4

        # a good signature: VALID, with a certificate that checks out offline
        good = pack(request_map(signer, b"pay 12.50 EUR to merchant-42; nonce 7"))
        data, cert = await ask(nc, prefix, good)
        assert cert["type"] == "certificate", cert
        assert cert["decision"] == "VALID"
        assert cert["votes_for"] >= cert["q"] == 3
        assert cert["epoch"] == revision
        assert all(v["valid"] and v["reason"] == "OK" for v in cert["votes"])
        check_certificate(cert, good, pool, prefix)
        with pytest.raises(AssertionError):  # the network id is signed: not another's
            check_certificate(cert, good, pool, prefix + "x")

        # a retry with the same bytes gets the same certificate, byte for byte
        again, _ = await ask(nc, prefix, good)
        assert again == data

        # the same request id with other bytes is a conflict
        other = msgpack.unpackb(good, raw=False)
        other["message"] += b"!"
        _, conflict = await ask(nc, prefix, pack(other))
        assert (conflict["type"], conflict["code"]) == ("error", "REQUEST_ID_CONFLICT")
        assert conflict["request_id"] == other["request_id"]

        # a tampered message: INVALID, and that certificate checks out too
        tampered_map = request_map(signer, b"pay 12.50 EUR to merchant-42")
        tampered_map["message"] = b"pay 99.50 EUR to merchant-42"
        tampered = pack(tampered_map)
        _, cert = await ask(nc, prefix, tampered)
        assert cert["type"] == "certificate", cert
        assert cert["decision"] == "INVALID"
        assert cert["votes_against"] >= cert["q"]
        assert all(not v["valid"] and v["reason"] == "BAD_SIGNATURE" for v in cert["votes"])
        check_certificate(cert, tampered, pool, prefix)

        # errors, answered at once with a stable code
        bad_requests = [
            (b"\xc1 this is not msgpack", "MALFORMED_PAYLOAD"),
            (pack(request_map(signer, b"x", v=99)), "UNSUPPORTED_VERSION"),
            (pack(request_map(signer, b"x", signature=bytes(63))), "SCHEMA_VIOLATION"),
        ]
        for payload, code in bad_requests:
            _, reply = await ask(nc, prefix, payload)
            assert reply["type"] == "error", reply
            assert reply["code"] == code, reply
            assert reply["code"] in SCHEMAS["ErrorReply"]["properties"]["code"]["x-error-codes"]
            assert isinstance(reply["message"], str)
        assert "signature" in reply["message"]
    finally:
        await nc.close()
