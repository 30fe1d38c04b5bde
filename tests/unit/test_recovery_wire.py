"""Recovery wire messages (strict decoding, in step with asyncapi.yaml) and the pure parts of
the respawn backends (systemctl command, Kubernetes request, supervisor names)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from bus.subjects import check_token
from schemas.errors import (
    CodecError,
    ConfigError,
    PayloadTooLarge,
    RespawnFailed,
    SchemaViolation,
    UnsupportedVersion,
)
from schemas.recovery import (
    RECOVERY_MESSAGES,
    HistoryQuery,
    HistoryReply,
    RecoveryAttempt,
    RestartReply,
    RestartRequest,
)
from workers.recovery.backends import (
    host_token,
    pod_delete_request,
    systemctl_command,
    systemd_unit,
)
from workers.recovery.supervisor import ProcSpec

DOC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml").read_text()
)
ATTEMPT = RecoveryAttempt(
    kind="verifier",
    worker_id="v1",
    attempt=2,
    dead_generation=10,
    outcome="recovered",
    backend="local",
    recovery_id="r1",
    last_seen_ms=100,
    detected_ms=400,
    requested_ms=401,
    respawned_ms=450,
    first_heartbeat_ms=900,
    new_generation=11,
    detail="ok",
)
SAMPLES: dict[type, Any] = {
    RecoveryAttempt: ATTEMPT,
    HistoryQuery: HistoryQuery("verifier", "v1", 10),
    HistoryReply: HistoryReply((ATTEMPT, ATTEMPT)),
    RestartRequest: RestartRequest("tally", "t1", 5, "stale"),
    RestartReply: RestartReply(True, "RESTARTED", "tally", "t1", 42, 6, ""),
}


def schema_for(cls: type) -> dict[str, Any]:
    found = [
        s
        for s in DOC["components"]["schemas"].values()
        if s.get("x-python-class") == f"{cls.__module__}.{cls.__qualname__}"
    ]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("cls", RECOVERY_MESSAGES, ids=lambda c: c.__name__)
def test_documented_fields_are_the_fields(cls: type) -> None:
    schema = schema_for(cls)
    assert set(schema["properties"]) == set(cls.FIELDS)  # type: ignore[attr-defined]
    assert set(schema["required"]) == set(cls.FIELDS)  # type: ignore[attr-defined]
    assert schema["properties"]["type"]["const"] == cls.TYPE  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", RECOVERY_MESSAGES, ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    sample = SAMPLES[cls]
    assert cls.decode(sample.encode()) == sample  # type: ignore[attr-defined]


def test_documented_codec_limits() -> None:
    from dataclasses import asdict

    assert DOC["x-codec-limits"]["history"] == asdict(HistoryReply.LIMITS)


def mutate(cls: type, field: str, value: Any) -> dict[str, Any]:
    wire = copy.deepcopy(SAMPLES[cls].to_wire())
    if value is DELETE:
        wire.pop(field)
    else:
        wire[field] = value
    return wire


DELETE = object()


@pytest.mark.parametrize(
    ("cls", "field", "value", "error"),
    [
        (RecoveryAttempt, "v", 2, UnsupportedVersion),
        (RecoveryAttempt, "attempt", 0, SchemaViolation),
        (RecoveryAttempt, "attempt", "1", SchemaViolation),
        (RecoveryAttempt, "outcome", "maybe", SchemaViolation),
        (RecoveryAttempt, "dead_generation", -1, SchemaViolation),
        (RecoveryAttempt, "kind", "k" * 33, SchemaViolation),
        (RecoveryAttempt, "detail", "d" * 1025, SchemaViolation),
        (RecoveryAttempt, "detected_ms", DELETE, SchemaViolation),
        (HistoryQuery, "limit", 0, SchemaViolation),
        (HistoryQuery, "limit", 501, SchemaViolation),
        (HistoryQuery, "limit", True, SchemaViolation),
        (HistoryQuery, "kind", b"verifier", SchemaViolation),
        (HistoryQuery, "type", "recovery_history", SchemaViolation),
        (HistoryReply, "attempts", [{"type": "recovery_attempt", "v": 1}], SchemaViolation),
        (HistoryReply, "attempts", {}, SchemaViolation),
        (RestartRequest, "dead_generation", -1, SchemaViolation),
        (RestartRequest, "worker_id", "", SchemaViolation),
        (RestartRequest, "reason", "r" * 257, SchemaViolation),
        (RestartRequest, "v", None, SchemaViolation),
        (RestartReply, "code", "DONE", SchemaViolation),
        (RestartReply, "ok", 1, SchemaViolation),
    ],
)
def test_strict_decoding(cls: type, field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        cls.from_wire(mutate(cls, field, value))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cls", "data", "error"),
    [
        (HistoryQuery, b"\xc1", CodecError),
        (HistoryQuery, b"", CodecError),
        (
            RestartRequest,
            msgpack.packb({"type": "restart_request", "v": 1, "kind": "k" * 300_000}),
            PayloadTooLarge,
        ),
        (RestartRequest, msgpack.packb([1, 2]), SchemaViolation),
    ],
)
def test_malformed_bytes(cls: type, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        cls.decode(data)  # type: ignore[attr-defined]


def test_attempt_key_and_detection() -> None:
    assert ATTEMPT.key == "verifier.v1.10.2"
    assert ATTEMPT.as_dict()["detection_ms"] == 300


# ---------------------------------------------------------------- backends, pure parts
@pytest.mark.parametrize(
    ("kind", "worker_id", "user", "expected"),
    [
        (
            "verifier",
            "v1",
            False,
            ["systemctl", "restart", "--no-block", "agentic-payments-verifier@v1.service"],
        ),
        (
            "tally",
            "t-2",
            True,
            ["systemctl", "--user", "restart", "--no-block", "agentic-payments-tally@t-2.service"],
        ),
    ],
)
def test_systemctl_command(kind: str, worker_id: str, user: bool, expected: list[str]) -> None:
    assert systemctl_command("systemctl", systemd_unit(kind, worker_id), user=user) == expected


@pytest.mark.parametrize("worker_id", ["v1;rm -rf /", "../x", "", "a b"])
def test_systemd_unit_refuses_odd_names(worker_id: str) -> None:
    with pytest.raises(ConfigError):
        systemd_unit("verifier", worker_id)


@pytest.mark.parametrize(
    ("api", "ns", "pod", "url"),
    [
        (
            "https://10.0.0.1:443",
            "default",
            "ap-verifier-5d8f-abcde",
            "https://10.0.0.1:443/api/v1/namespaces/default/pods/ap-verifier-5d8f-abcde",
        ),
        (
            "http://127.0.0.1:8001/",
            "payments",
            "v1",
            "http://127.0.0.1:8001/api/v1/namespaces/payments/pods/v1",
        ),
    ],
)
def test_pod_delete_request(api: str, ns: str, pod: str, url: str) -> None:
    method, got, headers = pod_delete_request(api, ns, pod, "tok")
    assert (method, got) == ("DELETE", url)
    assert headers["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("ns", "pod", "error"),
    [
        ("Default", "p", ConfigError),
        ("ns", "Pod_1", RespawnFailed),
        ("ns", "../secrets", RespawnFailed),
        ("ns", "p" * 254, RespawnFailed),
    ],
)
def test_pod_delete_request_refuses_bad_names(ns: str, pod: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        pod_delete_request("https://k", ns, pod, "t")


@pytest.mark.parametrize(
    ("host", "token"),
    [
        ("node-1", "node-1"),
        ("node-1.example.com", "node-1"),
        ("My Laptop", "My_Laptop"),
        ("", "local"),
        ("x" * 100, "x" * 64),
    ],
)
def test_host_token(host: str, token: str) -> None:
    assert host_token(host) == token
    assert check_token(token, "supervisor name") == token


@pytest.mark.parametrize(
    ("args", "kind", "worker_id"),
    [
        (["worker", "verifier", "--id", "v3", "--heartbeat-s", "1"], "verifier", "v3"),
        (["worker", "recovery", "--id", "recovery1"], "recovery", "recovery1"),
        (["demo"], "", ""),
    ],
)
def test_proc_spec_identity(args: list[str], kind: str, worker_id: str) -> None:
    spec = ProcSpec("x", args)
    assert (spec.kind, spec.worker_id) == (kind, worker_id)
