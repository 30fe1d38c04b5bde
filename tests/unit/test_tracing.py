"""Trace context helpers and OTEL_* parsing: pure, table-driven."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanContext, TraceFlags

from bus import tracing
from bus.tracing import (
    NO_CONTEXT,
    format_traceparent,
    format_traceparents,
    parse_traceparent,
    parse_traceparents,
)

TID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SID = 0x00F067AA0BA902B7
GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ctx(trace_id: int = TID, span_id: int = SID, flags: int = 1) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (GOOD, ctx()),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", ctx(flags=0)),
        (" " + GOOD + " ", ctx()),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # unknown version
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # uppercase
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # zero span id
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),  # short trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", None),  # short span id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", None),  # short flags
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01", None),  # not hex
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),  # missing part
        ("", None),
        (NO_CONTEXT, None),
    ],
)
def test_parse_traceparent(value: str, expected: SpanContext | None) -> None:
    got = parse_traceparent(value)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.trace_id, got.span_id, got.trace_flags, got.is_remote) == (
            expected.trace_id,
            expected.span_id,
            expected.trace_flags,
            True,
        )


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (ctx(), GOOD),
        (ctx(flags=0), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        (ctx(trace_id=1, span_id=2), "00-00000000000000000000000000000001-0000000000000002-01"),
        (None, NO_CONTEXT),
        (SpanContext(0, 0, is_remote=False), NO_CONTEXT),  # invalid
    ],
)
def test_format_traceparent(context: SpanContext | None, expected: str) -> None:
    assert format_traceparent(context) == expected


def test_traceparent_round_trip() -> None:
    contexts = [ctx(), None, ctx(trace_id=7, span_id=9, flags=0)]
    parsed = parse_traceparents(format_traceparents(contexts), 3)
    assert [format_traceparent(c) for c in parsed] == [format_traceparent(c) for c in contexts]


@pytest.mark.parametrize(
    ("value", "expected", "valid"),
    [
        (None, 2, [False, False]),
        ("", 2, [False, False]),
        (f"{GOOD},{GOOD}", 2, [True, True]),
        (f"{GOOD},-", 2, [True, False]),
        (f"-,{GOOD}", 2, [False, True]),
        (f"{GOOD},garbage", 2, [True, False]),  # a bad entry spoils only its place
        (f"{GOOD},{GOOD},{GOOD}", 2, [False, False]),  # wrong count: all ignored
        (GOOD, 2, [False, False]),
        (GOOD, 0, []),
        (",".join([GOOD] * 5000), 5000, [False] * 5000),  # more than MAX_TRACEPARENTS
    ],
)
def test_parse_traceparents(value: str | None, expected: int, valid: list[bool]) -> None:
    got = parse_traceparents(value, expected)
    assert [c is not None for c in got] == valid


@pytest.mark.parametrize(
    ("env", "signal", "expected"),
    [
        ({}, "traces", []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, "traces", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, "metrics", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, "traces", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, "metrics", []),
        ({"OTEL_TRACES_EXPORTER": "console"}, "traces", ["console"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, "metrics", []),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console "}, "traces", ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, "traces", []),
        (
            {"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            "metrics",
            [],
        ),
        (
            {"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            "traces",
            ["otlp"],
        ),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, "traces", []),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, "metrics", []),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, "traces", ["console"]),
    ],
)
def test_exporters_from_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], signal: str, expected: list[str]
) -> None:
    for key in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tracing._exporters(signal) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "agentic-payments-tally"),
        ({"OTEL_SERVICE_NAME": "pay-tally"}, "pay-tally"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"},
            "from-attrs",
        ),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "wins"},
            "wins",
        ),
    ],
)
def test_service_name(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resource = tracing._resource("agentic-payments-tally", {"service.instance.id": "t1-abc"})
    assert resource.attributes["service.name"] == expected
    assert resource.attributes["service.instance.id"] == "t1-abc"


@pytest.mark.parametrize(
    ("env", "available"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        ({}, True),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            True,
        ),
    ],
)
def test_otlp_protocol(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], available: bool
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exporter = tracing._otlp_exporter("traces")
    assert (exporter is not None) is available
    if exporter is not None:
        exporter.shutdown()


@pytest.mark.parametrize(("ratio", "expected"), [("0.0", False), ("1.0", True)])
def test_a_remote_sampled_flag_does_not_force_sampling(
    monkeypatch: pytest.MonkeyPatch, ratio: str, expected: bool
) -> None:
    from opentelemetry import trace as api
    from opentelemetry.sdk.trace.sampling import Decision

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    sampler = tracing.untrusted_parent_sampler()
    parent = api.set_span_in_context(
        api.NonRecordingSpan(
            api.SpanContext(
                trace_id=0x1234,
                span_id=0x5678,
                is_remote=True,
                trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED),
            )
        )
    )
    result = sampler.should_sample(parent, 0x1234, "process ap.verify.request")
    assert (result.decision == Decision.RECORD_AND_SAMPLE) is expected


def test_other_samplers_are_left_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert tracing.untrusted_parent_sampler() is None
