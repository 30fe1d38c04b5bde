"""schemas.keys.signing_payload: the key manager's sign is purpose-checked and domain-tagged
(issue #10 hole 9d)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import schemas
from schemas.errors import KeyPolicyDenied
from schemas.keys import (
    DOMAIN_DOCUMENT,
    PROJECT_DOMAIN_ROOT,
    SIGN_DOMAINS,
    KeyPurpose,
    signing_payload,
)


def project_domains() -> dict[str, bytes]:
    """Every ``DOMAIN_*`` bytes constant of every schemas module."""
    found: dict[str, bytes] = {}
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("DOMAIN_") and isinstance(value, bytes):
                found[f"{info.name}.{name}"] = value
    return found


DOMAINS = project_domains()


def test_the_domain_table_is_not_empty() -> None:
    assert {"signing.DOMAIN_VOTE", "signing.DOMAIN_CERTIFICATE", "keys.DOMAIN_DOCUMENT"} <= set(
        DOMAINS
    )


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_project_domain_starts_with_the_root(name: str) -> None:
    """So refusing the root refuses every protocol message, tags added later included."""
    assert DOMAINS[name].startswith(PROJECT_DOMAIN_ROOT)
    assert DOMAINS[name].endswith(b"\x00")  # prefix-free: no tag is a prefix of another


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_an_agent_key_refuses_every_protocol_message(name: str) -> None:
    with pytest.raises(KeyPolicyDenied) as err:
        signing_payload("agent_identity", DOMAINS[name] + b"\x93\x01\x02\x03")
    assert err.value.code == "KEY_POLICY_DENIED"


@pytest.mark.parametrize(
    ("purpose", "message", "signed"),
    [
        ("agent_identity", b"pay 12.50 EUR", b"pay 12.50 EUR"),
        ("agent_identity", b"", b""),
        ("agent_identity", b"agentic-payments", b"agentic-payments"),  # not the root itself
        ("agent_identity", b"Agentic-payments/vote/v1\x00", b"Agentic-payments/vote/v1\x00"),
        ("document_signing", b"contract v3", DOMAIN_DOCUMENT + b"contract v3"),
        # tagged, so even protocol-looking bytes cannot be mistaken for a protocol message
        (
            "document_signing",
            b"agentic-payments/vote/v1\x00",
            DOMAIN_DOCUMENT + b"agentic-payments/vote/v1\x00",
        ),
        ("document_signing", b"", DOMAIN_DOCUMENT),
    ],
)
def test_signed_bytes(purpose: str, message: bytes, signed: bytes) -> None:
    assert signing_payload(purpose, message) == signed


@pytest.mark.parametrize(
    ("purpose", "message", "needle"),
    [
        ("agent_identity", b"agentic-payments/", "signing domain"),
        ("agent_identity", b"agentic-payments/anything-new/v9\x00x", "signing domain"),
        ("certificate_signing", b"pay 1", "does not sign messages"),
        ("authentication", b"challenge", "does not sign messages"),
        ("", b"pay 1", "does not sign messages"),
    ],
)
def test_refused(purpose: str, message: bytes, needle: str) -> None:
    with pytest.raises(KeyPolicyDenied, match=needle):
        signing_payload(purpose, message)


def test_every_purpose_is_decided() -> None:
    """A new purpose must be added to SIGN_DOMAINS deliberately (or stays refused)."""
    assert set(SIGN_DOMAINS) <= {p.value for p in KeyPurpose}
    assert set(SIGN_DOMAINS) == {"agent_identity", "document_signing"}
