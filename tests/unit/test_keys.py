"""Key manager pure logic: transitions, rotation/destruction due, refusal codes,
policy rules, strict decoding, sealing and the master key (no broker)."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

from schemas.errors import (
    CodecError,
    IdentityError,
    KeyPolicyDenied,
    KeyStateConflict,
    KeyVersionInvalid,
    MalformedPayload,
    MasterKeyInvalid,
    PayloadTooLarge,
    SchemaViolation,
    UnsupportedVersion,
)
from schemas.identity import verify_signature
from schemas.keys import (
    REFUSAL_CODES,
    KeyInfo,
    KeyList,
    KeyPolicy,
    KeyRecord,
    KeyRequest,
    KeyRevoked,
    KeySignature,
    KeyState,
    KeyStatus,
    KeySweep,
    decode_key_reply,
    decode_state_record,
)
from workers.keys import lifecycle as keypolicy
from workers.keys.crypto import MasterKey, parse_master_key, write_master_key

HOUR = 3600 * 1000
PK = bytes(range(32))
SEALED = bytes(72)


def record(
    state: str = "Enabled",
    *,
    versions: int = 1,
    created: int = 0,
    rotate_ms: int = 0,
    deletion: bool = False,
    due: int = 0,
    expires: int = 0,
    revoked: int = 0,
) -> KeyRecord:
    vers = tuple(
        keypolicy.KeyVersion(
            version=i,
            public_key=bytes([i]) * 32,
            sealed_seed=SEALED,
            created_at_ms=created + (i - 1),
            expires_at_ms=expires,
            revoked_at_ms=revoked if i == versions else 0,
            revoked_reason="r" if revoked and i == versions else "",
        )
        for i in range(1, versions + 1)
    )
    return KeyRecord(
        name="k",
        purpose="agent_identity",
        state=state,
        created_at_ms=created,
        policy=KeyPolicy(auto_rotate_period_ms=rotate_ms, deletion_allowed=deletion),
        versions=vers,
        deletion_due_ms=due,
    )


def status(**changes: Any) -> KeyStatus:
    base = KeyStatus(
        public_key=PK,
        name="k",
        version=1,
        purpose="agent_identity",
        state="Enabled",
        verify_allowed=True,
        created_at_ms=1,
        expires_at_ms=0,
        revoked_at_ms=0,
        revoked_reason="",
        updated_at_ms=2,
        source_revision=3,
    )
    return replace(base, **changes)


# ---------------------------------------------------------------- transitions
@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        ("Enabled", "disable", "Disabled"),
        ("Disabled", "disable", None),
        ("PendingDeletion", "disable", None),
        ("Disabled", "enable", "Enabled"),
        ("PendingDeletion", "enable", "Enabled"),
        ("Enabled", "enable", None),
        ("Destroyed", "enable", None),
        ("Enabled", "delete", "PendingDeletion"),
        ("Disabled", "delete", "PendingDeletion"),
        ("PendingDeletion", "delete", None),
        ("Destroyed", "delete", None),
        ("PendingDeletion", "destroy", "Destroyed"),
        ("Enabled", "destroy", None),
        ("Enabled", "rotate", "Enabled"),
        ("Disabled", "rotate", None),
        ("PendingDeletion", "rotate", None),
        ("Enabled", "sign", "Enabled"),
        ("Disabled", "sign", None),
        ("Destroyed", "sign", None),
        ("Disabled", "revoke", "Disabled"),
        ("PendingDeletion", "revoke", "PendingDeletion"),
        ("Destroyed", "revoke", None),
        ("Destroyed", "config", None),
        ("Disabled", "config", "Disabled"),
    ],
)
def test_transition(state: str, op: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(KeyStateConflict):
            keypolicy.transition(state, op)
    else:
        assert keypolicy.transition(state, op).value == expected


def test_delete_needs_policy_and_sets_due() -> None:
    with pytest.raises(KeyPolicyDenied):
        keypolicy.set_state(record(), "delete", 100)
    rec = keypolicy.set_state(record(deletion=True), "delete", 100)
    assert rec.state == "PendingDeletion"
    assert rec.deletion_due_ms == 100 + rec.policy.deletion_wait_ms
    with pytest.raises(KeyStateConflict):  # not due yet
        keypolicy.set_state(rec, "destroy", rec.deletion_due_ms - 1)
    gone = keypolicy.set_state(rec, "destroy", rec.deletion_due_ms)
    assert gone.state == "Destroyed" and all(v.sealed_seed == b"" for v in gone.versions)
    back = keypolicy.set_state(rec, "enable", 200)
    assert back.state == "Enabled" and back.deletion_due_ms == 0


# ---------------------------------------------------------------- rotation / destruction due
@pytest.mark.parametrize(
    ("rec", "now", "due"),
    [
        (record(rotate_ms=HOUR, created=0), HOUR - 1, False),
        (record(rotate_ms=HOUR, created=0), HOUR, True),
        (record(rotate_ms=HOUR, created=0), 5 * HOUR, True),
        (record(rotate_ms=0, created=0), 100 * HOUR, False),  # auto-rotation off
        (record("Disabled", rotate_ms=HOUR), 5 * HOUR, False),  # only Enabled keys
        (record("PendingDeletion", rotate_ms=HOUR), 5 * HOUR, False),
        (record("Destroyed", rotate_ms=HOUR), 5 * HOUR, False),
        (record(rotate_ms=HOUR, versions=3, created=0), HOUR + 1, False),  # latest is v3 (t=2)
        (record(rotate_ms=HOUR, versions=3, created=0), HOUR + 2, True),
        (record(rotate_ms=HOUR, expires=10), 11, True),  # latest expired
        (record(rotate_ms=HOUR, revoked=5), 6, True),  # latest revoked
        (record(rotate_ms=0, revoked=5), 6, False),
    ],
)
def test_rotation_due(rec: KeyRecord, now: int, due: bool) -> None:
    assert keypolicy.rotation_due(rec, now) is due
    assert keypolicy.due_for_rotation([rec], now) == (["k"] if due else [])


@pytest.mark.parametrize(
    ("rec", "now", "due"),
    [
        (record("PendingDeletion", deletion=True, due=50), 49, False),
        (record("PendingDeletion", deletion=True, due=50), 50, True),
        (record("PendingDeletion", deletion=False, due=50), 50, False),
        (record("Enabled", deletion=True, due=50), 99, False),
        (record("Destroyed", deletion=True, due=50), 99, False),
    ],
)
def test_destruction_due(rec: KeyRecord, now: int, due: bool) -> None:
    assert keypolicy.destruction_due(rec, now) is due
    assert keypolicy.due_for_destruction([rec], now) == (["k"] if due else [])


# ---------------------------------------------------------------- refusal codes
@pytest.mark.parametrize(
    ("changes", "now", "code"),
    [
        ({}, 10, None),
        ({"expires_at_ms": 100}, 99, None),
        ({"expires_at_ms": 100}, 100, "KEY_EXPIRED"),
        ({"verify_allowed": False}, 10, "KEY_VERSION_RETIRED"),
        ({"state": "Disabled"}, 10, "KEY_DISABLED"),
        ({"state": "PendingDeletion"}, 10, "KEY_PENDING_DELETION"),
        ({"state": "Destroyed"}, 10, "KEY_DESTROYED"),
        ({"revoked_at_ms": 5, "revoked_reason": "x"}, 10, "KEY_REVOKED"),
        # precedence: destroyed > revoked > disabled > pending > retired > expired
        ({"state": "Destroyed", "revoked_at_ms": 5}, 10, "KEY_DESTROYED"),
        ({"state": "Disabled", "revoked_at_ms": 5}, 10, "KEY_REVOKED"),
        ({"state": "Disabled", "verify_allowed": False}, 10, "KEY_DISABLED"),
        ({"verify_allowed": False, "expires_at_ms": 1}, 10, "KEY_VERSION_RETIRED"),
    ],
)
def test_refusal(changes: dict[str, Any], now: int, code: str | None) -> None:
    got = status(**changes).refusal(now)
    assert got == code
    assert got is None or got in REFUSAL_CODES


# ---------------------------------------------------------------- policy rules
def test_rotate_revoke_and_versions() -> None:
    rec = keypolicy.create(
        "k", "document_signing", KeyPolicy(expires_after_ms=HOUR), PK, SEALED, 1000
    )
    assert rec.latest.version == 1 and rec.latest.expires_at_ms == 1000 + HOUR
    rec = keypolicy.rotate(rec, bytes([9]) * 32, SEALED, 2000)
    assert [v.version for v in rec.versions] == [1, 2]
    rec, newly = keypolicy.revoke(rec, 1, "leaked", 3000)
    assert [v.version for v in newly] == [1] and rec.versions[0].revoked_reason == "leaked"
    assert rec.versions[0].sealed_seed == b"" and rec.versions[1].sealed_seed == SEALED
    rec, newly = keypolicy.revoke(rec, 0, "all", 4000)  # v1 keeps its first reason
    assert [v.version for v in newly] == [2]
    assert rec.versions[0].revoked_at_ms == 3000 and rec.versions[0].revoked_reason == "leaked"
    rec, newly = keypolicy.revoke(rec, 0, "again", 5000)
    assert newly == []
    with pytest.raises(KeyVersionInvalid):
        keypolicy.revoke(rec, 3, "no such", 6000)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"min_verify_version": 2, "min_sign_version": 2}, None),
        ({"min_sign_version": 3}, None),
        ({"min_verify_version": 4}, KeyVersionInvalid),  # beyond latest (3)
        ({"min_sign_version": 4}, KeyVersionInvalid),
        ({"min_verify_version": 3, "min_sign_version": 2}, KeyVersionInvalid),  # sign < verify
        ({"min_verify_version": 2}, KeyVersionInvalid),  # sign (1) would be < verify (2)
        ({"auto_rotate_period_s": 60, "deletion_allowed": True}, None),
    ],
)
def test_configure(settings: dict[str, Any], error: type[Exception] | None) -> None:
    rec = record(versions=3)
    req = KeyRequest(name="k", **settings)
    if error:
        with pytest.raises(error):
            keypolicy.configure(rec, req, 1)
        return
    out = keypolicy.configure(rec, req, 1)
    if "auto_rotate_period_s" in settings:
        assert out.policy.auto_rotate_period_ms == 60_000 and out.policy.deletion_allowed


def test_min_verify_version_cannot_go_down() -> None:
    rec = keypolicy.configure(
        record(versions=3), KeyRequest(min_verify_version=3, min_sign_version=3), 1
    )
    with pytest.raises(KeyVersionInvalid):
        keypolicy.configure(rec, KeyRequest(min_verify_version=2), 2)
    st = {s.version: s.verify_allowed for s in keypolicy.statuses(rec, 7, 9)}
    assert st == {1: False, 2: False, 3: True}


@pytest.mark.parametrize(
    ("rec", "version", "now", "expected"),
    [
        (record(versions=3), 0, 10, 3),
        (record(versions=3), 2, 10, 2),
        (record(versions=3), 4, 10, None),
        (record("Disabled", versions=3), 0, 10, KeyStateConflict),
        (record(versions=2, revoked=5), 0, 10, None),
        (record(versions=2, revoked=5), 1, 10, 1),
        (record(expires=10), 0, 10, None),
        (record(expires=10), 0, 9, 1),
        (
            replace(record(versions=3), policy=KeyPolicy(min_verify_version=2, min_sign_version=3)),
            2,
            10,
            None,
        ),
    ],
)
def test_signing_version(rec: KeyRecord, version: int, now: int, expected: Any) -> None:
    if expected is None:
        with pytest.raises(KeyVersionInvalid):
            keypolicy.signing_version(rec, version, now)
    elif isinstance(expected, type):
        with pytest.raises(expected):
            keypolicy.signing_version(rec, version, now)
    else:
        assert keypolicy.signing_version(rec, version, now).version == expected


# ---------------------------------------------------------------- strict decoding
def test_status_round_trip() -> None:
    st = status(revoked_at_ms=5, revoked_reason="leaked", expires_at_ms=9)
    assert KeyStatus.decode(st.encode()) == st
    assert msgpack.unpackb(st.encode())["revoked"] is True
    assert set(msgpack.unpackb(st.encode())) == set(KeyStatus.FIELDS)


def _status_wire(**changes: Any) -> bytes:
    wire = status().to_wire()
    for key, value in changes.items():
        if value is DROP:
            wire.pop(key)
        else:
            wire[key] = value
    return msgpack.packb(wire, use_bin_type=True)  # type: ignore[no-any-return]


DROP = object()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_status_wire(public_key=bytes(31)), SchemaViolation),
        (_status_wire(public_key=bytes(33)), SchemaViolation),
        (_status_wire(public_key="00" * 32), SchemaViolation),
        (_status_wire(v=2), UnsupportedVersion),
        (_status_wire(v=DROP), SchemaViolation),
        (_status_wire(type="key_record"), SchemaViolation),
        (_status_wire(state="Gone"), SchemaViolation),
        (_status_wire(purpose="fun"), SchemaViolation),
        (_status_wire(version=0), SchemaViolation),
        (_status_wire(version=True), SchemaViolation),
        (_status_wire(verify_allowed=1), SchemaViolation),
        (_status_wire(revoked=True), SchemaViolation),  # but revoked_at_ms is 0
        (_status_wire(name="bad name"), SchemaViolation),
        (_status_wire(expires_at_ms=DROP), SchemaViolation),
        (_status_wire(source_revision=-1), SchemaViolation),
        (b"\xc1", MalformedPayload),
        (b"", MalformedPayload),
        (b"\x00" * (300 * 1024), PayloadTooLarge),
    ],
)
def test_status_strict_decoding(data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        KeyStatus.decode(data)


def _req(**fields: Any) -> bytes:
    return msgpack.packb({"type": "key_request", "v": 1, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("op", "data", "error"),
    [
        ("create", _req(name="a", purpose="agent_identity"), None),
        ("create", _req(name="a"), SchemaViolation),  # purpose missing
        ("create", _req(name="a", purpose="agent_identity", reason="x"), SchemaViolation),  # extra
        ("create", _req(name="a b", purpose="agent_identity"), SchemaViolation),
        ("create", _req(name=".a", purpose="agent_identity"), SchemaViolation),
        ("create", _req(name="a" * 65, purpose="agent_identity"), SchemaViolation),
        ("create", _req(name="a", purpose="x"), SchemaViolation),
        (
            "create",
            _req(name="a", purpose="agent_identity", auto_rotate_period_s=-1),
            SchemaViolation,
        ),
        ("create", _req(name="a", purpose="agent_identity", deletion_allowed=1), SchemaViolation),
        ("sign", _req(name="a", message=b"m"), None),
        ("sign", _req(name="a", message="text"), SchemaViolation),
        ("sign", _req(name="a", message=b"m" * 65537), SchemaViolation),
        ("sign", _req(name="a"), SchemaViolation),
        ("revoke", _req(name="a", reason="r", version=2), None),
        ("revoke", _req(name="a", reason=""), SchemaViolation),
        ("revoke", _req(name="a", reason="r", version=-1), SchemaViolation),
        ("config", _req(name="a", min_verify_version=0), SchemaViolation),
        ("list", _req(), None),
        ("list", _req(name="a"), SchemaViolation),
        ("get", msgpack.packb({"type": "key_request", "v": 7, "name": "a"}), UnsupportedVersion),
        ("get", msgpack.packb({"type": "key_request", "name": "a"}), SchemaViolation),
        ("get", msgpack.packb({"type": "other", "v": 1, "name": "a"}), SchemaViolation),
        ("get", msgpack.packb(["a"]), SchemaViolation),
        ("get", b"\x81\xa1", MalformedPayload),
        ("nope", _req(), SchemaViolation),
    ],
)
def test_request_decoding(op: str, data: bytes, error: type[CodecError] | None) -> None:
    if error is None:
        req = KeyRequest.decode_for(op, data)
        assert KeyRequest.decode_for(op, req.encode()) == req
    else:
        with pytest.raises(error):
            KeyRequest.decode_for(op, data)


def test_record_round_trip_and_info_hides_seeds() -> None:
    rec = record(versions=2, revoked=3)
    assert KeyRecord.decode(rec.encode()) == rec
    info = rec.info()
    wire = msgpack.unpackb(info.encode())
    assert all("sealed_seed" not in v for v in wire["versions"])
    assert SEALED not in info.encode()
    assert decode_key_reply(info.encode()).record == info.record
    assert KeyList.decode(KeyList((info,)).encode()).keys[0].record == info.record


def test_record_versions_must_be_consecutive() -> None:
    rec = record(versions=2)
    rec = replace(rec, versions=(rec.versions[1],))
    with pytest.raises(SchemaViolation):
        KeyRecord.decode(rec.encode())


@pytest.mark.parametrize(
    "msg",
    [
        KeySignature("k", 2, PK, bytes(64)),
        KeySweep(("a",), ("b",), 3),
        KeyRevoked("k", 1, PK, "leaked", 5, "keys1", PK, bytes(64)),
    ],
)
def test_reply_round_trip(msg: Any) -> None:
    assert type(msg).decode(msg.encode()) == msg


# ---------------------------------------------------------------- master key and sealing
def test_parse_master_key() -> None:
    key = os.urandom(32)
    assert parse_master_key(key.hex()) == key
    assert parse_master_key(base64.b64encode(key).decode() + "\n") == key
    for bad in ("", "00" * 31, "zz" * 32, base64.b64encode(os.urandom(31)).decode()):
        with pytest.raises(MasterKeyInvalid):
            parse_master_key(bad)


def test_master_key_resolution(tmp_path: Path) -> None:
    default = tmp_path / "keys" / "master.key"
    master, created = MasterKey.resolve(None, default, env={})
    assert created and default.stat().st_mode & 0o777 == 0o600
    _, created_again = MasterKey.resolve(None, default, env={})
    assert not created_again
    with pytest.raises(MasterKeyInvalid):
        MasterKey.resolve(tmp_path / "missing.key", default, env={})
    with pytest.raises(MasterKeyInvalid):
        MasterKey.resolve(None, default, env={"AP_MASTER_KEY": "nothex"})
    loose = tmp_path / "loose.key"
    write_master_key(loose)
    loose.chmod(0o644)
    with pytest.raises(MasterKeyInvalid):
        MasterKey.resolve(None, default, env={"AP_MASTER_KEY_FILE": str(loose)})
    with pytest.raises(MasterKeyInvalid):
        write_master_key(loose)  # no silent overwrite
    assert "source" in repr(master) and default.read_text().strip() not in repr(master)


def test_seal_sign_and_wrong_master() -> None:
    master = MasterKey(bytearray(os.urandom(32)), "test")
    public, sealed = master.generate()
    assert len(sealed) == 72
    sig = master.sign(sealed, public, b"pay 10")
    assert verify_signature(public, b"pay 10", sig)
    other = MasterKey(bytearray(os.urandom(32)), "other")
    with pytest.raises(IdentityError):
        other.sign(sealed, public, b"pay 10")
    with pytest.raises(IdentityError):
        master.sign(sealed, bytes(32), b"pay 10")  # sealed seed is not this key's
    with pytest.raises(IdentityError):
        master.sign(b"", public, b"x")  # destroyed
    seed = master.open(sealed)
    assert bytes(seed) not in sealed  # encrypted at rest
    master.close()
    assert master._key == bytearray(32)  # wiped


def test_state_enum_values_are_documented_names() -> None:
    assert [s.value for s in KeyState] == ["Enabled", "Disabled", "PendingDeletion", "Destroyed"]
    assert KeyInfo.TYPE == "key_info"


def test_state_record_must_be_stored_under_its_own_key() -> None:
    st = status()
    assert decode_state_record(f"key.{PK.hex()}", st.encode()) == st
    with pytest.raises(SchemaViolation):
        decode_state_record(f"key.{bytes(32).hex()}", st.encode())
    with pytest.raises(SchemaViolation):
        decode_state_record(f"key.{PK.hex().upper()}", st.encode())


def test_revocation_event_signature() -> None:
    from schemas.identity import AgentIdentity
    from schemas.keys import DOMAIN_KEY_REVOKED

    ident = AgentIdentity.generate()
    event = KeyRevoked("k", 1, PK, "leaked", 5, "keys1", ident.public_key)
    event = replace(event, sig=ident.sign(event.signing_bytes()))
    assert event.signing_bytes().startswith(DOMAIN_KEY_REVOKED)
    back = KeyRevoked.decode(event.encode())
    assert back.signature_ok()
    for forged in (
        replace(back, version=2),
        replace(back, reason="x"),
        replace(back, signer=AgentIdentity.generate().public_key),
    ):
        assert not forged.signature_ok()
