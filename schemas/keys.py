"""The key manager's wire contract: requests, replies, the stored record, the
public key status every verifier reads, and the revocation event.

Three kinds of data, three places:

* ``KeyRecord`` — the full key (policy, every version, each version's seed
  sealed with SecretBox under the master key) in the key manager's own bucket
  ``{prefix}_keys``, key = key name. Private; only the key manager reads it.
* ``KeyStatus`` — one public record per key *version* (each version is its own
  Ed25519 public key) in the shared verdict-state bucket ``{prefix}_state``
  under ``key.<public key hex>``. ``KeyStatus.refusal(now_ms)`` is what a
  verifier asks: ``None`` means a signature by this key may be accepted,
  otherwise one of :data:`REFUSAL_CODES`.
* ``KeyRequest`` / ``KeyInfo`` / ``KeySignature`` / ``KeyList`` /
  ``KeySweep`` — request/reply on ``{prefix}.keys.<op>`` (queue group
  ``keys``), and ``KeyRevoked`` on ``{prefix}.keys.event.revoked``.

Refusal codes (stable; a verifier reports them as its verdict reason), in the
order they are checked:

  KEY_DESTROYED         the key was deleted and its private material destroyed
  KEY_REVOKED           this version was revoked (``revoked_reason`` says why)
  KEY_DISABLED          the key is disabled (may be enabled again)
  KEY_PENDING_DELETION  the key is scheduled for destruction
  KEY_VERSION_RETIRED   this version is below the key's ``min_verify_version``
  KEY_EXPIRED           ``now_ms >= expires_at_ms`` (0 = never expires)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from schemas.codec import BALLOT_LIMITS, REQUEST_LIMITS, Limits, decode
from schemas.errors import KeyPolicyDenied, SchemaViolation
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from schemas.messages import (
    MAX_MESSAGE_BYTES,
    ErrorReply,
    WireMessage,
    _bool,
    _bytes,
    _enum,
    _header,
    _int,
    _list,
    _str,
    decode_reply,
)

VERSION = 1
MAX_NAME = 64
MAX_REASON = 256
#: Most versions one key keeps (rotation beyond it is refused with KEY_VERSION_INVALID).
MAX_VERSIONS = 1000
#: Most keys one ``list`` reply carries.
MAX_LIST = 1000
#: A sealed seed: 24-byte nonce + 16-byte MAC + 32-byte seed.
SEALED_SEED_BYTES = 72
INT_MAX = 2**63 - 1
#: The stored record holds up to MAX_VERSIONS versions of ~200 bytes each.
RECORD_LIMITS = Limits(max_bytes=1024 * 1024, max_array=MAX_VERSIONS, max_map=32)
#: A list reply holds up to MAX_LIST keys.
REPLY_LIMITS = BALLOT_LIMITS


class KeyPurpose(enum.StrEnum):
    AGENT_IDENTITY = "agent_identity"
    CERTIFICATE_SIGNING = "certificate_signing"
    DOCUMENT_SIGNING = "document_signing"
    AUTHENTICATION = "authentication"


#: Every signing domain tag of this project starts with these bytes (votes,
#: certificates, trust certificates, endorsements, alerts, key revocations, and any
#: tag added later: tests/unit/test_keys_sign.py checks each module's DOMAIN_*).
PROJECT_DOMAIN_ROOT = b"agentic-payments/"
#: What the key manager signs with a ``document_signing`` key: this tag || message, so
#: a document signature can never be a payment authorization or a protocol message.
DOMAIN_DOCUMENT = b"agentic-payments/document/v1\x00"
#: Purposes ``sign`` serves, and the domain tag it prepends to the message (b"": the
#: message as is, which is what verifiers check for a payment authorization).
#: ``certificate_signing`` and ``authentication`` keys have no operation yet that
#: signs their own typed bytes, so ``sign`` refuses them (KEY_POLICY_DENIED) rather
#: than let them sign a payment authorization or any other protocol's message.
SIGN_DOMAINS: Mapping[str, bytes] = {
    KeyPurpose.AGENT_IDENTITY.value: b"",
    KeyPurpose.DOCUMENT_SIGNING.value: DOMAIN_DOCUMENT,
}


def signing_payload(purpose: str, message: bytes) -> bytes:
    """The exact bytes the key manager signs for ``sign`` with a key of ``purpose``.

    * ``agent_identity``: ``message`` itself (a payment authorization, checked by the
      verifiers as is), refused if it starts with PROJECT_DOMAIN_ROOT: such bytes are
      some protocol's signed message (a vote, a certificate, a member record, a ballot)
      and an agent key must never produce one;
    * ``document_signing``: ``DOMAIN_DOCUMENT || message`` (any message);
    * any other purpose: refused.

    Raises KeyPolicyDenied (KEY_POLICY_DENIED) for a refusal.
    """
    domain = SIGN_DOMAINS.get(purpose)
    if domain is None:
        allowed = ", ".join(SIGN_DOMAINS)
        raise KeyPolicyDenied(f"a {purpose} key does not sign messages (sign serves: {allowed})")
    if not domain and message.startswith(PROJECT_DOMAIN_ROOT):
        raise KeyPolicyDenied(
            "the message starts with a signing domain of this project "
            f"({PROJECT_DOMAIN_ROOT.decode()}...); an {purpose} key does not sign protocol messages"
        )
    return domain + message


class KeyState(enum.StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    DESTROYED = "Destroyed"


class Refusal(enum.StrEnum):
    DESTROYED = "KEY_DESTROYED"
    REVOKED = "KEY_REVOKED"
    DISABLED = "KEY_DISABLED"
    PENDING_DELETION = "KEY_PENDING_DELETION"
    VERSION_RETIRED = "KEY_VERSION_RETIRED"
    EXPIRED = "KEY_EXPIRED"


REFUSAL_CODES: tuple[str, ...] = tuple(r.value for r in Refusal)

#: Operations on ``{prefix}.keys.<op>`` and the request fields each takes
#: (required, optional). Every request is a ``key_request`` map.
OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "create": (
        frozenset({"name", "purpose"}),
        frozenset(
            {"auto_rotate_period_s", "expires_after_s", "deletion_allowed", "deletion_wait_s"}
        ),
    ),
    "rotate": (frozenset({"name"}), frozenset()),
    "revoke": (frozenset({"name", "reason"}), frozenset({"version"})),
    "disable": (frozenset({"name"}), frozenset()),
    "enable": (frozenset({"name"}), frozenset()),
    "delete": (frozenset({"name"}), frozenset()),
    "get": (frozenset({"name"}), frozenset()),
    "list": (frozenset(), frozenset()),
    "sign": (frozenset({"name", "message"}), frozenset({"version"})),
    "config": (
        frozenset({"name"}),
        frozenset(
            {
                "min_verify_version",
                "min_sign_version",
                "auto_rotate_period_s",
                "expires_after_s",
                "deletion_allowed",
                "deletion_wait_s",
            }
        ),
    ),
    "sweep": (frozenset(), frozenset()),
}
REQUEST_FIELDS = (
    "type",
    "v",
    "name",
    "purpose",
    "reason",
    "version",
    "message",
    "min_verify_version",
    "min_sign_version",
    "auto_rotate_period_s",
    "expires_after_s",
    "deletion_allowed",
    "deletion_wait_s",
)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def check_key_name(name: str) -> str:
    """A key name: 1-64 characters of A-Z a-z 0-9 _ - . (it is a KV key, so also one
    nats-py and nats-server accept: no '.' first or last and no '..', which would be
    an empty subject token; the wire fuzz found ``agent-.`` answered INTERNAL)."""
    if (
        not 1 <= len(name) <= MAX_NAME
        or not set(name) <= _NAME_CHARS
        or name[0] == "."
        or name[-1] == "."
        or ".." in name
    ):
        raise SchemaViolation(
            f"key name must be 1..{MAX_NAME} characters of A-Z a-z 0-9 _ - . "
            "with no '.' first, last or twice in a row"
        )
    return name


def _opt_int(
    obj: Mapping[str, Any], name: str, default: int = 0, *, lo: int = 0, hi: int = INT_MAX
) -> int:
    return _int(obj, name, lo=lo, hi=hi) if name in obj else default


# --------------------------------------------------------------------- requests


@dataclass(frozen=True)
class KeyRequest(WireMessage):
    """One request to the key manager; which fields matter depends on the op.

    Durations are whole seconds, 0 meaning "off" (no auto-rotation, no
    expiry). ``version`` 0 means "the latest" (sign) or "every version"
    (revoke).
    """

    name: str = ""
    purpose: str = ""
    reason: str = ""
    version: int = 0
    message: bytes = b""
    min_verify_version: int | None = None
    min_sign_version: int | None = None
    auto_rotate_period_s: int | None = None
    expires_after_s: int | None = None
    deletion_allowed: bool | None = None
    deletion_wait_s: int | None = None

    TYPE: ClassVar[str] = "key_request"
    FIELDS: ClassVar[tuple[str, ...]] = REQUEST_FIELDS

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "v": VERSION}
        if self.name:
            wire["name"] = self.name
        if self.purpose:
            wire["purpose"] = self.purpose
        if self.reason:
            wire["reason"] = self.reason
        if self.version:
            wire["version"] = self.version
        if self.message:
            wire["message"] = self.message
        for opt in (
            "min_verify_version",
            "min_sign_version",
            "auto_rotate_period_s",
            "expires_after_s",
            "deletion_allowed",
            "deletion_wait_s",
        ):
            value = getattr(self, opt)
            if value is not None:
                wire[opt] = value
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> KeyRequest:
        return cls.for_op("", obj)

    @classmethod
    def for_op(cls, op: str, obj: Any) -> KeyRequest:
        """Validate every field present; with ``op``, also the op's required fields."""
        obj = _header(obj, cls.TYPE)
        if op:
            if op not in OPS:
                raise SchemaViolation(f"unknown key operation {op!r}")
            required, optional = OPS[op]
            missing = sorted(f for f in required if f not in obj)
            if missing:
                raise SchemaViolation(f"{op} needs field(s) {', '.join(missing)}")
            extra = sorted(
                f for f in set(obj) & set(REQUEST_FIELDS[2:]) if f not in required | optional
            )
            if extra:
                raise SchemaViolation(f"{op} does not take field(s) {', '.join(extra)}")
        name = check_key_name(_str(obj, "name", MAX_NAME)) if "name" in obj else ""
        purpose = _enum(obj, "purpose", KeyPurpose).value if "purpose" in obj else ""
        reason = _str(obj, "reason", MAX_REASON) if "reason" in obj else ""
        message = _bytes(obj, "message", max_len=MAX_MESSAGE_BYTES) if "message" in obj else b""

        def opt(name: str, lo: int = 0) -> int | None:
            return _int(obj, name, lo=lo, hi=INT_MAX // 1000) if name in obj else None

        return cls(
            name=name,
            purpose=purpose,
            reason=reason,
            version=_opt_int(obj, "version", hi=MAX_VERSIONS),
            message=message,
            min_verify_version=opt("min_verify_version", 1),
            min_sign_version=opt("min_sign_version", 1),
            auto_rotate_period_s=opt("auto_rotate_period_s"),
            expires_after_s=opt("expires_after_s"),
            deletion_allowed=_bool(obj, "deletion_allowed") if "deletion_allowed" in obj else None,
            deletion_wait_s=opt("deletion_wait_s"),
        )

    @classmethod
    def decode_for(cls, op: str, data: bytes) -> KeyRequest:
        return cls.for_op(op, decode(data, REQUEST_LIMITS))


# --------------------------------------------------------------------- stored record


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key. ``sealed_seed`` is empty once revoked or destroyed."""

    version: int
    public_key: bytes
    sealed_seed: bytes
    created_at_ms: int
    expires_at_ms: int = 0
    revoked_at_ms: int = 0
    revoked_reason: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms > 0

    def public_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "public_key": self.public_key,
            "created_at_ms": self.created_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "revoked_at_ms": self.revoked_at_ms,
            "revoked_reason": self.revoked_reason,
        }

    def to_wire(self) -> dict[str, Any]:
        return {**self.public_wire(), "sealed_seed": self.sealed_seed}

    @classmethod
    def from_wire(cls, obj: Any, *, private: bool = True) -> KeyVersion:
        if not isinstance(obj, dict):
            raise SchemaViolation("a key version must be a map")
        sealed = b""
        if private:
            sealed = _bytes(obj, "sealed_seed", max_len=SEALED_SEED_BYTES)
            if sealed and len(sealed) != SEALED_SEED_BYTES:
                raise SchemaViolation(f"sealed_seed must be {SEALED_SEED_BYTES} bytes or empty")
        reason = _str(obj, "revoked_reason", MAX_REASON, min_len=0)
        return cls(
            version=_int(obj, "version", lo=1, hi=MAX_VERSIONS),
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            sealed_seed=sealed,
            created_at_ms=_int(obj, "created_at_ms"),
            expires_at_ms=_int(obj, "expires_at_ms"),
            revoked_at_ms=_int(obj, "revoked_at_ms"),
            revoked_reason=reason,
        )


@dataclass(frozen=True)
class KeyPolicy:
    """What may happen to a key; durations in milliseconds, 0 = off."""

    min_verify_version: int = 1
    min_sign_version: int = 1
    auto_rotate_period_ms: int = 0
    expires_after_ms: int = 0
    deletion_allowed: bool = False
    deletion_wait_ms: int = 24 * 3600 * 1000

    def to_wire(self) -> dict[str, Any]:
        return {
            "min_verify_version": self.min_verify_version,
            "min_sign_version": self.min_sign_version,
            "auto_rotate_period_ms": self.auto_rotate_period_ms,
            "expires_after_ms": self.expires_after_ms,
            "deletion_allowed": self.deletion_allowed,
            "deletion_wait_ms": self.deletion_wait_ms,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> KeyPolicy:
        return cls(
            min_verify_version=_int(obj, "min_verify_version", lo=1, hi=MAX_VERSIONS),
            min_sign_version=_int(obj, "min_sign_version", lo=1, hi=MAX_VERSIONS),
            auto_rotate_period_ms=_int(obj, "auto_rotate_period_ms"),
            expires_after_ms=_int(obj, "expires_after_ms"),
            deletion_allowed=_bool(obj, "deletion_allowed"),
            deletion_wait_ms=_int(obj, "deletion_wait_ms"),
        )


@dataclass(frozen=True)
class KeyRecord:
    """The whole key as the key manager stores it (``{prefix}_keys``, key = name)."""

    name: str
    purpose: str
    state: str
    created_at_ms: int
    policy: KeyPolicy
    versions: tuple[KeyVersion, ...]
    deletion_due_ms: int = 0
    updated_at_ms: int = 0

    TYPE: ClassVar[str] = "key_record"

    @property
    def latest(self) -> KeyVersion:
        return self.versions[-1]

    def version(self, number: int) -> KeyVersion | None:
        if 1 <= number <= len(self.versions):
            return self.versions[number - 1]
        return None

    def _common_wire(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "name": self.name,
            "purpose": self.purpose,
            "state": self.state,
            "created_at_ms": self.created_at_ms,
            "deletion_due_ms": self.deletion_due_ms,
            "updated_at_ms": self.updated_at_ms,
            **self.policy.to_wire(),
        }

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            **self._common_wire(),
            "versions": [v.to_wire() for v in self.versions],
        }

    def encode(self) -> bytes:
        from schemas.codec import encode

        return encode(self.to_wire())

    @classmethod
    def from_wire(
        cls, obj: Any, *, type_name: str = "key_record", private: bool = True
    ) -> KeyRecord:
        obj = _header(obj, type_name)
        versions = tuple(
            KeyVersion.from_wire(v, private=private)
            for v in _list(obj, "versions", MAX_VERSIONS, min_len=1)
        )
        for i, ver in enumerate(versions, start=1):
            if ver.version != i:
                raise SchemaViolation("versions must be numbered 1, 2, 3 ... in order")
        return cls(
            name=check_key_name(_str(obj, "name", MAX_NAME)),
            purpose=_enum(obj, "purpose", KeyPurpose).value,
            state=_enum(obj, "state", KeyState).value,
            created_at_ms=_int(obj, "created_at_ms"),
            policy=KeyPolicy.from_wire(obj),
            versions=versions,
            deletion_due_ms=_int(obj, "deletion_due_ms"),
            updated_at_ms=_int(obj, "updated_at_ms"),
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyRecord:
        return cls.from_wire(decode(data, RECORD_LIMITS))

    def info(self) -> KeyInfo:
        """What a client may see: everything but the sealed seeds."""
        return KeyInfo(
            record=KeyRecord(
                name=self.name,
                purpose=self.purpose,
                state=self.state,
                created_at_ms=self.created_at_ms,
                policy=self.policy,
                versions=tuple(replace(v, sealed_seed=b"") for v in self.versions),
                deletion_due_ms=self.deletion_due_ms,
                updated_at_ms=self.updated_at_ms,
            )
        )


# --------------------------------------------------------------------- public status


@dataclass(frozen=True)
class KeyStatus(WireMessage):
    """The public status of one key version, in ``{prefix}_state`` at
    ``key.<public key hex>``; what a verifier consults.

    ``verify_allowed`` is ``version >= min_verify_version`` at the time of
    writing; ``source_revision`` is the revision of the key manager's private
    record this status was derived from, so a stale writer never overwrites a
    newer status.
    """

    public_key: bytes
    name: str
    version: int
    purpose: str
    state: str
    verify_allowed: bool
    created_at_ms: int
    expires_at_ms: int
    revoked_at_ms: int
    revoked_reason: str
    updated_at_ms: int
    source_revision: int

    TYPE: ClassVar[str] = "key_status"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "public_key",
        "name",
        "version",
        "purpose",
        "state",
        "verify_allowed",
        "created_at_ms",
        "expires_at_ms",
        "revoked",
        "revoked_at_ms",
        "revoked_reason",
        "updated_at_ms",
        "source_revision",
    )

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms > 0

    def refusal(self, now_ms: int) -> str | None:
        """None if a signature by this key may be accepted at ``now_ms``, else a code."""
        if self.state == KeyState.DESTROYED:
            return Refusal.DESTROYED.value
        if self.revoked:
            return Refusal.REVOKED.value
        if self.state == KeyState.DISABLED:
            return Refusal.DISABLED.value
        if self.state == KeyState.PENDING_DELETION:
            return Refusal.PENDING_DELETION.value
        if not self.verify_allowed:
            return Refusal.VERSION_RETIRED.value
        if self.expires_at_ms and now_ms >= self.expires_at_ms:
            return Refusal.EXPIRED.value
        return None

    def same_content(self, other: KeyStatus) -> bool:
        """Equal but for the bookkeeping fields (updated_at_ms, source_revision)."""
        return (
            self.public_key,
            self.name,
            self.version,
            self.purpose,
            self.state,
            self.verify_allowed,
            self.created_at_ms,
            self.expires_at_ms,
            self.revoked_at_ms,
            self.revoked_reason,
        ) == (
            other.public_key,
            other.name,
            other.version,
            other.purpose,
            other.state,
            other.verify_allowed,
            other.created_at_ms,
            other.expires_at_ms,
            other.revoked_at_ms,
            other.revoked_reason,
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "public_key": self.public_key,
            "name": self.name,
            "version": self.version,
            "purpose": self.purpose,
            "state": self.state,
            "verify_allowed": self.verify_allowed,
            "created_at_ms": self.created_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "revoked": self.revoked,
            "revoked_at_ms": self.revoked_at_ms,
            "revoked_reason": self.revoked_reason,
            "updated_at_ms": self.updated_at_ms,
            "source_revision": self.source_revision,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> KeyStatus:
        obj = _header(obj, cls.TYPE)
        status = cls(
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            name=check_key_name(_str(obj, "name", MAX_NAME)),
            version=_int(obj, "version", lo=1, hi=MAX_VERSIONS),
            purpose=_enum(obj, "purpose", KeyPurpose).value,
            state=_enum(obj, "state", KeyState).value,
            verify_allowed=_bool(obj, "verify_allowed"),
            created_at_ms=_int(obj, "created_at_ms"),
            expires_at_ms=_int(obj, "expires_at_ms"),
            revoked_at_ms=_int(obj, "revoked_at_ms"),
            revoked_reason=_str(obj, "revoked_reason", MAX_REASON, min_len=0),
            updated_at_ms=_int(obj, "updated_at_ms"),
            source_revision=_int(obj, "source_revision"),
        )
        if _bool(obj, "revoked") != status.revoked:
            raise SchemaViolation("revoked must be true exactly when revoked_at_ms > 0")
        return status


def decode_state_record(key: str, value: bytes) -> KeyStatus:
    """Decode a ``key.<public key hex>`` record of ``{prefix}_state`` (for a
    BucketMirror); the record must be for exactly the key it is stored under."""
    status = KeyStatus.decode(value)
    if key != f"key.{status.public_key.hex()}":
        raise SchemaViolation(f"key status for {status.public_key.hex()} stored under {key!r}")
    return status


# --------------------------------------------------------------------- replies, event


@dataclass(frozen=True)
class KeyInfo(WireMessage):
    """Reply to create/rotate/revoke/disable/enable/delete/get/config: the key
    with every version's public part (never the sealed seed)."""

    record: KeyRecord

    TYPE: ClassVar[str] = "key_info"
    LIMITS: ClassVar[Limits] = REPLY_LIMITS
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "name",
        "purpose",
        "state",
        "created_at_ms",
        "deletion_due_ms",
        "updated_at_ms",
        "min_verify_version",
        "min_sign_version",
        "auto_rotate_period_ms",
        "expires_after_ms",
        "deletion_allowed",
        "deletion_wait_ms",
        "versions",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            **self.record._common_wire(),
            "versions": [v.public_wire() for v in self.record.versions],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> KeyInfo:
        return cls(record=KeyRecord.from_wire(obj, type_name=cls.TYPE, private=False))

    def as_json(self) -> dict[str, Any]:
        rec = self.record
        return {
            "name": rec.name,
            "purpose": rec.purpose,
            "state": rec.state,
            "latest_version": rec.latest.version,
            "created_at_ms": rec.created_at_ms,
            "deletion_due_ms": rec.deletion_due_ms,
            **rec.policy.to_wire(),
            "versions": [
                {**v.public_wire(), "public_key": v.public_key.hex()} for v in rec.versions
            ],
        }


@dataclass(frozen=True)
class KeyList(WireMessage):
    """Reply to list: every key (sorted by name), as KeyInfo maps."""

    keys: tuple[KeyInfo, ...]

    TYPE: ClassVar[str] = "key_list"
    LIMITS: ClassVar[Limits] = REPLY_LIMITS
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "keys")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "keys": [k.to_wire() for k in self.keys]}

    @classmethod
    def from_wire(cls, obj: Any) -> KeyList:
        obj = _header(obj, cls.TYPE)
        return cls(keys=tuple(KeyInfo.from_wire(k) for k in _list(obj, "keys", MAX_LIST)))


@dataclass(frozen=True)
class KeySignature(WireMessage):
    """Reply to sign: an Ed25519 signature of ``signing_payload(purpose, message)`` (the
    message itself for an agent_identity key, DOMAIN_DOCUMENT || message for a
    document_signing key)."""

    name: str
    version: int
    public_key: bytes
    signature: bytes

    TYPE: ClassVar[str] = "key_signature"
    LIMITS: ClassVar[Limits] = REPLY_LIMITS
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "name", "version", "public_key", "signature")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "name": self.name,
            "version": self.version,
            "public_key": self.public_key,
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> KeySignature:
        obj = _header(obj, cls.TYPE)
        return cls(
            name=check_key_name(_str(obj, "name", MAX_NAME)),
            version=_int(obj, "version", lo=1, hi=MAX_VERSIONS),
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            signature=_bytes(obj, "signature", exact=SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class KeySweep(WireMessage):
    """Reply to sweep: keys rotated because of age, keys destroyed after their
    deletion wait, and public statuses (re)written."""

    rotated: tuple[str, ...] = ()
    destroyed: tuple[str, ...] = ()
    statuses_written: int = 0

    TYPE: ClassVar[str] = "key_sweep"
    LIMITS: ClassVar[Limits] = REPLY_LIMITS
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "rotated", "destroyed", "statuses_written")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "rotated": list(self.rotated),
            "destroyed": list(self.destroyed),
            "statuses_written": self.statuses_written,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> KeySweep:
        obj = _header(obj, cls.TYPE)

        def names(field_name: str) -> tuple[str, ...]:
            items = _list(obj, field_name, MAX_LIST)
            if not all(isinstance(n, str) for n in items):
                raise SchemaViolation(f"{field_name} must be key names")
            return tuple(check_key_name(n) for n in items)

        return cls(
            rotated=names("rotated"),
            destroyed=names("destroyed"),
            statuses_written=_int(obj, "statuses_written"),
        )


DOMAIN_KEY_REVOKED = b"agentic-payments/key-revoked/v1\x00"


@dataclass(frozen=True)
class KeyRevoked(WireMessage):
    """Event on ``{prefix}.keys.event.revoked``: one key version was revoked.

    Signed by the key manager's own Ed25519 identity (``signer``; also in its
    micro-service metadata as ``public_key``): ``sig`` is over
    DOMAIN_KEY_REVOKED || msgpack(every other field as a map with sorted keys).
    The authoritative state is the KeyStatus in ``{prefix}_state`` (written
    before this event is published); the event lets a listener react at once.
    """

    name: str
    version: int
    public_key: bytes
    reason: str
    revoked_at_ms: int
    worker_id: str
    signer: bytes = bytes(PUBLIC_KEY_BYTES)
    sig: bytes = bytes(SIGNATURE_BYTES)

    TYPE: ClassVar[str] = "key_revoked"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "name",
        "version",
        "public_key",
        "reason",
        "revoked_at_ms",
        "worker_id",
        "signer",
        "sig",
    )

    def _body(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "name": self.name,
            "version": self.version,
            "public_key": self.public_key,
            "reason": self.reason,
            "revoked_at_ms": self.revoked_at_ms,
            "worker_id": self.worker_id,
            "signer": self.signer,
        }

    def signing_bytes(self) -> bytes:
        from schemas.codec import encode

        body = self._body()
        return DOMAIN_KEY_REVOKED + encode({k: body[k] for k in sorted(body)})

    def signature_ok(self) -> bool:
        from schemas.identity import verify_signature

        return verify_signature(self.signer, self.signing_bytes(), self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {**self._body(), "sig": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> KeyRevoked:
        obj = _header(obj, cls.TYPE)
        return cls(
            name=check_key_name(_str(obj, "name", MAX_NAME)),
            version=_int(obj, "version", lo=1, hi=MAX_VERSIONS),
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            reason=_str(obj, "reason", MAX_REASON),
            revoked_at_ms=_int(obj, "revoked_at_ms", lo=1),
            worker_id=_str(obj, "worker_id", 64),
            signer=_bytes(obj, "signer", exact=PUBLIC_KEY_BYTES),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
        )


def decode_key_reply(data: bytes) -> KeyInfo | KeyList | KeySignature | KeySweep | ErrorReply:
    """Any answer of the key manager (``KeyClient.raw``, tests and tools)."""
    return decode_reply(data, KeyInfo, KeyList, KeySignature, KeySweep)


__all__ = [
    "DOMAIN_DOCUMENT",
    "DOMAIN_KEY_REVOKED",
    "OPS",
    "PROJECT_DOMAIN_ROOT",
    "REFUSAL_CODES",
    "SIGN_DOMAINS",
    "KeyInfo",
    "KeyList",
    "KeyPolicy",
    "KeyPurpose",
    "KeyRecord",
    "KeyRequest",
    "KeyRevoked",
    "KeySignature",
    "KeyState",
    "KeyStatus",
    "KeySweep",
    "KeyVersion",
    "Refusal",
    "decode_state_record",
    "signing_payload",
]
