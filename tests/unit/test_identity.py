from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.errors import IdentityError, InsecureKeyFile
from schemas.identity import (
    AgentIdentity,
    b58decode,
    b58encode,
    did_key,
    public_key_from_did,
    verify_signature,
)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"hello world", "StV1DL6CwTryKyV"),
        (b"\x00\x00\x01", "112"),
        (b"", ""),
        (bytes.fromhex("0000287fb4cd"), "11233QC4"),
    ],
)
def test_base58_known_vectors(raw: bytes, text: str) -> None:
    assert b58encode(raw) == text
    assert b58decode(text) == raw


def test_did_key_form_and_roundtrip() -> None:
    ident = AgentIdentity.generate()
    assert ident.did.startswith("did:key:z6Mk")  # 0xed01 prefix always encodes to z6Mk
    assert public_key_from_did(ident.did) == ident.public_key
    assert did_key(ident.public_key) == ident.did
    with pytest.raises(IdentityError):
        public_key_from_did("did:key:zQ3s")
    with pytest.raises(IdentityError):
        did_key(b"short")


def test_sign_verify_and_repr_hides_key() -> None:
    ident = AgentIdentity.generate()
    sig = ident.sign(b"pay")
    assert ident.verify(b"pay", sig) and not ident.verify(b"pax", sig)
    assert verify_signature(ident.public_key, b"pay", sig)
    assert not verify_signature(ident.public_key, b"pay", sig[:63])
    assert not verify_signature(ident.public_key[:31], b"pay", sig)
    assert "did:key" in repr(ident)


def test_save_load_0600_and_refuse_world_readable(tmp_path: Path) -> None:
    ident = AgentIdentity.generate()
    path = ident.save(tmp_path / "k" / "agent.key")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert AgentIdentity.load(path).public_key == ident.public_key
    os.chmod(path, 0o644)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        AgentIdentity.load(path)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        AgentIdentity.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("nope")
    os.chmod(bad, 0o600)
    with pytest.raises(IdentityError, match="not an agentic-payments key file"):
        AgentIdentity.load(bad)


def test_load_or_create_is_stable(tmp_path: Path) -> None:
    a = AgentIdentity.load_or_create(tmp_path / "v.key")
    b = AgentIdentity.load_or_create(tmp_path / "v.key")
    assert a.public_key == b.public_key
