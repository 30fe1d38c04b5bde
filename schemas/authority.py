"""The authority coordinator's wire contract: authorities, quorum policies, endorsements.

An *authority* is an Ed25519 key with a name, a trust level (Untrusted < Low <
Medium < High < Root) and an active flag. A *quorum policy* says, for one
category of payment, which endorsements make a message acceptable:

* ``min_trust_level`` — endorsements from authorities below it are ignored;
* ``min_authorities`` and ``threshold`` (an exact fraction ``"n/d"``, never a
  float) — at least ``max(min_authorities, ceil(threshold × E))`` distinct
  counted authorities, E being the number of active authorities at or above
  ``min_trust_level``;
* ``groups`` (optional, nested k-of-n) — each group needs ``k`` *distinct*
  counted authorities that satisfy the group's own level and, if the group
  lists ``members``, are among them. One signer never fills two slots.

An *endorsement* is an authority's signature over
``DOMAIN_ENDORSEMENT || msgpack([1, category, message_digest])`` — the
category named by the request (not the policy it resolved to), so an
endorsement for one category is never accepted for another.

State records (``AuthorityRecord``, ``QuorumPolicy``) carry a ``serial`` that
must grow by one on every change; a change is endorsed over the SHA-256 of
the new record's exact bytes, so an old endorsed change cannot be replayed.
Everything here is pure: no I/O, no nats.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from schemas.codec import BALLOT_LIMITS, Limits, encode
from schemas.errors import SchemaViolation
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, AgentIdentity
from schemas.messages import (
    VERSION,
    WireMessage,
    _bool,
    _bytes,
    _enum,
    _header,
    _int,
    _list,
    _need,
    _str,
)

DOMAIN_ENDORSEMENT = b"agentic-payments/endorsement/v1\x00"
DIGEST_BYTES = 32
#: The policy used for a category that has none of its own.
DEFAULT_CATEGORY = "default"
#: The category whose policy governs every change of a policy or of the registry.
ADMIN_CATEGORY = "policy-admin"
#: Categories that never fall back to the default policy.
GOVERNANCE_CATEGORIES = frozenset({ADMIN_CATEGORY})
MAX_ENDORSEMENTS = 64
MAX_GROUPS = 16
MAX_GROUP_MEMBERS = 64
MAX_MIN_AUTHORITIES = 1024
MAX_NAME = 128
MAX_LISTED = 1024
_CATEGORY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FRACTION = re.compile(r"^([0-9]{1,9})/([0-9]{1,9})$")


class TrustLevel(enum.StrEnum):
    """Trust levels, lowest first; compare with :func:`rank`."""

    UNTRUSTED = "Untrusted"
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"
    ROOT = "Root"


LEVEL_ORDER: tuple[TrustLevel, ...] = tuple(TrustLevel)


def rank(level: str) -> int:
    return LEVEL_ORDER.index(TrustLevel(level))


def check_category(value: Any, name: str = "category") -> str:
    if not isinstance(value, str) or not _CATEGORY.match(value):
        raise SchemaViolation(f"{name} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def parse_fraction(text: Any, name: str = "threshold") -> Fraction:
    """``"n/d"`` in lowest terms with 0 < n <= d; anything else is a SchemaViolation."""
    if not isinstance(text, str):
        raise SchemaViolation(f'{name} must be a string like "2/3"')
    match = _FRACTION.match(text)
    if not match:
        raise SchemaViolation(f'{name} {text!r} must be an exact fraction "n/d", not a float')
    num, den = int(match.group(1)), int(match.group(2))
    if not 0 < num <= den or math.gcd(num, den) != 1:
        raise SchemaViolation(f"{name} {text!r} must be in lowest terms and in (0, 1]")
    return Fraction(num, den)


def format_fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def _key_list(obj: Any, name: str, max_len: int) -> tuple[bytes, ...]:
    items = _list(obj, name, max_len)
    out = []
    for item in items:
        if not isinstance(item, bytes) or len(item) != PUBLIC_KEY_BYTES:
            raise SchemaViolation(f"{name} items must be {PUBLIC_KEY_BYTES}-byte bin keys")
        out.append(item)
    if len(set(out)) != len(out):
        raise SchemaViolation(f"{name} lists a key twice")
    return tuple(out)


def _maps(obj: Any, name: str, max_len: int) -> list[dict[str, Any]]:
    items = _list(obj, name, max_len)
    for item in items:
        if not isinstance(item, dict):
            raise SchemaViolation(f"{name} items must be maps")
    return items


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class AuthorityRecord(WireMessage):
    """One authority (state key ``authority.<public key hex>``)."""

    public_key: bytes
    name: str
    trust_level: str
    active: bool
    serial: int = 1

    TYPE: ClassVar[str] = "authority_record"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "public_key",
        "name",
        "trust_level",
        "active",
        "serial",
    )

    def __post_init__(self) -> None:
        TrustLevel(self.trust_level)

    @property
    def level_rank(self) -> int:
        return rank(self.trust_level)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "public_key": self.public_key,
            "name": self.name,
            "trust_level": self.trust_level,
            "active": self.active,
            "serial": self.serial,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> AuthorityRecord:
        obj = _header(obj, cls.TYPE)
        return cls(
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            name=_str(obj, "name", MAX_NAME),
            trust_level=_enum(obj, "trust_level", TrustLevel).value,
            active=_bool(obj, "active"),
            serial=_int(obj, "serial", lo=1),
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class PolicyGroup:
    """A nested k-of-n group: ``k`` distinct counted authorities at ``min_trust_level``
    or above, drawn from ``members`` when it is not empty."""

    k: int
    min_trust_level: str = TrustLevel.UNTRUSTED.value
    members: tuple[bytes, ...] = ()
    name: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = ("name", "k", "min_trust_level", "members")

    def __post_init__(self) -> None:
        TrustLevel(self.min_trust_level)
        if not 1 <= self.k <= MAX_GROUP_MEMBERS:
            raise SchemaViolation(f"group k must be in 1..{MAX_GROUP_MEMBERS}")
        if self.members and self.k > len(self.members):
            raise SchemaViolation(f"group k={self.k} exceeds its {len(self.members)} members")

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "k": self.k,
            "min_trust_level": self.min_trust_level,
            "members": list(self.members),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> PolicyGroup:
        if not isinstance(obj, dict):
            raise SchemaViolation("a policy group must be a map")
        return cls(
            name=_str(obj, "name", 64, min_len=0),
            k=_int(obj, "k", lo=1, hi=MAX_GROUP_MEMBERS),
            min_trust_level=_enum(obj, "min_trust_level", TrustLevel).value,
            members=_key_list(obj, "members", MAX_GROUP_MEMBERS),
        )


@dataclass(frozen=True)
class QuorumPolicy(WireMessage):
    """The quorum policy of one category (state key ``policy.<category>``)."""

    category: str
    min_authorities: int
    min_trust_level: str
    threshold: Fraction
    groups: tuple[PolicyGroup, ...] = ()
    serial: int = 1

    TYPE: ClassVar[str] = "quorum_policy"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "category",
        "serial",
        "min_authorities",
        "min_trust_level",
        "threshold",
        "groups",
    )

    def __post_init__(self) -> None:
        check_category(self.category)
        TrustLevel(self.min_trust_level)
        if not 1 <= self.min_authorities <= MAX_MIN_AUTHORITIES:
            raise SchemaViolation(f"min_authorities must be in 1..{MAX_MIN_AUTHORITIES}")
        if not isinstance(self.threshold, Fraction) or not 0 < self.threshold <= 1:
            raise SchemaViolation("threshold must be a Fraction in (0, 1]")
        if len(self.groups) > MAX_GROUPS:
            raise SchemaViolation(f"at most {MAX_GROUPS} groups")
        if self.serial < 1:
            raise SchemaViolation("serial must be >= 1")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "category": self.category,
            "serial": self.serial,
            "min_authorities": self.min_authorities,
            "min_trust_level": self.min_trust_level,
            "threshold": format_fraction(self.threshold),
            "groups": [g.to_wire() for g in self.groups],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> QuorumPolicy:
        obj = _header(obj, cls.TYPE)
        return cls(
            category=check_category(_need(obj, "category")),
            serial=_int(obj, "serial", lo=1),
            min_authorities=_int(obj, "min_authorities", lo=1, hi=MAX_MIN_AUTHORITIES),
            min_trust_level=_enum(obj, "min_trust_level", TrustLevel).value,
            threshold=parse_fraction(_need(obj, "threshold")),
            groups=tuple(PolicyGroup.from_wire(g) for g in _maps(obj, "groups", MAX_GROUPS)),
        )

    def digest(self) -> bytes:
        """What a policy-admin endorsement of this exact policy signs."""
        return hashlib.sha256(self.encode()).digest()


# ------------------------------------------------------------------ endorsements


def endorsement_signing_bytes(category: str, message_digest: bytes) -> bytes:
    """``DOMAIN_ENDORSEMENT || msgpack([1, category (str), message_digest (bin 32)])``."""
    check_category(category)
    if len(message_digest) != DIGEST_BYTES:
        raise SchemaViolation(f"message_digest must be {DIGEST_BYTES} bytes")
    return DOMAIN_ENDORSEMENT + encode([1, category, message_digest])


def message_digest(message: bytes) -> bytes:
    """SHA-256 of the endorsed message bytes."""
    return hashlib.sha256(message).digest()


@dataclass(frozen=True)
class Endorsement(WireMessage):
    """An authority's signature over a (category, message digest) pair."""

    authority_key: bytes
    signature: bytes

    TYPE: ClassVar[str] = "endorsement"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "authority_key", "signature")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "authority_key": self.authority_key,
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Endorsement:
        obj = _header(obj, cls.TYPE)
        return cls(
            authority_key=_bytes(obj, "authority_key", exact=PUBLIC_KEY_BYTES),
            signature=_bytes(obj, "signature", exact=SIGNATURE_BYTES),
        )


def sign_endorsement(identity: AgentIdentity, category: str, digest: bytes) -> Endorsement:
    return Endorsement(
        identity.public_key, identity.sign(endorsement_signing_bytes(category, digest))
    )


def _endorsements(obj: Any) -> tuple[Endorsement, ...]:
    return tuple(Endorsement.from_wire(e) for e in _maps(obj, "endorsements", MAX_ENDORSEMENTS))


# ------------------------------------------------------------------ service requests


@dataclass(frozen=True)
class AuthorityChange(WireMessage):
    """Request of add / activate / deactivate / set-level: the proposed new record
    and policy-admin endorsements over its digest (none needed while no
    policy-admin policy exists: the bootstrap)."""

    record: AuthorityRecord
    endorsements: tuple[Endorsement, ...] = ()

    TYPE: ClassVar[str] = "authority_change"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "record", "endorsements")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "record": self.record.to_wire(),
            "endorsements": [e.to_wire() for e in self.endorsements],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> AuthorityChange:
        obj = _header(obj, cls.TYPE)
        return cls(
            record=AuthorityRecord.from_wire(_need(obj, "record")), endorsements=_endorsements(obj)
        )


@dataclass(frozen=True)
class PolicyChange(WireMessage):
    """Request of set-policy: the new policy and policy-admin endorsements over its digest."""

    policy: QuorumPolicy
    endorsements: tuple[Endorsement, ...] = ()

    TYPE: ClassVar[str] = "policy_change"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "policy", "endorsements")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "policy": self.policy.to_wire(),
            "endorsements": [e.to_wire() for e in self.endorsements],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> PolicyChange:
        obj = _header(obj, cls.TYPE)
        return cls(
            policy=QuorumPolicy.from_wire(_need(obj, "policy")), endorsements=_endorsements(obj)
        )


@dataclass(frozen=True)
class PolicyQuery(WireMessage):
    """Request of get-policy: the category's own policy (no default fallback)."""

    category: str

    TYPE: ClassVar[str] = "policy_get"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "category")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "category": self.category}

    @classmethod
    def from_wire(cls, obj: Any) -> PolicyQuery:
        obj = _header(obj, cls.TYPE)
        return cls(category=check_category(_need(obj, "category")))


@dataclass(frozen=True)
class ListRequest(WireMessage):
    """Request of list."""

    TYPE: ClassVar[str] = "authority_list_request"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION}

    @classmethod
    def from_wire(cls, obj: Any) -> ListRequest:
        _header(obj, cls.TYPE)
        return cls()


@dataclass(frozen=True)
class AuthorityList(WireMessage):
    """Reply of list: every authority and policy, and the state revision they are from."""

    authorities: tuple[AuthorityRecord, ...]
    policies: tuple[QuorumPolicy, ...]
    revision: int

    TYPE: ClassVar[str] = "authority_list"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "authorities", "policies", "revision")
    LIMITS: ClassVar[Limits] = BALLOT_LIMITS

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "authorities": [a.to_wire() for a in self.authorities],
            "policies": [p.to_wire() for p in self.policies],
            "revision": self.revision,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> AuthorityList:
        obj = _header(obj, cls.TYPE)
        return cls(
            authorities=tuple(
                AuthorityRecord.from_wire(a) for a in _list(obj, "authorities", MAX_LISTED)
            ),
            policies=tuple(QuorumPolicy.from_wire(p) for p in _list(obj, "policies", MAX_LISTED)),
            revision=_int(obj, "revision"),
        )


@dataclass(frozen=True)
class EvaluateRequest(WireMessage):
    """Request of evaluate: do these endorsements satisfy the category's policy?"""

    category: str
    message_digest: bytes
    endorsements: tuple[Endorsement, ...] = ()

    TYPE: ClassVar[str] = "policy_evaluate"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "category", "message_digest", "endorsements")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "category": self.category,
            "message_digest": self.message_digest,
            "endorsements": [e.to_wire() for e in self.endorsements],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> EvaluateRequest:
        obj = _header(obj, cls.TYPE)
        return cls(
            category=check_category(_need(obj, "category")),
            message_digest=_bytes(obj, "message_digest", exact=DIGEST_BYTES),
            endorsements=_endorsements(obj),
        )


class IgnoredReason(enum.StrEnum):
    """Why an endorsement was not counted (stable codes)."""

    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_AUTHORITY = "UNKNOWN_AUTHORITY"
    INACTIVE = "INACTIVE"
    BELOW_TRUST_LEVEL = "BELOW_TRUST_LEVEL"
    DUPLICATE = "DUPLICATE"


@dataclass(frozen=True)
class PolicyVerdict(WireMessage):
    """Reply of evaluate (a verdict, also when the policy is not met)."""

    ok: bool
    code: str
    reason: str
    category: str
    policy_category: str
    required: int
    counted: tuple[bytes, ...]
    ignored: tuple[tuple[bytes, str], ...]
    revision: int

    TYPE: ClassVar[str] = "policy_verdict"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "ok",
        "code",
        "reason",
        "category",
        "policy_category",
        "required",
        "counted",
        "ignored",
        "revision",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "ok": self.ok,
            "code": self.code,
            "reason": self.reason,
            "category": self.category,
            "policy_category": self.policy_category,
            "required": self.required,
            "counted": list(self.counted),
            "ignored": [{"authority_key": k, "reason": r} for k, r in self.ignored],
            "revision": self.revision,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> PolicyVerdict:
        obj = _header(obj, cls.TYPE)
        ignored = []
        for item in _maps(obj, "ignored", MAX_ENDORSEMENTS):
            ignored.append(
                (
                    _bytes(item, "authority_key", exact=PUBLIC_KEY_BYTES),
                    _enum(item, "reason", IgnoredReason).value,
                )
            )
        return cls(
            ok=_bool(obj, "ok"),
            code=_str(obj, "code", 64),
            reason=_str(obj, "reason", 1024, min_len=0),
            category=check_category(_need(obj, "category")),
            policy_category=_str(obj, "policy_category", 64, min_len=0),
            required=_int(obj, "required"),
            counted=_key_list(obj, "counted", MAX_ENDORSEMENTS),
            ignored=tuple(ignored),
            revision=_int(obj, "revision"),
        )


#: The request type each service operation accepts.
OPERATIONS: dict[str, type[WireMessage]] = {
    "add": AuthorityChange,
    "activate": AuthorityChange,
    "deactivate": AuthorityChange,
    "set-level": AuthorityChange,
    "set-policy": PolicyChange,
    "get-policy": PolicyQuery,
    "list": ListRequest,
    "evaluate": EvaluateRequest,
}

ALL_AUTHORITY_MESSAGES: tuple[type[WireMessage], ...] = (
    AuthorityRecord,
    QuorumPolicy,
    Endorsement,
    AuthorityChange,
    PolicyChange,
    PolicyQuery,
    ListRequest,
    AuthorityList,
    EvaluateRequest,
    PolicyVerdict,
)


# ------------------------------------------------------------------ state records


def decode_state_record(key: str, value: bytes) -> AuthorityRecord | QuorumPolicy | None:
    """Decode a ``{prefix}_state`` record of the authority areas.

    ``authority.<hex>`` gives an AuthorityRecord whose key matches the name,
    ``policy.<category>`` a QuorumPolicy of that category; a malformed one
    raises CodecError. Keys of other areas give None (not ours to judge).
    """
    area, _, name = key.partition(".")
    if area == "authority":
        record = AuthorityRecord.decode(value)
        if record.public_key.hex() != name:
            raise SchemaViolation(f"record under {key!r} is for {record.public_key.hex()}")
        return record
    if area == "policy":
        policy = QuorumPolicy.decode(value)
        if policy.category != name:
            raise SchemaViolation(f"policy under {key!r} is for category {policy.category!r}")
        return policy
    return None
