"""The certificate test vector: the file is what tests/vectors.py builds, and it
re-verifies from the JSON alone — once with the project's verify_certificate and
once with a from-the-contract implementation (plain msgpack, nacl, hashlib,
reading only schemas/asyncapi.yaml for the tags), as an outside implementer
following the offline check of the contract would write it."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing
import pytest
import yaml

from schemas.certificate import verify_certificate
from schemas.errors import CertificateInvalid
from schemas.messages import ConsensusResult
from tests import vectors

VECTOR: dict[str, Any] = json.loads(vectors.PATH.read_text(encoding="utf-8"))
DOC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml").read_text(encoding="utf-8")
)
TAGS = {name: bytes.fromhex(d["hex"]) for name, d in DOC["x-signing"]["domains"].items()}
CERT_FIELDS = set(DOC["components"]["schemas"]["ConsensusResult"]["properties"])
PROOF_FIELDS = list(DOC["components"]["schemas"]["VoteProof"]["properties"])


def test_file_is_what_the_generator_builds() -> None:
    assert vectors.PATH.read_text(encoding="utf-8") == vectors.render()


class Bad(Exception):
    pass


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def ed25519_ok(key: bytes, message: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(message, sig)
        return True
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def outside_verify(
    data: bytes,
    *,
    pool: set[bytes],
    network: str,
    threshold: str,
    min_pool: int,
    request_id: str,
    request_digest: bytes,
) -> None:
    """The contract's offline check, step by step, raising Bad at the first failure."""
    c = msgpack.unpackb(data, raw=False)
    if not isinstance(c, dict) or c.get("type") != "certificate" or c.get("v") != 1:
        raise Bad("not a v1 certificate")
    if set(c) - CERT_FIELDS:
        raise Bad("unknown keys")
    if c["request_id"] != request_id or c["request_digest"] != request_digest:
        raise Bad("not for my request")
    votes = c["votes"]
    for proof in votes:
        if set(proof) - set(PROOF_FIELDS):
            raise Bad("unknown keys in a proof")
    body = [
        3, "certificate", 1, network,
        c["request_id"], c["request_digest"], c["decision"], c["votes_for"],
        c["votes_against"], c["total_votes"], c["n"], c["q"], c["f"], c["threshold"],
        c["epoch"], c["ballot_id"], [[p[k] for k in PROOF_FIELDS] for p in votes],
        c["tally_id"], c["tally_key"], c["decided_at_ms"], c["latency_us"], c["state_rev"],
    ]  # fmt: skip
    if not ed25519_ok(c["tally_key"], TAGS["certificate"] + pack(body), c["sig"]):
        raise Bad("tally signature")
    n = c["n"]
    if n != len(pool) or n < max(3, min_pool):
        raise Bad("pool size")
    if c["threshold"] != threshold:
        raise Bad("threshold not pinned value")
    t = Fraction(threshold)
    q, f = -((-t.numerator * n) // t.denominator), (n - 1) // 3
    if (c["q"], c["f"]) != (q, f):
        raise Bad("q/f")
    counts, seen = [0, 0], set()
    for p in votes:
        if p["verifier_key"] not in pool or p["verifier_key"] in seen:
            raise Bad("voter")
        seen.add(p["verifier_key"])
        entry = pack([c["request_id"], c["request_digest"], p["valid"], p["reason"]])
        h, idx, size, k = hashlib.sha256(b"\x00" + entry).digest(), p["index"], p["count"], 0
        if not 0 <= idx < size:
            raise Bad("index")
        while size > 1:
            if idx % 2:
                h, k = node(p["path"][k], h), k + 1
            elif idx + 1 < size:
                h, k = node(h, p["path"][k]), k + 1
            idx, size = idx // 2, (size + 1) // 2
        if k != len(p["path"]):
            raise Bad("path")
        vote_body = [
            3, "vote", 1, network, c["ballot_id"], c["epoch"], c["tally_id"],
            p["verifier_key"], p["ts_ms"], p["count"], h, c["state_rev"],
        ]  # fmt: skip
        if not ed25519_ok(p["verifier_key"], TAGS["vote"] + pack(vote_body), p["sig"]):
            raise Bad("vote signature")
        counts[0 if p["valid"] else 1] += 1
    if [c["votes_for"], c["votes_against"]] != counts or c["total_votes"] != len(votes):
        raise Bad("counts")
    ok = {
        "VALID": counts[0] >= q,
        "INVALID": counts[0] < q <= counts[1],
        "NO_QUORUM": counts[0] + (n - sum(counts)) < q and counts[1] + (n - sum(counts)) < q,
        "TIMEOUT": counts[0] < q and counts[1] < q,
    }.get(c["decision"], False)
    if not ok:
        raise Bad("decision")


def pins(case: dict[str, Any] | None = None) -> dict[str, Any]:
    case = case or {}
    return {
        "pool": {bytes.fromhex(k) for k in VECTOR["pool_keys_hex"]},
        "network": case.get("network", VECTOR["network"]),
        "request_digest": bytes.fromhex(
            case.get("request_digest_hex", VECTOR["request_digest_hex"])
        ),
    }


def test_valid_vector_verifies_from_the_json_alone() -> None:
    data = bytes.fromhex(VECTOR["certificate_hex"])
    p = pins()
    sent = bytes.fromhex(VECTOR["requests_hex"][0])
    assert hashlib.sha256(sent).digest() == p["request_digest"]
    outside_verify(
        data,
        threshold=VECTOR["threshold"],
        min_pool=VECTOR["min_pool"],
        request_id=VECTOR["request_id"],
        **p,
    )
    cert = ConsensusResult.decode(data)
    assert cert.decision == VECTOR["expected"]["decision"] and cert.epoch == VECTOR["epoch"]
    verify_certificate(
        cert,
        p["pool"],
        network=p["network"],
        threshold=Fraction(VECTOR["threshold"]),
        min_pool=VECTOR["min_pool"],
        request_id=VECTOR["request_id"],
        request_digest=p["request_digest"],
        tally_keys={bytes.fromhex(VECTOR["tally_key_hex"])},
    )


@pytest.mark.parametrize("case", VECTOR["invalid"], ids=lambda c: c["name"])
def test_invalid_cases_fail_both_ways(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["certificate_hex"])
    p = pins(case)
    with pytest.raises(Bad):
        outside_verify(
            data,
            threshold=VECTOR["threshold"],
            min_pool=VECTOR["min_pool"],
            request_id=VECTOR["request_id"],
            **p,
        )
    with pytest.raises(CertificateInvalid) as err:
        verify_certificate(
            ConsensusResult.decode(data),
            p["pool"],
            network=p["network"],
            request_digest=p["request_digest"],
        )
    assert err.value.code == case["expected"]


def test_ballot_signing_bytes_from_the_contract() -> None:
    raw = bytes.fromhex(VECTOR["ballot"]["msgpack_hex"])
    b = msgpack.unpackb(raw, raw=False)
    body = [
        1, "ballot", 1, VECTOR["network"], b["ballot_id"], b["epoch"], b["tally_id"],
        b["tally_key"], b["deadline_ms"], b["state_rev"], b["issued_ms"],
        [hashlib.sha256(r).digest() for r in b["requests"]],
    ]  # fmt: skip
    signing = TAGS["ballot"] + pack(body)
    assert signing.hex() == VECTOR["ballot"]["signing_bytes_hex"]
    assert b["tally_key"].hex() == VECTOR["tally_key_hex"]
    assert ed25519_ok(b["tally_key"], signing, b["sig"])
    tally = nacl.signing.SigningKey(bytes.fromhex(VECTOR["tally_seed_hex"]))
    assert tally.sign(signing).signature == b["sig"]  # Ed25519 is deterministic
