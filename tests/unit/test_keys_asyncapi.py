"""The key manager's part of schemas/asyncapi.yaml matches schemas/keys.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from schemas.keys import (
    MAX_NAME,
    MAX_REASON,
    MAX_VERSIONS,
    OPS,
    RECORD_LIMITS,
    REFUSAL_CODES,
    KeyInfo,
    KeyList,
    KeyPolicy,
    KeyPurpose,
    KeyRecord,
    KeyRequest,
    KeyRevoked,
    KeySignature,
    KeyState,
    KeyStatus,
    KeySweep,
    KeyVersion,
)
from tests.unit.test_asyncapi import DOC, MESSAGES, SCHEMAS, schema_for

PK = bytes(range(32))
RECORD = KeyRecord(
    name="k",
    purpose="authentication",
    state="Enabled",
    created_at_ms=1,
    policy=KeyPolicy(),
    versions=(KeyVersion(1, PK, bytes(72), 1),),
)
SAMPLES: dict[type, Any] = {
    KeyRequest: KeyRequest(
        name="k",
        purpose="authentication",
        reason="r",
        version=1,
        message=b"m",
        min_verify_version=1,
        min_sign_version=1,
        auto_rotate_period_s=1,
        expires_after_s=1,
        deletion_allowed=True,
        deletion_wait_s=1,
    ),
    KeyInfo: RECORD.info(),
    KeyList: KeyList((RECORD.info(),)),
    KeySignature: KeySignature("k", 1, PK, bytes(64)),
    KeySweep: KeySweep(("a",), (), 1),
    KeyRevoked: KeyRevoked("k", 1, PK, "r", 2, "keys1", PK, bytes(64)),
    KeyStatus: KeyStatus(PK, "k", 1, "authentication", "Enabled", True, 1, 0, 0, "", 2, 3),
    KeyRecord: RECORD,
}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_properties_are_the_wire_fields(cls: type) -> None:
    schema = schema_for(cls)
    wire = msgpack.unpackb(SAMPLES[cls].encode())
    assert set(schema["properties"]) == set(wire)
    assert schema["properties"]["type"]["const"] == wire["type"]
    if hasattr(cls, "FIELDS"):
        assert set(schema["properties"]) == set(cls.FIELDS)
    if cls is KeyRequest:
        assert schema["required"] == ["type", "v"]
    else:
        assert set(schema["required"]) == set(wire)


def test_required_per_op() -> None:
    per_op = schema_for(KeyRequest)["x-required-per-op"]
    assert {op: set(fields) for op, fields in per_op.items()} == {
        op: set(req) for op, (req, _) in OPS.items()
    }
    assert DOC["components"]["parameters"]["keys_op"]["enum"] == list(OPS)


@pytest.mark.parametrize(
    ("schema", "prop"),
    [("KeyRequest", "purpose"), ("KeyInfo", "purpose"), ("KeyStatus", "purpose")],
)
def test_purpose_enum(schema: str, prop: str) -> None:
    assert SCHEMAS[schema]["properties"][prop]["enum"] == [p.value for p in KeyPurpose]


@pytest.mark.parametrize("schema", ["KeyInfo", "KeyStatus"])
def test_state_enum(schema: str) -> None:
    assert SCHEMAS[schema]["properties"]["state"]["enum"] == [s.value for s in KeyState]


def test_refusal_codes_and_limits() -> None:
    assert SCHEMAS["KeyStatus"]["x-refusal-codes"] == list(REFUSAL_CODES)
    assert DOC["x-codec-limits"]["key_record"] == dataclasses.asdict(RECORD_LIMITS)
    assert SCHEMAS["KeyRequest"]["properties"]["name"]["maxLength"] == MAX_NAME
    assert SCHEMAS["KeyRequest"]["properties"]["reason"]["maxLength"] == MAX_REASON
    assert SCHEMAS["KeyRequest"]["properties"]["version"]["maximum"] == MAX_VERSIONS
    assert SCHEMAS["KeyInfo"]["properties"]["versions"]["maxItems"] == MAX_VERSIONS


@pytest.mark.parametrize(
    "cls",
    [KeyRequest, KeyInfo, KeyList, KeySignature, KeySweep, KeyRevoked],
    ids=lambda c: c.__name__,
)
def test_message_limits(cls: Any) -> None:
    ref = f"#/components/schemas/{cls.__name__}"
    found = [m for m in MESSAGES.values() if m["payload"].get("$ref") == ref]
    assert len(found) == 1
    assert DOC["x-codec-limits"][found[0]["x-codec-limits"]] == dataclasses.asdict(cls.LIMITS)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_samples_round_trip(cls: Any) -> None:
    assert cls.decode(SAMPLES[cls].encode()) == SAMPLES[cls]


def test_document_domain_tag() -> None:
    from schemas.keys import DOMAIN_DOCUMENT

    domain = DOC["x-signing"]["domains"]["document"]
    assert bytes.fromhex(domain["hex"]) == DOMAIN_DOCUMENT
    assert domain["text"].replace("\\0", "\0").encode() == DOMAIN_DOCUMENT
    assert domain["python"] == "schemas.keys.DOMAIN_DOCUMENT"


def test_revocation_domain_tag() -> None:
    from schemas.keys import DOMAIN_KEY_REVOKED

    domain = DOC["x-signing"]["domains"]["key_revoked"]
    assert bytes.fromhex(domain["hex"]) == DOMAIN_KEY_REVOKED
    assert domain["text"].replace("\\0", "\0").encode() == DOMAIN_KEY_REVOKED
    assert domain["python"] == "schemas.keys.DOMAIN_KEY_REVOKED"
