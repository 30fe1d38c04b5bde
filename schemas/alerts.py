"""Signed alerts: what the anomaly and recovery workers tell operators.

An alert is published on ``{prefix}.alert.{severity}`` and kept by the
``{prefix}_ALERTS`` stream. It is signed by the worker that raised it (its
Ed25519 identity) under its own domain tag, so a forged "all clear" or a
forged quarantine reason is detectable by anyone holding the signer's key.

Severities (what each means to an operator):

  low       worth a look in the next review (a metric drifting)
  medium    a worker misbehaves but the system is unaffected (one anomalous metric)
  high      service is impaired or at risk (a worker stale, a respawn failing)
  critical  safety: a Byzantine verifier (vote against the decided outcome,
            equivocation), or recovery gave up on a worker
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from schemas.codec import encode
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, AgentIdentity, verify_signature
from schemas.messages import (
    WireMessage,
    _bytes,
    _enum,
    _header,
    _int,
    _scalar_map,
    _str,
)

DOMAIN_ALERT = b"agentic-payments/alert/v1\x00"
VERSION = 1


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


@dataclass(frozen=True)
class Alert(WireMessage):
    """One signed alert. ``code`` is a stable machine-readable reason
    (e.g. BYZANTINE_VOTE, EQUIVOCATION, METRIC_ANOMALY, WORKER_STALE,
    RECOVERY_GAVE_UP); ``subject_kind``/``subject_id`` name the worker concerned."""

    alert_id: str
    severity: str
    code: str
    subject_kind: str
    subject_id: str
    summary: str
    ts_ms: int
    source_kind: str
    source_id: str
    signer: bytes
    details: dict[str, Any] = field(default_factory=dict)
    sig: bytes = b""

    TYPE: ClassVar[str] = "alert"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "v",
        "alert_id",
        "severity",
        "code",
        "subject_kind",
        "subject_id",
        "summary",
        "ts_ms",
        "source_kind",
        "source_id",
        "signer",
        "details",
        "sig",
    )

    def _body(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "v": VERSION,
            "alert_id": self.alert_id,
            "severity": self.severity,
            "code": self.code,
            "subject_kind": self.subject_kind,
            "subject_id": self.subject_id,
            "summary": self.summary,
            "ts_ms": self.ts_ms,
            "source_kind": self.source_kind,
            "source_id": self.source_id,
            "signer": self.signer,
            "details": self.details,
        }

    def signing_bytes(self) -> bytes:
        """DOMAIN_ALERT || msgpack(every field but sig, as a map with sorted keys)."""
        body = self._body()
        return DOMAIN_ALERT + encode({k: body[k] for k in sorted(body)})

    def to_wire(self) -> dict[str, Any]:
        return {**self._body(), "sig": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> Alert:
        obj = _header(obj, cls.TYPE)
        return cls(
            alert_id=_str(obj, "alert_id", 64),
            severity=_enum(obj, "severity", Severity).value,
            code=_str(obj, "code", 64),
            subject_kind=_str(obj, "subject_kind", 32),
            subject_id=_str(obj, "subject_id", 64),
            summary=_str(obj, "summary", 1024),
            ts_ms=_int(obj, "ts_ms"),
            source_kind=_str(obj, "source_kind", 32),
            source_id=_str(obj, "source_id", 64),
            signer=_bytes(obj, "signer", exact=PUBLIC_KEY_BYTES),
            details=_scalar_map(obj, "details"),
            sig=_bytes(obj, "sig", exact=SIGNATURE_BYTES),
        )

    def signature_ok(self) -> bool:
        return verify_signature(self.signer, self.signing_bytes(), self.sig)


def sign_alert(
    identity: AgentIdentity,
    *,
    alert_id: str,
    severity: Severity,
    code: str,
    subject_kind: str,
    subject_id: str,
    summary: str,
    ts_ms: int,
    source_kind: str,
    source_id: str,
    details: dict[str, Any] | None = None,
) -> Alert:
    unsigned = Alert(
        alert_id=alert_id,
        severity=severity.value,
        code=code,
        subject_kind=subject_kind,
        subject_id=subject_id,
        summary=summary[:1024],
        ts_ms=ts_ms,
        source_kind=source_kind,
        source_id=source_id,
        signer=identity.public_key,
        details=dict(details or {}),
    )
    return replace(unsigned, sig=identity.sign(unsigned.signing_bytes()))
