from __future__ import annotations

import dataclasses

import pytest

from schemas.alerts import Alert, Severity, sign_alert
from schemas.errors import CodecError
from schemas.identity import AgentIdentity


def _alert(identity: AgentIdentity) -> Alert:
    return sign_alert(
        identity,
        alert_id="a1",
        severity=Severity.CRITICAL,
        code="BYZANTINE_VOTE",
        subject_kind="verifier",
        subject_id="v3",
        summary="voted against",
        ts_ms=5,
        source_kind="anomaly",
        source_id="anomaly1",
        details={"request_id": "r1"},
    )


def test_roundtrip_keeps_a_valid_signature() -> None:
    alert = _alert(AgentIdentity.generate())
    back = Alert.decode(alert.encode())
    assert back == alert
    assert back.signature_ok()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("severity", "low"),
        ("code", "ALL_CLEAR"),
        ("subject_id", "v4"),
        ("summary", "fine"),
        ("ts_ms", 6),
        ("details", {"request_id": "r2"}),
    ],
)
def test_any_changed_field_breaks_the_signature(field: str, value: object) -> None:
    alert = _alert(AgentIdentity.generate())
    assert not dataclasses.replace(alert, **{field: value}).signature_ok()


def test_another_signer_key_breaks_the_signature() -> None:
    alert = _alert(AgentIdentity.generate())
    other = AgentIdentity.generate().public_key
    assert not dataclasses.replace(alert, signer=other).signature_ok()


@pytest.mark.parametrize(
    "bad", [{"severity": "urgent"}, {"v": 2}, {"sig": b"x" * 63}, {"signer": b"k" * 31}]
)
def test_strict_decoding(bad: dict[str, object]) -> None:
    wire = {**_alert(AgentIdentity.generate()).to_wire(), **bad}
    with pytest.raises(CodecError):
        Alert.from_wire(wire)
