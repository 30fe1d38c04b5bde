"""Decentralized NATS auth (operator mode): mint operator, account and user JWTs.

Pure: no I/O, no nats import (only the ``nkeys`` package, which nats-py uses
for nkey auth). A user JWT carries the same per-role permissions as the
server-config users (bus/permissions.py), so ``NATS_CREDS`` files and
``auth.conf`` users are two encodings of one rule set. Good enough for tests
and small deployments; larger ones use ``nsc`` and a resolver.

JWT: ``base64url(header).base64url(claims).base64url(ed25519 signature)``,
header ``{"typ":"JWT","alg":"ed25519-nkey"}``, signed by the issuer's nkey
(operator signs accounts and itself, an account signs its users).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys  # type: ignore[import-untyped]

from bus.permissions import ACCOUNT_SERVICES, permissions
from bus.subjects import Subjects

UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # JetStream for the account (streams, consumers, storage)
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class NKey:
    seed: str
    public: str

    @classmethod
    def generate(cls, prefix: int) -> NKey:
        seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        signature: bytes = nkeys.from_seed(bytearray(self.seed.encode())).sign(data)
        return signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(
    issuer: NKey, subject: str, name: str, nats: dict[str, Any], issued_at: int | None = None
) -> str:
    claims: dict[str, Any] = {
        "iat": issued_at if issued_at is not None else int(time.time()),
        "iss": issuer.public,
        "sub": subject,
        "name": name,
        "nats": nats,
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing = f"{header}.{_b64(json.dumps(claims, sort_keys=True).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


def operator_jwt(operator: NKey, name: str = "agentic-payments") -> str:
    return encode_jwt(operator, operator.public, name, {"type": "operator", "version": 2})


def account_jwt(
    operator: NKey,
    account: NKey,
    name: str,
    *,
    jetstream: bool = True,
    exports: bool = False,
    imports_from: str | None = None,
) -> str:
    """An account JWT signed by ``operator``.

    The deployment has two accounts (bus/permissions.py, "why the split"): DATA
    (``jetstream=True, exports=True``) owns every stream and exports ``$JS.API.>``
    and ``$KV.>``; APP (``jetstream=False, imports_from=<DATA public key>``) holds
    the users and imports both, so an API answer can never be stored in a stream.
    """
    limits = dict(UNLIMITED_ACCOUNT)
    if not jetstream:  # the system account and APP must not have JetStream
        for key in ("mem_storage", "disk_storage", "streams", "consumer"):
            limits.pop(key)
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits}
    if exports:
        nats["exports"] = [
            {"name": subject, "subject": subject, "type": "service"}
            | ({"response_type": rtype.capitalize()} if rtype else {})
            for subject, rtype in ACCOUNT_SERVICES
        ]
    if imports_from is not None:
        nats["imports"] = [
            {"name": subject, "subject": subject, "account": imports_from, "type": "service"}
            for subject, _ in ACCOUNT_SERVICES
        ]
    return encode_jwt(operator, account.public, name, nats)


def user_jwt(account: NKey, user_public: str, role: str, name: str, subjects: Subjects) -> str:
    """A user JWT with the role's permissions (bus/permissions.py) built in."""
    perms = permissions(role, name, subjects)
    nats: dict[str, Any] = {
        "type": "user",
        "version": 2,
        "subs": -1,
        "data": -1,
        "payload": -1,
        "pub": {"allow": list(perms.publish)},
        "sub": {"allow": list(perms.subscribe)},
    }
    if perms.allow_responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    return encode_jwt(account, user_public, name, nats)


def creds_file(user_jwt_text: str, user_seed: str) -> str:
    """The ``.creds`` text nats-py reads from NATS_CREDS."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt_text}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )


def operator_conf(operator_jwt_text: str, accounts: dict[str, str], system_account: str) -> str:
    """Server config lines trusting the operator, accounts preloaded (MEMORY resolver).

    ``system_account`` (a public account key, also in ``accounts``) is required
    for JetStream in operator mode.
    """
    if system_account not in accounts:
        raise ValueError("the system account must be one of the preloaded accounts")
    preload = "\n".join(f'  {pub}: "{jwt}"' for pub, jwt in accounts.items())
    return (
        f'operator: "{operator_jwt_text}"\nsystem_account: {system_account}\n'
        f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n"
    )
