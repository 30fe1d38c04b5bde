"""Message types on the wire, as frozen dataclasses.

Every message is a MessagePack map with string keys, a ``type`` and a version
``v``. ``from_wire`` validates types and lengths strictly and raises a
``CodecError`` subclass with a message that names the field; ``to_wire``
produces the map. ``decode_*`` helpers combine the size-limited codec with
validation. The field lists here are what ``schemas/asyncapi.yaml`` documents
(a test keeps the two in sync through ``FIELDS``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar, TypeVar, overload

from schemas.codec import BALLOT_LIMITS, REQUEST_LIMITS, Limits, decode, encode
from schemas.errors import SchemaViolation, UnsupportedVersion
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

VERSION = 1
MAX_REQUEST_ID = 128
MAX_MESSAGE_BYTES = 64 * 1024
MAX_METADATA_ENTRIES = 32
MAX_BALLOT_REQUESTS = 1024
MAX_COUNTERS = 128
DIGEST_BYTES = 32
MAX_CHAIN_CERTS = 16
MAX_CERT_BYTES = 4096
MAX_ENDORSEMENTS = 32
MAX_CATEGORY = 64


class VerdictReason(enum.StrEnum):
    """Why a verifier said valid or invalid for one request (stable codes)."""

    OK = "OK"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    BAD_KEY_LENGTH = "BAD_KEY_LENGTH"
    BAD_SIGNATURE_LENGTH = "BAD_SIGNATURE_LENGTH"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"
    SHUTTING_DOWN = "ShuttingDown"


# --------------------------------------------------------------------- helpers


def _need(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise SchemaViolation(f"missing field {name!r}")
    return obj[name]


def _str(obj: Mapping[str, Any], name: str, max_len: int, *, min_len: int = 1) -> str:
    value = _need(obj, name)
    if not isinstance(value, str):
        raise SchemaViolation(f"{name} must be a string")
    if not min_len <= len(value) <= max_len:
        raise SchemaViolation(f"{name} must be {min_len}..{max_len} characters, got {len(value)}")
    if not value.isprintable():
        raise SchemaViolation(f"{name} must not contain control characters")
    return value


def _bytes(
    obj: Mapping[str, Any], name: str, *, exact: int | None = None, max_len: int = MAX_MESSAGE_BYTES
) -> bytes:
    value = _need(obj, name)
    if not isinstance(value, bytes):
        raise SchemaViolation(f"{name} must be MessagePack bin, got {type(value).__name__}")
    if exact is not None and len(value) != exact:
        raise SchemaViolation(f"{name} must be {exact} bytes, got {len(value)}")
    if len(value) > max_len:
        raise SchemaViolation(f"{name} is {len(value)} bytes, limit {max_len}")
    return value


def _int(obj: Mapping[str, Any], name: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    value = _need(obj, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SchemaViolation(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise SchemaViolation(f"{name} must be in {lo}..{hi}")
    return value


def _float(obj: Mapping[str, Any], name: str) -> float:
    value = _need(obj, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SchemaViolation(f"{name} must be a finite number")
    return float(value)


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = _need(obj, name)
    if not isinstance(value, bool):
        raise SchemaViolation(f"{name} must be a boolean")
    return value


def _list(obj: Mapping[str, Any], name: str, max_len: int, *, min_len: int = 0) -> list[Any]:
    value = _need(obj, name)
    if not isinstance(value, list):
        raise SchemaViolation(f"{name} must be an array")
    if not min_len <= len(value) <= max_len:
        raise SchemaViolation(f"{name} must have {min_len}..{max_len} items, got {len(value)}")
    return value


def _enum(obj: Mapping[str, Any], name: str, kind: type[enum.StrEnum]) -> Any:
    value = _need(obj, name)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise SchemaViolation(f"{name} must be one of {allowed}") from None


def _header(obj: Any, type_name: str, *, type_required: bool = True) -> Mapping[str, Any]:
    """Check map-ness, ``type`` and ``v`` before anything else."""
    if not isinstance(obj, dict):
        raise SchemaViolation(f"a {type_name} must be a map")
    if ("type" in obj or type_required) and obj.get("type") != type_name:
        raise SchemaViolation(f"expected type {type_name!r}, got {obj.get('type')!r}")
    version = obj.get("v")
    if version is None:
        raise SchemaViolation("missing field 'v' (message version)")
    if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
        raise UnsupportedVersion(
            f"{type_name} version {version!r} is not supported (this build speaks {VERSION})"
        )
    return obj


def _known(obj: Mapping[str, Any], fields: tuple[str, ...], type_name: str) -> None:
    """Signed messages are strict: a key the contract does not define is refused
    (a SchemaViolation), so nothing unsigned can ride along in a signed message."""
    unknown = sorted(k for k in obj if k not in fields)
    if unknown:
        raise SchemaViolation(f"unknown field {unknown[0]!r} in a {type_name}")


def _threshold(obj: Mapping[str, Any]) -> str:
    """``a/b`` in lowest terms, both positive without leading zeros (1 is ``1/1``):
    one spelling per threshold, so one certificate has one wire form ("4/6" and
    "2/3" would sign differently)."""
    text = _str(obj, "threshold", 32)
    match = re.fullmatch(r"([1-9][0-9]{0,8})/([1-9][0-9]{0,8})", text)
    if match is None or math.gcd(int(match.group(1)), int(match.group(2))) != 1:
        raise SchemaViolation("threshold must be a fraction a/b in lowest terms, e.g. 2/3 or 1/1")
    return text


def _scalar_map(
    obj: Mapping[str, Any], name: str, max_entries: int = MAX_METADATA_ENTRIES
) -> dict[str, Any]:
    value = obj.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > max_entries:
        raise SchemaViolation(f"{name} must be a map of at most {max_entries} entries")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, (str, int, float, bool, type(None))):
            raise SchemaViolation(f"{name}[{key[:64]!r}] must be a short key with a scalar value")
    return dict(value)


M = TypeVar("M", bound="WireMessage")


class WireMessage:
    """Shared encode/decode plumbing; subclasses define TYPE, FIELDS, LIMITS."""

    TYPE: ClassVar[str]
    FIELDS: ClassVar[tuple[str, ...]]
    LIMITS: ClassVar[Limits] = REQUEST_LIMITS
    #: Only the exact bytes ``encode`` gives are accepted: a certificate is stored,
    #: forwarded and compared, so one certificate must have one wire form
    #: (docs/security.md, hole 9c; MessagePack allows wider integer and string forms).
    CANONICAL: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls: type[M], obj: Any) -> M:
        raise NotImplementedError

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        return cls._canonical(cls.from_wire(decode(data, cls.LIMITS)), data)

    @classmethod
    def _canonical(cls: type[M], message: M, data: bytes) -> M:
        if cls.CANONICAL and message.encode() != data:
            raise SchemaViolation(f"{cls.TYPE} is not in its one canonical encoding")
        return message


# -------------------------------------------------------------------- messages


@dataclass(frozen=True)
class VerificationRequest(WireMessage):
    """A signed payment authorization to verify by consensus.

    ``message`` is the exact signed bytes (a UTF-8 string is accepted and
    means its UTF-8 encoding). The request id makes retries idempotent.
    """

    request_id: str
    message: bytes
    signature: bytes
    public_key: bytes
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    #: Encoded trust certificates (schemas/trust.py), leaf first: when present the
    #: verifiers also require a chain from ``public_key`` to a trust anchor.
    chain: tuple[bytes, ...] = ()
    #: Payment category: when present the verifiers also require the category's
    #: authority quorum policy to be met by ``endorsements``.
    category: str = ""
    #: (authority public key, signature) pairs endorsing ``message`` for ``category``.
    endorsements: tuple[tuple[bytes, bytes], ...] = ()

    TYPE: ClassVar[str] = "verification_request"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "request_id",
        "message",
        "signature",
        "public_key",
        "metadata",
        "chain",
        "category",
        "endorsements",
    )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "v": VERSION,
            "request_id": self.request_id,
            "message": self.message,
            "signature": self.signature,
            "public_key": self.public_key,
        }
        if self.metadata:
            wire["metadata"] = self.metadata
        if self.chain:
            wire["chain"] = list(self.chain)
        if self.category:
            wire["category"] = self.category
        if self.endorsements:
            wire["endorsements"] = [[key, sig] for key, sig in self.endorsements]
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> VerificationRequest:
        obj = _header(obj, cls.TYPE, type_required=False)
        message = obj.get("message")
        if isinstance(message, str):
            message = message.encode()
            if len(message) > MAX_MESSAGE_BYTES:
                raise SchemaViolation(f"message is {len(message)} bytes, limit {MAX_MESSAGE_BYTES}")
        else:
            message = _bytes(obj, "message")
        return cls(
            request_id=_str(obj, "request_id", MAX_REQUEST_ID),
            message=message,
            signature=_bytes(obj, "signature", exact=SIGNATURE_BYTES),
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            metadata=_scalar_map(obj, "metadata"),
            chain=_chain(obj),
            category=_category(obj),
            endorsements=_endorsements(obj),
        )


def _chain(obj: Mapping[str, Any]) -> tuple[bytes, ...]:
    if obj.get("chain") is None:
        return ()
    certs = _list(obj, "chain", MAX_CHAIN_CERTS)
    if not all(isinstance(c, bytes) and 0 < len(c) <= MAX_CERT_BYTES for c in certs):
        raise SchemaViolation(f"chain must be an array of bin, each 1..{MAX_CERT_BYTES} bytes")
    return tuple(certs)


_CATEGORY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _category(obj: Mapping[str, Any]) -> str:
    """The same rule as the authority coordinator's categories (ASCII letters,
    digits, '-' and '_'), so every category a request carries can be evaluated."""
    if obj.get("category") is None:
        return ""
    category = _str(obj, "category", MAX_CATEGORY)
    if not _CATEGORY.match(category):
        raise SchemaViolation("category must be 1-64 characters of A-Z a-z 0-9 _ -")
    return category


def _endorsements(obj: Mapping[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
    if obj.get("endorsements") is None:
        return ()
    items = _list(obj, "endorsements", MAX_ENDORSEMENTS)
    out = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or len(item[0]) != PUBLIC_KEY_BYTES
            or not isinstance(item[1], bytes)
            or len(item[1]) != SIGNATURE_BYTES
        ):
            raise SchemaViolation(
                "an endorsement is [authority public key (bin 32), signature (bin 64)]"
            )
        out.append((item[0], item[1]))
    return tuple(out)


@dataclass(frozen=True)
class Ballot(WireMessage):
    """A batch of raw request bytes the tally asks every verifier to judge."""

    ballot_id: str
    epoch: int
    tally_id: str
    deadline_ms: int
    requests: tuple[bytes, ...]
    #: Revision of the verdict-state bucket (bus/state.py) the round is judged under.
    state_rev: int = 0
    #: The one "now" (Unix ms) every verifier judges validity windows at, so honest
    #: verifiers agree near an expiry; a verifier refuses (does not vote on) a
    #: ballot whose ``issued_ms`` is further than its clock-skew margin from its clock.
    issued_ms: int = 0
    #: The tally's public key; the pool record ``tally.<tally_id>`` must hold it.
    tally_key: bytes = b""
    #: The tally's signature over ``schemas.signing.ballot_signing_bytes``.
    sig: bytes = b""

    TYPE: ClassVar[str] = "ballot"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "ballot_id",
        "epoch",
        "tally_id",
        "deadline_ms",
        "requests",
        "state_rev",
        "issued_ms",
        "tally_key",
        "sig",
    )
    LIMITS: ClassVar[Limits] = BALLOT_LIMITS

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "ballot_id": self.ballot_id,
            "epoch": self.epoch,
            "tally_id": self.tally_id,
            "deadline_ms": self.deadline_ms,
            "requests": list(self.requests),
            "state_rev": self.state_rev,
            "issued_ms": self.issued_ms,
            "tally_key": self.tally_key,
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Ballot:
        obj = _header(obj, cls.TYPE)
        _known(obj, cls.FIELDS, cls.TYPE)
        raw = _list(obj, "requests", MAX_BALLOT_REQUESTS, min_len=1)
        if not all(isinstance(r, bytes) for r in raw):
            raise SchemaViolation("requests must be an array of bin")
        return cls(
            ballot_id=_str(obj, "ballot_id", 64),
            epoch=_int(obj, "epoch"),
            tally_id=_str(obj, "tally_id", 64),
            deadline_ms=_int(obj, "deadline_ms"),
            requests=tuple(raw),
            state_rev=_int(obj, "state_rev"),
            issued_ms=_int(obj, "issued_ms"),
            tally_key=_bytes(obj, "tally_key", exact=PUBLIC_KEY_BYTES),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class VoteEntry:
    """One verifier's verdict on one request of a ballot."""

    request_id: str
    digest: bytes
    valid: bool
    reason: str

    def to_wire(self) -> list[Any]:
        return [self.request_id, self.digest, self.valid, self.reason]

    @classmethod
    def from_wire(cls, item: Any) -> VoteEntry:
        if not isinstance(item, list) or len(item) != 4:
            raise SchemaViolation("a vote entry is [request_id, digest, valid, reason]")
        rid, digest, valid, reason = item
        if not isinstance(rid, str) or len(rid) > MAX_REQUEST_ID:
            raise SchemaViolation("entry request_id must be a string")
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            raise SchemaViolation("entry digest must be 32 bytes")
        if not isinstance(valid, bool):
            raise SchemaViolation("entry valid must be a boolean")
        if not isinstance(reason, str) or not 1 <= len(reason) <= 64 or not reason.isprintable():
            raise SchemaViolation("entry reason must be 1..64 printable characters")
        return cls(rid, digest, valid, reason)


@dataclass(frozen=True)
class Vote(WireMessage):
    """A verifier's signed verdicts on every request of one ballot.

    The signature covers ``vote_signing_bytes`` whose ``root`` is the Merkle
    root over ``entry_bytes`` of the entries in ballot order.
    """

    ballot_id: str
    epoch: int
    tally_id: str
    verifier_key: bytes
    ts_ms: int
    entries: tuple[VoteEntry, ...]
    sig: bytes
    #: Revision of the verdict-state bucket this verifier judged under (signed).
    state_rev: int = 0

    TYPE: ClassVar[str] = "vote"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "ballot_id",
        "epoch",
        "tally_id",
        "verifier_key",
        "ts_ms",
        "entries",
        "sig",
        "state_rev",
    )
    LIMITS: ClassVar[Limits] = BALLOT_LIMITS

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "ballot_id": self.ballot_id,
            "epoch": self.epoch,
            "tally_id": self.tally_id,
            "verifier_key": self.verifier_key,
            "ts_ms": self.ts_ms,
            "entries": [e.to_wire() for e in self.entries],
            "sig": self.sig,
            "state_rev": self.state_rev,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Vote:
        obj = _header(obj, cls.TYPE)
        _known(obj, cls.FIELDS, cls.TYPE)
        entries = _list(obj, "entries", MAX_BALLOT_REQUESTS, min_len=1)
        return cls(
            ballot_id=_str(obj, "ballot_id", 64),
            epoch=_int(obj, "epoch"),
            tally_id=_str(obj, "tally_id", 64),
            verifier_key=_bytes(obj, "verifier_key", exact=PUBLIC_KEY_BYTES),
            ts_ms=_int(obj, "ts_ms"),
            entries=tuple(VoteEntry.from_wire(e) for e in entries),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
            state_rev=_int(obj, "state_rev"),
        )


@dataclass(frozen=True)
class VoteProof:
    """One vote as it appears in a certificate: the entry for this request,
    its Merkle path, and the verifier's signature over the ballot root."""

    verifier_key: bytes
    ts_ms: int
    count: int
    index: int
    valid: bool
    reason: str
    path: tuple[bytes, ...]
    sig: bytes

    FIELDS: ClassVar[tuple[str, ...]] = (
        "verifier_key",
        "ts_ms",
        "count",
        "index",
        "valid",
        "reason",
        "path",
        "sig",
    )

    def signing_item(self) -> list[Any]:
        """This proof inside the certificate's signing body: an array in FIELDS order."""
        return [
            self.verifier_key,
            self.ts_ms,
            self.count,
            self.index,
            self.valid,
            self.reason,
            list(self.path),
            self.sig,
        ]

    def to_wire(self) -> dict[str, Any]:
        return {
            "verifier_key": self.verifier_key,
            "ts_ms": self.ts_ms,
            "count": self.count,
            "index": self.index,
            "valid": self.valid,
            "reason": self.reason,
            "path": list(self.path),
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> VoteProof:
        if not isinstance(obj, dict):
            raise SchemaViolation("a vote proof must be a map")
        _known(obj, cls.FIELDS, "vote proof")
        path = _list(obj, "path", 64)
        if not all(isinstance(p, bytes) and len(p) == 32 for p in path):
            raise SchemaViolation("path must be an array of 32-byte hashes")
        count = _int(obj, "count", lo=1, hi=MAX_BALLOT_REQUESTS)
        return cls(
            verifier_key=_bytes(obj, "verifier_key", exact=PUBLIC_KEY_BYTES),
            ts_ms=_int(obj, "ts_ms"),
            count=count,
            index=_int(obj, "index", hi=count - 1),
            valid=_bool(obj, "valid"),
            reason=_str(obj, "reason", 64),
            path=tuple(path),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class ConsensusResult(WireMessage):
    """The certificate: the decision, the quorum it was reached under, and the
    signed votes that justify it, all signed by the tally. Anyone holding the
    pool's verifier keys can re-check it with ``verify_certificate``."""

    request_id: str
    request_digest: bytes
    decision: str
    votes_for: int
    votes_against: int
    total_votes: int
    n: int
    q: int
    f: int
    threshold: str
    epoch: int
    ballot_id: str
    votes: tuple[VoteProof, ...]
    tally_id: str
    tally_key: bytes
    decided_at_ms: int
    #: How long the round took at the tally, in whole microseconds (an integer:
    #: a float has several encodings, and it is signed).
    latency_us: int
    sig: bytes = b""
    #: The one verdict-state revision every counted vote was judged under.
    state_rev: int = 0

    TYPE: ClassVar[str] = "certificate"
    LIMITS: ClassVar[Limits] = BALLOT_LIMITS
    CANONICAL: ClassVar[bool] = True
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "request_id",
        "request_digest",
        "decision",
        "votes_for",
        "votes_against",
        "total_votes",
        "n",
        "q",
        "f",
        "threshold",
        "epoch",
        "ballot_id",
        "votes",
        "tally_id",
        "tally_key",
        "decided_at_ms",
        "latency_us",
        "sig",
        "state_rev",
    )

    @property
    def approved(self) -> bool:
        return self.decision == "VALID"

    def signing_fields(self) -> list[Any]:
        """The certificate's fields in signing order (everything but ``type``, ``v``
        and ``sig``; schemas/certificate.py puts the version, type, v and network
        id in front). Arrays only: each vote proof is ``VoteProof.signing_item``."""
        return [
            self.request_id,
            self.request_digest,
            self.decision,
            self.votes_for,
            self.votes_against,
            self.total_votes,
            self.n,
            self.q,
            self.f,
            self.threshold,
            self.epoch,
            self.ballot_id,
            [v.signing_item() for v in self.votes],
            self.tally_id,
            self.tally_key,
            self.decided_at_ms,
            self.latency_us,
            self.state_rev,
        ]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "request_id": self.request_id,
            "request_digest": self.request_digest,
            "decision": self.decision,
            "votes_for": self.votes_for,
            "votes_against": self.votes_against,
            "total_votes": self.total_votes,
            "n": self.n,
            "q": self.q,
            "f": self.f,
            "threshold": self.threshold,
            "epoch": self.epoch,
            "ballot_id": self.ballot_id,
            "votes": [v.to_wire() for v in self.votes],
            "tally_id": self.tally_id,
            "tally_key": self.tally_key,
            "decided_at_ms": self.decided_at_ms,
            "latency_us": self.latency_us,
            "sig": self.sig,
            "state_rev": self.state_rev,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> ConsensusResult:
        obj = _header(obj, cls.TYPE)
        _known(obj, cls.FIELDS, cls.TYPE)
        decision = _str(obj, "decision", 16)
        if decision not in ("VALID", "INVALID", "NO_QUORUM", "TIMEOUT"):
            raise SchemaViolation(f"unknown decision {decision!r}")
        votes = _list(obj, "votes", 1024)
        return cls(
            request_id=_str(obj, "request_id", MAX_REQUEST_ID),
            request_digest=_bytes(obj, "request_digest", exact=DIGEST_BYTES),
            decision=decision,
            votes_for=_int(obj, "votes_for"),
            votes_against=_int(obj, "votes_against"),
            total_votes=_int(obj, "total_votes"),
            n=_int(obj, "n"),
            q=_int(obj, "q"),
            f=_int(obj, "f"),
            threshold=_threshold(obj),
            epoch=_int(obj, "epoch"),
            ballot_id=_str(obj, "ballot_id", 64),
            votes=tuple(VoteProof.from_wire(v) for v in votes),
            tally_id=_str(obj, "tally_id", 64),
            tally_key=_bytes(obj, "tally_key", exact=PUBLIC_KEY_BYTES),
            decided_at_ms=_int(obj, "decided_at_ms"),
            latency_us=_int(obj, "latency_us"),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
            state_rev=_int(obj, "state_rev"),
        )

    def summary(self) -> str:
        return (
            f"{self.decision}: {self.votes_for}/{self.n} approved, "
            f"{self.votes_against} rejected (q={self.q}, f={self.f}, "
            f"threshold={self.threshold}, epoch={self.epoch}, state={self.state_rev}, "
            f"{self.latency_us / 1000:.1f} ms)"
        )


@dataclass(frozen=True)
class Heartbeat(WireMessage):
    """Liveness: published every interval by every worker."""

    kind: str
    worker_id: str
    instance: str
    seq: int
    ts_ms: int
    interval_s: float
    health: str
    pid: int
    host: str
    #: Set by the process's backend at spawn (env AP_GENERATION; default: the process start
    #: time in Unix ms), strictly increasing per worker across respawns: a heartbeat of a
    #: lower generation than one already seen comes from a zombie and is ignored.
    generation: int = 0

    TYPE: ClassVar[str] = "heartbeat"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "kind",
        "worker_id",
        "instance",
        "seq",
        "ts_ms",
        "interval_s",
        "health",
        "pid",
        "host",
        "generation",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "kind": self.kind,
            "worker_id": self.worker_id,
            "instance": self.instance,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "interval_s": self.interval_s,
            "health": self.health,
            "pid": self.pid,
            "host": self.host,
            "generation": self.generation,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Heartbeat:
        obj = _header(obj, cls.TYPE)
        return cls(
            kind=_str(obj, "kind", 32),
            worker_id=_str(obj, "worker_id", 64),
            instance=_str(obj, "instance", 64),
            seq=_int(obj, "seq"),
            ts_ms=_int(obj, "ts_ms"),
            interval_s=_float(obj, "interval_s"),
            health=_enum(obj, "health", Health).value,
            pid=_int(obj, "pid"),
            host=_str(obj, "host", 255),
            generation=_int(obj, "generation"),
        )


@dataclass(frozen=True)
class MetricsSnapshot(WireMessage):
    """Processing statistics since start: counts and processing times."""

    kind: str
    worker_id: str
    instance: str
    ts_ms: int
    tasks: int
    successes: int
    failures: int
    avg_ms: float
    p99_ms: float
    health: str
    counters: dict[str, int] = field(default_factory=dict, hash=False)

    TYPE: ClassVar[str] = "metrics"
    LIMITS: ClassVar[Limits] = Limits(max_map=MAX_COUNTERS + 16)
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "kind",
        "worker_id",
        "instance",
        "ts_ms",
        "tasks",
        "successes",
        "failures",
        "avg_ms",
        "p99_ms",
        "health",
        "counters",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "kind": self.kind,
            "worker_id": self.worker_id,
            "instance": self.instance,
            "ts_ms": self.ts_ms,
            "tasks": self.tasks,
            "successes": self.successes,
            "failures": self.failures,
            "avg_ms": self.avg_ms,
            "p99_ms": self.p99_ms,
            "health": self.health,
            "counters": self.counters,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> MetricsSnapshot:
        obj = _header(obj, cls.TYPE)
        counters = _scalar_map(obj, "counters", MAX_COUNTERS)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counters.values()):
            raise SchemaViolation("counters values must be integers")
        return cls(
            kind=_str(obj, "kind", 32),
            worker_id=_str(obj, "worker_id", 64),
            instance=_str(obj, "instance", 64),
            ts_ms=_int(obj, "ts_ms"),
            tasks=_int(obj, "tasks"),
            successes=_int(obj, "successes"),
            failures=_int(obj, "failures"),
            avg_ms=_float(obj, "avg_ms"),
            p99_ms=_float(obj, "p99_ms"),
            health=_enum(obj, "health", Health).value,
            counters=counters,
        )


@dataclass(frozen=True)
class ErrorReply(WireMessage):
    """The answer to a request that could not be processed; ``code`` is stable."""

    code: str
    message: str
    request_id: str | None = None

    TYPE: ClassVar[str] = "error"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "code", "message", "request_id")

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "v": VERSION,
            "code": self.code,
            "message": self.message,
        }
        if self.request_id is not None:
            wire["request_id"] = self.request_id
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> ErrorReply:
        obj = _header(obj, cls.TYPE)
        rid = _str(obj, "request_id", MAX_REQUEST_ID) if obj.get("request_id") is not None else None
        return cls(
            code=_str(obj, "code", 64),
            message=_str(obj, "message", 4096, min_len=0),
            request_id=rid,
        )


A = TypeVar("A", bound=WireMessage)
B = TypeVar("B", bound=WireMessage)
C = TypeVar("C", bound=WireMessage)
D = TypeVar("D", bound=WireMessage)


def reply_limits(classes: tuple[type[WireMessage], ...]) -> Limits:
    """The widest of the classes' own limits: a reply may be as large as its largest class."""
    sizes = [astuple(cls.LIMITS) for cls in classes]
    return Limits(*(max(values) for values in zip(*sizes, strict=True)))


@overload
def decode_reply(data: bytes) -> ConsensusResult | ErrorReply: ...
@overload
def decode_reply(data: bytes, a: type[A], /) -> A | ErrorReply: ...
@overload
def decode_reply(data: bytes, a: type[A], b: type[B], /) -> A | B | ErrorReply: ...
@overload
def decode_reply(data: bytes, a: type[A], b: type[B], c: type[C], /) -> A | B | C | ErrorReply: ...
@overload
def decode_reply(
    data: bytes, a: type[A], b: type[B], c: type[C], d: type[D], /
) -> A | B | C | D | ErrorReply: ...
def decode_reply(data: bytes, *expected: type[WireMessage]) -> WireMessage:
    """Decode a service's answer: one of the ``expected`` classes, or an ErrorReply.

    The one reply decoder of every request/reply service (the tally, keys,
    trust, authority), so each client names what it may be answered and
    nothing else: the ``type`` field picks the class, any other type is a
    SchemaViolation, and the codec limits are the widest of the classes'
    own. An ErrorReply is always accepted and *returned* (the caller decides:
    bus/call.py raises it as RemoteError). With no class it is the tally's
    answer to a VerificationRequest, a ConsensusResult.
    """
    wanted: tuple[type[WireMessage], ...] = expected or (ConsensusResult,)
    classes: tuple[type[WireMessage], ...] = (
        ErrorReply,
        *(c for c in wanted if c is not ErrorReply),
    )
    obj = decode(data, reply_limits(classes))
    kind = obj.get("type") if isinstance(obj, dict) else None
    for cls in classes:
        if kind == cls.TYPE:
            return cls._canonical(cls.from_wire(obj), data)
    names = ", ".join(repr(cls.TYPE) for cls in classes)
    raise SchemaViolation(f"unexpected reply type {kind!r} (expected one of {names})")


ALL_MESSAGES: tuple[type[WireMessage], ...] = (
    VerificationRequest,
    Ballot,
    Vote,
    ConsensusResult,
    Heartbeat,
    MetricsSnapshot,
    ErrorReply,
)
