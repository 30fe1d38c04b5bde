"""Strict decoding of the authority coordinator's messages and state records."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import msgpack
import pytest

from schemas.authority import (
    ALL_AUTHORITY_MESSAGES,
    DOMAIN_ENDORSEMENT,
    AuthorityChange,
    AuthorityList,
    AuthorityRecord,
    Endorsement,
    EvaluateRequest,
    ListRequest,
    PolicyChange,
    PolicyGroup,
    PolicyQuery,
    PolicyVerdict,
    QuorumPolicy,
    decode_state_record,
    endorsement_signing_bytes,
    parse_fraction,
    sign_endorsement,
)
from schemas.errors import CodecError, PayloadTooLarge, SchemaViolation, UnsupportedVersion
from schemas.identity import AgentIdentity, verify_signature

K = bytes(range(32))
K2 = bytes(range(1, 33))
SIG = bytes(64)
DIG = bytes(32)
REC = AuthorityRecord(K, "bank-a", "High", True, 3)
POL = QuorumPolicy(
    "payments", 2, "Medium", Fraction(2, 3), (PolicyGroup(1, "High", (K, K2), "ops"),), 4
)
END = Endorsement(K, SIG)
SAMPLES: list[Any] = [
    REC,
    POL,
    END,
    AuthorityChange(REC, (END,)),
    PolicyChange(POL, (END, END)),
    PolicyQuery("default"),
    ListRequest(),
    AuthorityList((REC,), (POL,), 9),
    EvaluateRequest("payments", DIG, (END,)),
    PolicyVerdict(
        False, "POLICY_NOT_MET", "1 of 2", "payments", "default", 2, (K,), ((K2, "INACTIVE"),), 7
    ),
]


def test_every_message_has_a_sample() -> None:
    assert {type(s) for s in SAMPLES} == set(ALL_AUTHORITY_MESSAGES)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_and_header(sample: Any) -> None:
    cls = type(sample)
    assert cls.decode(sample.encode()) == sample
    wire = sample.to_wire()
    assert set(wire) == set(cls.FIELDS)
    assert wire["type"] == cls.TYPE and wire["v"] == 1
    with pytest.raises(UnsupportedVersion):
        cls.from_wire({**wire, "v": 2})
    with pytest.raises(SchemaViolation):
        cls.from_wire({**wire, "type": "something_else"})
    with pytest.raises(SchemaViolation):
        cls.from_wire([wire])
    with pytest.raises(CodecError):
        cls.decode(b"\xc1")
    with pytest.raises(CodecError):
        cls.decode(sample.encode()[:-1])


def _mutate(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is _DEL:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


_DEL = object()


@pytest.mark.parametrize(
    ("cls", "base", "path", "value"),
    [
        (AuthorityRecord, REC, "public_key", bytes(31)),
        (AuthorityRecord, REC, "public_key", bytes(33)),
        (AuthorityRecord, REC, "public_key", "00" * 32),
        (AuthorityRecord, REC, "trust_level", "Supreme"),
        (AuthorityRecord, REC, "trust_level", "high"),
        (AuthorityRecord, REC, "active", 1),
        (AuthorityRecord, REC, "serial", 0),
        (AuthorityRecord, REC, "serial", True),
        (AuthorityRecord, REC, "name", ""),
        (AuthorityRecord, REC, "name", "a\nb"),
        (AuthorityRecord, REC, "name", "n" * 129),
        (AuthorityRecord, REC, "name", _DEL),
        (QuorumPolicy, POL, "threshold", 0.67),
        (QuorumPolicy, POL, "threshold", "0.67"),
        (QuorumPolicy, POL, "threshold", "4/6"),
        (QuorumPolicy, POL, "threshold", "0/3"),
        (QuorumPolicy, POL, "threshold", "4/3"),
        (QuorumPolicy, POL, "threshold", "2/0"),
        (QuorumPolicy, POL, "threshold", " 2/3"),
        (QuorumPolicy, POL, "min_authorities", 0),
        (QuorumPolicy, POL, "min_authorities", 1025),
        (QuorumPolicy, POL, "category", "a.b"),
        (QuorumPolicy, POL, "category", "x" * 65),
        (QuorumPolicy, POL, "category", ""),
        (QuorumPolicy, POL, "groups", {}),
        (QuorumPolicy, POL, "groups", [1]),
        (
            QuorumPolicy,
            POL,
            "groups",
            [{"name": "", "k": 1, "min_trust_level": "Low", "members": []}] * 17,
        ),
        (QuorumPolicy, POL, "groups.0.k", 0),
        (QuorumPolicy, POL, "groups.0.k", 3),  # 3 of 2 members
        (QuorumPolicy, POL, "groups.0.members", [K, K]),
        (QuorumPolicy, POL, "groups.0.members", [bytes(31)]),
        (QuorumPolicy, POL, "groups.0.min_trust_level", "Top"),
        (QuorumPolicy, POL, "groups.0.k", _DEL),
        (Endorsement, END, "signature", bytes(63)),
        (Endorsement, END, "authority_key", bytes(32 + 1)),
        (Endorsement, END, "signature", _DEL),
        (EvaluateRequest, EvaluateRequest("p", DIG, (END,)), "message_digest", bytes(31)),
        (EvaluateRequest, EvaluateRequest("p", DIG, (END,)), "endorsements", [END.to_wire()] * 65),
        (EvaluateRequest, EvaluateRequest("p", DIG, (END,)), "endorsements.0.v", 2),
        (AuthorityChange, AuthorityChange(REC, ()), "record.trust_level", "Root!"),
        (AuthorityChange, AuthorityChange(REC, ()), "record", _DEL),
        (PolicyChange, PolicyChange(POL, ()), "policy.threshold", "1/1.0"),
        (PolicyQuery, PolicyQuery("p"), "category", "p q"),
    ],
)
def test_rejected(cls: Any, base: Any, path: str, value: Any) -> None:
    wire = _mutate(base.to_wire(), path, value)
    with pytest.raises(CodecError) as info:
        cls.decode(msgpack.packb(wire, use_bin_type=True))
    assert info.value.code in ("SCHEMA_VIOLATION", "UNSUPPORTED_VERSION")


def test_oversized_payload() -> None:
    with pytest.raises(PayloadTooLarge):
        EvaluateRequest.decode(b"\x00" * (256 * 1024 + 1))


@pytest.mark.parametrize(
    ("text", "value"), [("2/3", Fraction(2, 3)), ("1/1", Fraction(1)), ("1/100", Fraction(1, 100))]
)
def test_fraction_accepted(text: str, value: Fraction) -> None:
    assert parse_fraction(text) == value


def test_policy_encoding_is_canonical_and_digest_changes_with_serial() -> None:
    same = QuorumPolicy.decode(POL.encode())
    assert same.encode() == POL.encode() and same.digest() == POL.digest()
    bumped = QuorumPolicy(
        POL.category,
        POL.min_authorities,
        POL.min_trust_level,
        POL.threshold,
        POL.groups,
        POL.serial + 1,
    )
    assert bumped.digest() != POL.digest()


def test_endorsement_signing_bytes_and_domain() -> None:
    body = endorsement_signing_bytes("payments", DIG)
    assert body == DOMAIN_ENDORSEMENT + msgpack.packb([1, "payments", DIG], use_bin_type=True)
    ident = AgentIdentity.from_seed(bytes(32))
    e = sign_endorsement(ident, "payments", DIG)
    assert verify_signature(ident.public_key, body, e.signature)
    assert not verify_signature(
        ident.public_key, endorsement_signing_bytes("refunds", DIG), e.signature
    )
    with pytest.raises(SchemaViolation):
        endorsement_signing_bytes("payments", bytes(31))
    with pytest.raises(SchemaViolation):
        endorsement_signing_bytes("pay.ments", DIG)


def test_state_records() -> None:
    assert decode_state_record(f"authority.{K.hex()}", REC.encode()) == REC
    assert decode_state_record("policy.payments", POL.encode()) == POL
    assert decode_state_record("key.abcd", b"\xc1 not ours") is None
    with pytest.raises(SchemaViolation):  # a record filed under another key
        decode_state_record(f"authority.{K2.hex()}", REC.encode())
    with pytest.raises(SchemaViolation):
        decode_state_record("policy.refunds", POL.encode())
    with pytest.raises(CodecError):
        decode_state_record("policy.payments", b"\x81\xa1a\x01")
