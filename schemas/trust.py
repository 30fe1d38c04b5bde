"""Trust anchors, certificates and the trust service's wire messages.

A :class:`TrustCertificate` is a signed MessagePack statement "``issuer_key``
vouches for ``subject_key`` for ``purposes`` between ``not_before_ms`` and
``not_after_ms``". ``sig`` is Ed25519 by ``issuer_key`` over
``DOMAIN_TRUST_CERT || msgpack([1, serial, subject_key, issuer_key,
not_before_ms, not_after_ms, purposes, path_len])`` (canonical encoding as in
schemas/signing.py, ``purposes`` sorted and unique), so a signature made for a
vote, an alert or a consensus certificate can never pass as a trust link.

Purposes (:data:`PURPOSES`):

  payment    the leaf key may sign payment authorizations (:data:`PURPOSE_PAYMENT`,
             what a payment signer's leaf certificate must carry)
  verifier   the leaf key may act as a verifier
  authority  the leaf key may act as an authority (endorsements)
  ca         the subject may issue certificates (:data:`PURPOSE_CA`)

CA purpose: every certificate *above* the leaf in a chain (its subject signed
the certificate below) must carry ``ca`` **and** the purpose being validated:
a CA can only delegate what it holds itself. Trust anchors (root keys) are
unrestricted.

``path_len`` is the number of intermediate CA certificates allowed *below*
this certificate in a chain (X.509 pathLenConstraint); :data:`PATH_LEN_UNLIMITED`
(-1) means no limit. It is ignored on the leaf certificate.

State records (in the ``{prefix}_state`` bucket, see bus/state.py):
``anchor.<public key hex>`` holds a :class:`TrustAnchor`,
``cert.<serial>`` a :class:`TrustCertRecord` (the certificate's exact bytes
plus its revocation status). :func:`decode_state_record` decodes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from schemas.codec import REQUEST_LIMITS, Limits, decode, encode
from schemas.errors import SchemaViolation
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, AgentIdentity, verify_signature
from schemas.messages import (
    ErrorReply,
    WireMessage,
    _bool,
    _bytes,
    _header,
    _int,
    _list,
    _need,
    _str,
    decode_reply,
)

DOMAIN_TRUST_CERT = b"agentic-payments/trust-cert/v1\x00"
VERSION = 1

PURPOSE_PAYMENT = "payment"
PURPOSE_VERIFIER = "verifier"
PURPOSE_AUTHORITY = "authority"
PURPOSE_CA = "ca"
PURPOSES: frozenset[str] = frozenset(
    {PURPOSE_PAYMENT, PURPOSE_VERIFIER, PURPOSE_AUTHORITY, PURPOSE_CA}
)
PATH_LEN_UNLIMITED = -1
MAX_PATH_LEN = 64
MAX_SERIAL = 64
MAX_LABEL = 128
MAX_REASON = 256
#: Most certificates a validate request may present.
MAX_PRESENTED = 16
#: Most certificate bytes (one encoded TrustCertificate is ~250 bytes).
MAX_CERT_BYTES = 1024
MAX_LISTED = 1000
LISTING_LIMITS = Limits(max_bytes=4 * 1024 * 1024, max_array=MAX_LISTED * 2)

ANCHOR_AREA = "anchor"
CERT_AREA = "cert"


def _serial(obj: Mapping[str, Any], name: str = "serial") -> str:
    value = _str(obj, name, MAX_SERIAL)
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise SchemaViolation(f"{name} must be 1-{MAX_SERIAL} characters of A-Z a-z 0-9 _ -")
    return value


def check_serial(serial: str) -> str:
    """A serial usable as a KV key fragment; raises SchemaViolation otherwise."""
    return _serial({"serial": serial})


def _purposes(obj: Mapping[str, Any], name: str = "purposes") -> tuple[str, ...]:
    raw = _list(obj, name, len(PURPOSES), min_len=1)
    if not all(isinstance(p, str) for p in raw):
        raise SchemaViolation(f"{name} must be an array of strings")
    unknown = set(raw) - PURPOSES
    if unknown:
        raise SchemaViolation(
            f"{name}: unknown purpose(s) {sorted(unknown)}; known: {sorted(PURPOSES)}"
        )
    if len(set(raw)) != len(raw) or list(raw) != sorted(raw):
        raise SchemaViolation(f"{name} must be sorted and without duplicates")
    return tuple(raw)


def _opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    return None if obj.get(name) is None else _int(obj, name)


# ------------------------------------------------------------------ certificate
@dataclass(frozen=True)
class TrustCertificate(WireMessage):
    """One signed link: ``issuer_key`` vouches for ``subject_key``."""

    serial: str
    subject_key: bytes
    issuer_key: bytes
    not_before_ms: int
    not_after_ms: int
    purposes: tuple[str, ...]
    path_len: int
    sig: bytes = b""

    TYPE: ClassVar[str] = "trust_cert"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "serial",
        "subject_key",
        "issuer_key",
        "not_before_ms",
        "not_after_ms",
        "purposes",
        "path_len",
        "sig",
    )

    def signing_bytes(self) -> bytes:
        return DOMAIN_TRUST_CERT + encode(
            [
                VERSION,
                self.serial,
                self.subject_key,
                self.issuer_key,
                self.not_before_ms,
                self.not_after_ms,
                list(self.purposes),
                self.path_len,
            ]
        )

    def signature_ok(self) -> bool:
        return verify_signature(self.issuer_key, self.signing_bytes(), self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "serial": self.serial,
            "subject_key": self.subject_key,
            "issuer_key": self.issuer_key,
            "not_before_ms": self.not_before_ms,
            "not_after_ms": self.not_after_ms,
            "purposes": list(self.purposes),
            "path_len": self.path_len,
            "sig": self.sig,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> TrustCertificate:
        obj = _header(obj, cls.TYPE)
        cert = cls(
            serial=_serial(obj),
            subject_key=_bytes(obj, "subject_key", exact=PUBLIC_KEY_BYTES),
            issuer_key=_bytes(obj, "issuer_key", exact=PUBLIC_KEY_BYTES),
            not_before_ms=_int(obj, "not_before_ms"),
            not_after_ms=_int(obj, "not_after_ms"),
            purposes=_purposes(obj),
            path_len=_int(obj, "path_len", lo=PATH_LEN_UNLIMITED, hi=MAX_PATH_LEN),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
        )
        if cert.not_after_ms <= cert.not_before_ms:
            raise SchemaViolation("not_after_ms must be after not_before_ms")
        return cert

    @classmethod
    def decode(cls, data: bytes) -> TrustCertificate:
        if len(data) > MAX_CERT_BYTES:
            raise SchemaViolation(f"a certificate is at most {MAX_CERT_BYTES} bytes")
        return cls.from_wire(decode(data, REQUEST_LIMITS))


def issue(
    issuer: AgentIdentity,
    *,
    serial: str,
    subject_key: bytes,
    not_before_ms: int,
    not_after_ms: int,
    purposes: tuple[str, ...] | list[str] | frozenset[str],
    path_len: int = 0,
) -> TrustCertificate:
    """Build and sign a certificate (validated exactly as a receiver would)."""
    unsigned = TrustCertificate(
        serial=serial,
        subject_key=subject_key,
        issuer_key=issuer.public_key,
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
        purposes=tuple(sorted(set(purposes))),
        path_len=path_len,
        sig=bytes(SIGNATURE_BYTES),
    )
    TrustCertificate.from_wire(unsigned.to_wire())  # refuse what a receiver would refuse
    return replace(unsigned, sig=issuer.sign(unsigned.signing_bytes()))


# ------------------------------------------------------------------ state records
@dataclass(frozen=True)
class TrustAnchor(WireMessage):
    """A root key trusted without a certificate (``anchor.<public key hex>``)."""

    public_key: bytes
    label: str
    added_ms: int

    TYPE: ClassVar[str] = "trust_anchor"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "public_key", "label", "added_ms")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "public_key": self.public_key,
            "label": self.label,
            "added_ms": self.added_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> TrustAnchor:
        obj = _header(obj, cls.TYPE)
        return cls(
            public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES),
            label=_str(obj, "label", MAX_LABEL, min_len=0),
            added_ms=_int(obj, "added_ms"),
        )


@dataclass(frozen=True)
class TrustCertRecord(WireMessage):
    """A stored certificate (``cert.<serial>``): its exact bytes and revocation status."""

    cert: bytes
    revoked: bool = False
    reason: str = ""
    revoked_ms: int = 0

    TYPE: ClassVar[str] = "trust_cert_record"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "cert", "revoked", "reason", "revoked_ms")

    @property
    def certificate(self) -> TrustCertificate:
        return TrustCertificate.decode(self.cert)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "cert": self.cert,
            "revoked": self.revoked,
            "reason": self.reason,
            "revoked_ms": self.revoked_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> TrustCertRecord:
        obj = _header(obj, cls.TYPE)
        record = cls(
            cert=_bytes(obj, "cert", max_len=MAX_CERT_BYTES),
            revoked=_bool(obj, "revoked"),
            reason=_str(obj, "reason", MAX_REASON, min_len=0),
            revoked_ms=_int(obj, "revoked_ms"),
        )
        record.certificate  # noqa: B018 - the stored bytes must be a valid certificate
        return record


@dataclass(frozen=True)
class StoredCert:
    """A decoded ``cert.<serial>`` record as the chain builder sees it."""

    cert: TrustCertificate
    revoked: bool
    reason: str
    revoked_ms: int = 0


def decode_state_record(key: str, value: bytes) -> object:
    """Decode a trust record of the state bucket (anchor.* / cert.*).

    Returns a :class:`TrustAnchor` or a :class:`StoredCert`; records of other
    areas come back as their raw bytes (their owners decode them). Raises
    CodecError on a malformed trust record or a key that does not match it.
    """
    area, _, name = key.partition(".")
    if area == ANCHOR_AREA:
        anchor = TrustAnchor.decode(value)
        if name != anchor.public_key.hex():
            raise SchemaViolation(f"{key}: anchor record for another key")
        return anchor
    if area == CERT_AREA:
        record = TrustCertRecord.decode(value)
        cert = record.certificate
        if name != cert.serial:
            raise SchemaViolation(f"{key}: certificate record with serial {cert.serial!r}")
        return StoredCert(
            cert=cert, revoked=record.revoked, reason=record.reason, revoked_ms=record.revoked_ms
        )
    return value


# ------------------------------------------------------------------ service messages
@dataclass(frozen=True)
class AddAnchorRequest(WireMessage):
    public_key: bytes
    label: str = ""

    TYPE: ClassVar[str] = "trust_add_anchor"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "public_key", "label")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "public_key": self.public_key, "label": self.label}

    @classmethod
    def from_wire(cls, obj: Any) -> AddAnchorRequest:
        obj = _header(obj, cls.TYPE)
        label = _str(obj, "label", MAX_LABEL, min_len=0) if "label" in obj else ""
        return cls(public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES), label=label)


@dataclass(frozen=True)
class RemoveAnchorRequest(WireMessage):
    public_key: bytes

    TYPE: ClassVar[str] = "trust_remove_anchor"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "public_key")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "public_key": self.public_key}

    @classmethod
    def from_wire(cls, obj: Any) -> RemoveAnchorRequest:
        obj = _header(obj, cls.TYPE)
        return cls(public_key=_bytes(obj, "public_key", exact=PUBLIC_KEY_BYTES))


@dataclass(frozen=True)
class AddCertRequest(WireMessage):
    cert: bytes

    TYPE: ClassVar[str] = "trust_add_cert"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "cert")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "cert": self.cert}

    @classmethod
    def from_wire(cls, obj: Any) -> AddCertRequest:
        obj = _header(obj, cls.TYPE)
        return cls(cert=_bytes(obj, "cert", max_len=MAX_CERT_BYTES))


@dataclass(frozen=True)
class RevokeCertRequest(WireMessage):
    serial: str
    reason: str = ""

    TYPE: ClassVar[str] = "trust_revoke_cert"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "serial", "reason")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION, "serial": self.serial, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: Any) -> RevokeCertRequest:
        obj = _header(obj, cls.TYPE)
        reason = _str(obj, "reason", MAX_REASON, min_len=0) if "reason" in obj else ""
        return cls(serial=_serial(obj), reason=reason)


@dataclass(frozen=True)
class ValidateRequest(WireMessage):
    """Validate a chain from ``leaf_key`` to any anchor for ``purpose``.

    ``presented`` are encoded certificates the caller carries (tried with the
    stored ones); ``now_ms`` fixes the validation time (default: the service's
    clock); ``min_revision`` makes the service wait until its state mirror has
    applied that state revision (read-your-writes after an add/revoke).
    """

    leaf_key: bytes
    purpose: str = PURPOSE_PAYMENT
    presented: tuple[bytes, ...] = ()
    now_ms: int | None = None
    min_revision: int | None = None

    TYPE: ClassVar[str] = "trust_validate"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "leaf_key",
        "purpose",
        "presented",
        "now_ms",
        "min_revision",
    )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "v": VERSION,
            "leaf_key": self.leaf_key,
            "purpose": self.purpose,
            "presented": list(self.presented),
        }
        if self.now_ms is not None:
            wire["now_ms"] = self.now_ms
        if self.min_revision is not None:
            wire["min_revision"] = self.min_revision
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> ValidateRequest:
        obj = _header(obj, cls.TYPE)
        purpose = _str(obj, "purpose", 32)
        if purpose not in PURPOSES:
            raise SchemaViolation(f"purpose must be one of {sorted(PURPOSES)}")
        presented = _list(obj, "presented", MAX_PRESENTED) if "presented" in obj else []
        if not all(isinstance(p, bytes) and len(p) <= MAX_CERT_BYTES for p in presented):
            raise SchemaViolation(
                f"presented must be an array of bin of at most {MAX_CERT_BYTES} bytes"
            )
        return cls(
            leaf_key=_bytes(obj, "leaf_key", exact=PUBLIC_KEY_BYTES),
            purpose=purpose,
            presented=tuple(presented),
            now_ms=_opt_int(obj, "now_ms"),
            min_revision=_opt_int(obj, "min_revision"),
        )


@dataclass(frozen=True)
class ListRequest(WireMessage):
    TYPE: ClassVar[str] = "trust_list"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "v": VERSION}

    @classmethod
    def from_wire(cls, obj: Any) -> ListRequest:
        _header(obj, cls.TYPE)
        return cls()


@dataclass(frozen=True)
class TrustAck(WireMessage):
    """The answer to add-anchor, remove-anchor, add-cert and revoke-cert."""

    op: str
    key: str
    changed: bool
    revision: int
    detail: str = ""

    TYPE: ClassVar[str] = "trust_ack"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "op", "key", "changed", "revision", "detail")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "op": self.op,
            "key": self.key,
            "changed": self.changed,
            "revision": self.revision,
            "detail": self.detail,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> TrustAck:
        obj = _header(obj, cls.TYPE)
        return cls(
            op=_str(obj, "op", 32),
            key=_str(obj, "key", 256),
            changed=_bool(obj, "changed"),
            revision=_int(obj, "revision"),
            detail=_str(obj, "detail", 1024, min_len=0),
        )


@dataclass(frozen=True)
class ChainReply(WireMessage):
    """A ChainResult on the wire (the answer to validate)."""

    ok: bool
    code: str | None
    reason: str
    failed_link: int | None
    path: tuple[bytes, ...]
    signature_checks: int
    expires_ms: int | None
    revision: int
    now_ms: int

    TYPE: ClassVar[str] = "trust_chain_result"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "ok",
        "code",
        "reason",
        "failed_link",
        "path",
        "signature_checks",
        "expires_ms",
        "revision",
        "now_ms",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "ok": self.ok,
            "code": self.code,
            "reason": self.reason,
            "failed_link": self.failed_link,
            "path": list(self.path),
            "signature_checks": self.signature_checks,
            "expires_ms": self.expires_ms,
            "revision": self.revision,
            "now_ms": self.now_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> ChainReply:
        obj = _header(obj, cls.TYPE)
        code = None if obj.get("code") is None else _str(obj, "code", 64)
        path = _list(obj, "path", 64)
        if not all(isinstance(p, bytes) for p in path):
            raise SchemaViolation("path must be an array of bin")
        _need(obj, "failed_link")
        _need(obj, "expires_ms")
        return cls(
            ok=_bool(obj, "ok"),
            code=code,
            reason=_str(obj, "reason", 4096, min_len=0),
            failed_link=_opt_int(obj, "failed_link"),
            path=tuple(path),
            signature_checks=_int(obj, "signature_checks"),
            expires_ms=_opt_int(obj, "expires_ms"),
            revision=_int(obj, "revision"),
            now_ms=_int(obj, "now_ms"),
        )


@dataclass(frozen=True)
class TrustListing(WireMessage):
    """The answer to list: anchors and stored certificates (at most MAX_LISTED each)."""

    anchors: tuple[TrustAnchor, ...]
    certs: tuple[TrustCertRecord, ...]
    revision: int
    truncated: bool = False

    TYPE: ClassVar[str] = "trust_listing"
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "v", "anchors", "certs", "revision", "truncated")
    LIMITS: ClassVar[Limits] = LISTING_LIMITS

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "anchors": [a.to_wire() for a in self.anchors],
            "certs": [c.to_wire() for c in self.certs],
            "revision": self.revision,
            "truncated": self.truncated,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> TrustListing:
        obj = _header(obj, cls.TYPE)
        return cls(
            anchors=tuple(TrustAnchor.from_wire(a) for a in _list(obj, "anchors", MAX_LISTED)),
            certs=tuple(TrustCertRecord.from_wire(c) for c in _list(obj, "certs", MAX_LISTED)),
            revision=_int(obj, "revision"),
            truncated=_bool(obj, "truncated"),
        )


#: The request message of each service operation ({prefix}.trust.<op>).
OPS: dict[str, type[WireMessage]] = {
    "add-anchor": AddAnchorRequest,
    "remove-anchor": RemoveAnchorRequest,
    "add-cert": AddCertRequest,
    "revoke-cert": RevokeCertRequest,
    "validate": ValidateRequest,
    "list": ListRequest,
}
TRUST_MESSAGES: tuple[type[WireMessage], ...] = (
    TrustCertificate,
    TrustAnchor,
    TrustCertRecord,
    *OPS.values(),
    TrustAck,
    ChainReply,
    TrustListing,
)


def decode_trust_reply(data: bytes) -> TrustAck | ChainReply | TrustListing | ErrorReply:
    """Any answer of the trust service (tests, tools); TrustClient names the one it expects."""
    return decode_reply(data, TrustAck, ChainReply, TrustListing)
