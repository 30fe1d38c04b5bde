"""schemas/trust.py: strict decoding, signing, state records, and its AsyncAPI documentation."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from schemas.errors import (
    WIRE_ERROR_CODES,
    ChainInvalid,
    CodecError,
    MalformedPayload,
    SchemaViolation,
    UnsupportedVersion,
)
from schemas.identity import AgentIdentity
from schemas.trust import (
    DOMAIN_TRUST_CERT,
    OPS,
    PURPOSES,
    TRUST_MESSAGES,
    AddCertRequest,
    ChainReply,
    ListRequest,
    StoredCert,
    TrustAck,
    TrustAnchor,
    TrustCertificate,
    TrustCertRecord,
    TrustListing,
    ValidateRequest,
    decode_state_record,
    decode_trust_reply,
    issue,
)
from workers.trust import chain

DOC: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml").read_text()
)
SCHEMAS = DOC["components"]["schemas"]
ISSUER = AgentIdentity.from_seed(bytes(range(32)))
SUBJECT = AgentIdentity.from_seed(bytes(range(32, 64)))
CERT = issue(
    ISSUER,
    serial="agent-0001",
    subject_key=SUBJECT.public_key,
    not_before_ms=1_700_000_000_000,
    not_after_ms=1_731_536_000_000,
    purposes=["payment"],
    path_len=0,
)
OPTIONAL = {
    "TrustAddAnchorRequest": {"label"},
    "TrustRevokeCertRequest": {"reason"},
    "TrustValidateRequest": {"purpose", "presented", "now_ms", "min_revision"},
}


def schema_of(cls: type) -> tuple[str, dict[str, Any]]:
    found = [
        (n, s)
        for n, s in SCHEMAS.items()
        if s.get("x-python-class") == f"{cls.__module__}.{cls.__qualname__}"
    ]
    assert len(found) == 1, cls
    return found[0]


# ------------------------------------------------------------------ documentation
@pytest.mark.parametrize("cls", TRUST_MESSAGES, ids=lambda c: c.__name__)
def test_documented_fields(cls: Any) -> None:
    name, schema = schema_of(cls)
    assert set(schema["properties"]) == set(cls.FIELDS)
    assert set(schema["required"]) == set(cls.FIELDS) - OPTIONAL.get(name, set())
    assert schema["properties"]["type"]["const"] == cls.TYPE
    assert schema["properties"]["v"]["const"] == 1


def test_documented_domain_tag_and_vector() -> None:
    domain = DOC["x-signing"]["domains"]["trust_cert"]
    assert bytes.fromhex(domain["hex"]) == DOMAIN_TRUST_CERT
    assert domain["text"].replace("\\0", "\0").encode() == DOMAIN_TRUST_CERT
    vec = DOC["x-test-vectors"]["trust_cert"]
    assert CERT.signing_bytes().hex() == vec["signing_bytes_hex"]
    assert CERT.sig.hex() == vec["sig_hex"]
    assert CERT.encode().hex() == vec["msgpack_hex"]
    assert TrustCertificate.decode(bytes.fromhex(vec["msgpack_hex"])).signature_ok()


def test_documented_ops_purposes_and_codes() -> None:
    assert DOC["components"]["parameters"]["trust_op"]["enum"] == list(OPS)
    cert_props = SCHEMAS["TrustCertificate"]["properties"]
    assert set(cert_props["purposes"]["items"]["enum"]) == PURPOSES
    codes = SCHEMAS["TrustChainResult"]["properties"]["code"]["x-known-values"]
    assert set(codes) == ChainInvalid.REASONS
    assert {getattr(chain, c) for c in codes} == ChainInvalid.REASONS
    assert {"TRUST_NOT_FOUND", "TRUST_CONFLICT", "TRUST_BAD_SIGNATURE"} <= WIRE_ERROR_CODES


# ------------------------------------------------------------------ certificate decoding
def _wire(**changes: Any) -> dict[str, Any]:
    wire = copy.deepcopy(CERT.to_wire())
    for key, value in changes.items():
        if value is None:
            wire.pop(key)
        else:
            wire[key] = value
    return wire


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({}, None),
        ({"v": 2}, UnsupportedVersion),
        ({"type": "trust_anchor"}, SchemaViolation),
        ({"serial": None}, SchemaViolation),
        ({"serial": "a.b"}, SchemaViolation),
        ({"serial": "x" * 65}, SchemaViolation),
        ({"serial": "x" * 64}, None),
        ({"subject_key": bytes(31)}, SchemaViolation),
        ({"issuer_key": "00" * 32}, SchemaViolation),
        ({"sig": bytes(63)}, SchemaViolation),
        ({"not_before_ms": -1}, SchemaViolation),
        ({"not_after_ms": 1_700_000_000_000}, SchemaViolation),
        ({"purposes": []}, SchemaViolation),
        ({"purposes": ["steal"]}, SchemaViolation),
        ({"purposes": ["payment", "ca"]}, SchemaViolation),
        ({"purposes": ["ca", "ca"]}, SchemaViolation),
        ({"purposes": ["authority", "ca", "payment", "verifier"]}, None),
        ({"path_len": -1}, None),
        ({"path_len": -2}, SchemaViolation),
        ({"path_len": 64}, None),
        ({"path_len": 65}, SchemaViolation),
        ({"path_len": True}, SchemaViolation),
    ],
)
def test_certificate_decoding(changes: dict[str, Any], error: type[Exception] | None) -> None:
    raw = msgpack.packb(_wire(**changes), use_bin_type=True)
    if error is None:
        TrustCertificate.decode(raw)
    else:
        with pytest.raises(error):
            TrustCertificate.decode(raw)


def test_oversized_and_garbage_certificates() -> None:
    with pytest.raises(SchemaViolation):
        TrustCertificate.decode(CERT.encode() + bytes(1024))
    with pytest.raises(MalformedPayload):
        TrustCertificate.decode(CERT.encode() + b"\x00")  # trailing bytes


def test_signature_covers_every_field() -> None:
    assert CERT.signature_ok()
    for change in (
        {"serial": "other"},
        {"path_len": 1},
        {"purposes": ("ca", "payment")},
        {"not_after_ms": CERT.not_after_ms + 1},
        {"subject_key": bytes(32)},
    ):
        assert not replace(CERT, **change).signature_ok(), change  # type: ignore[arg-type]


def test_issue_refuses_what_a_receiver_refuses() -> None:
    with pytest.raises(SchemaViolation):
        issue(
            ISSUER,
            serial="bad serial",
            subject_key=SUBJECT.public_key,
            not_before_ms=1,
            not_after_ms=2,
            purposes=["payment"],
        )
    with pytest.raises(SchemaViolation):
        issue(
            ISSUER,
            serial="s",
            subject_key=SUBJECT.public_key,
            not_before_ms=2,
            not_after_ms=2,
            purposes=["payment"],
        )


# ------------------------------------------------------------------ state records
def test_state_records_round_trip() -> None:
    anchor = TrustAnchor(ISSUER.public_key, "root", 5)
    assert decode_state_record(f"anchor.{ISSUER.public_key.hex()}", anchor.encode()) == anchor
    record = TrustCertRecord(CERT.encode(), True, "lost", 9)
    assert decode_state_record("cert.agent-0001", record.encode()) == StoredCert(
        CERT, True, "lost", 9
    )
    assert decode_state_record("key.abc", b"\x01\x02") == b"\x01\x02"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("anchor.00", TrustAnchor(ISSUER.public_key, "", 1).encode()),
        ("cert.other", TrustCertRecord(CERT.encode()).encode()),
        ("cert.agent-0001", TrustCertRecord(b"junk").encode()),
        ("cert.agent-0001", b"\xc1"),
        ("anchor.x", TrustCertRecord(CERT.encode()).encode()),
    ],
)
def test_malformed_state_records(key: str, value: bytes) -> None:
    with pytest.raises(CodecError):
        decode_state_record(key, value)


# ------------------------------------------------------------------ service messages
@pytest.mark.parametrize(
    "message",
    [
        AddCertRequest(CERT.encode()),
        ListRequest(),
        ValidateRequest(SUBJECT.public_key, "verifier", (CERT.encode(),), 7, 3),
        ValidateRequest(SUBJECT.public_key),
        TrustAck("add-cert", "cert.x", True, 4, "stored"),
        ChainReply(False, "CHAIN_LOOP", "link 2: loop", 2, (), 3, None, 9, 10),
        ChainReply(True, None, "ok", None, (CERT.encode(),), 1, 5, 9, 10),
        TrustListing(
            (TrustAnchor(ISSUER.public_key, "r", 1),), (TrustCertRecord(CERT.encode()),), 12, False
        ),
    ],
    ids=lambda m: type(m).__name__,
)
def test_messages_round_trip(message: Any) -> None:
    assert type(message).decode(message.encode()) == message
    if not isinstance(message, (AddCertRequest, ListRequest, ValidateRequest)):
        assert decode_trust_reply(message.encode()) == message


def test_validate_request_limits() -> None:
    base = ValidateRequest(SUBJECT.public_key).to_wire()
    for change, error in (
        ({"presented": [b"x"] * 17}, SchemaViolation),
        ({"presented": [b"x" * 1025]}, SchemaViolation),
        ({"presented": ["x"]}, SchemaViolation),
        ({"purpose": "steal"}, SchemaViolation),
        ({"now_ms": -1}, SchemaViolation),
        ({"v": 3}, UnsupportedVersion),
    ):
        with pytest.raises(error):
            ValidateRequest.from_wire({**base, **change})


def test_unexpected_reply_type() -> None:
    with pytest.raises(SchemaViolation):
        decode_trust_reply(ListRequest().encode())
