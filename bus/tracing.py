"""OpenTelemetry for the workers: set-up from OTEL_* env, trace context in NATS headers.

Set-up reads only the standard variables (``setup_tracing`` / ``setup_metrics``):

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp``, ``console`` or
  ``none`` (comma separated lists are allowed). Unset means ``otlp`` when an OTLP
  endpoint is set, else nothing.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal ``..._TRACES_ENDPOINT`` /
  ``..._METRICS_ENDPOINT``), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``;
  ``grpc`` needs opentelemetry-exporter-otlp-proto-grpc), ``OTEL_EXPORTER_OTLP_HEADERS``
  — read by the OTLP exporters themselves.
- ``OTEL_SERVICE_NAME`` (default ``agentic-payments-{kind}``),
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``/``_ARG``,
  ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_BSP_*`` — read by the SDK.

Disabled (nothing set) the hot paths check ``tracing_active()`` — one global
lookup — and create no span, inject no header and parse nothing.

Span shape (messaging semantic conventions: span name ``"{operation.name}
{destination}"``, ``messaging.system = nats``, ``messaging.operation.type`` =
send / receive / process). A ballot batches many requests, so trace context
for each request travels *per request* in the ballot and the vote: the
header ``ap-traceparents`` holds one W3C traceparent per request of the ballot,
in ballot order (``-`` for an untraced request). Every request therefore has
its own complete trace — client ``send`` → tally ``process`` → tally ``send``
ballot → each verifier's ``process`` ballot → tally ``process`` votes (linked
to the verifier spans) → tally ``send`` reply → client ``receive`` — while the
spans of one ballot share ``messaging.message.id = ballot id``. The standard
``traceparent`` header of a ballot names the first request's ballot span, so
a consumer that only knows W3C still joins a trace.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

log = logging.getLogger("agentic_payments.tracing")
TRACER_NAME = "agentic-payments"
METER_NAME = "agentic-payments"
#: NATS header carrying one W3C traceparent per request of a ballot or vote.
TRACEPARENTS_HEADER = "ap-traceparents"
#: Placeholder in ``ap-traceparents`` for a request without (sampled) context.
NO_CONTEXT = "-"
#: Most traceparents read from one header (the ballot limit is far lower).
MAX_TRACEPARENTS = 4096
#: Longest a stopping worker waits for buffered spans and metrics to be exported.
SHUTDOWN_TIMEOUT_S = 5.0
_traces_on = False
_metrics_on = False


# ---------------------------------------------------------------- configuration
def _exporters(signal: str) -> list[str]:
    """Exporter names for ``signal`` (traces/metrics) from OTEL_* (pure env reading)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []  # the standard kill switch
    raw = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if raw:
        names = [n.strip() for n in raw.split(",") if n.strip()]
        return [] if "none" in names else names
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return ["otlp"] if endpoint else []


def _protocol(signal: str) -> str:
    return (
        (
            os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        .strip()
        .lower()
    )


def _resource(service_name: str, extra: Mapping[str, str] | None = None) -> Any:
    from opentelemetry.sdk.resources import Resource

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; attributes
    # passed in would override both, so the default name is passed only if neither names one.
    named = os.environ.get("OTEL_SERVICE_NAME") or any(
        item.split("=", 1)[0].strip() == "service.name"
        for item in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    )
    attrs: dict[str, Any] = dict(extra or {})
    if not named:
        attrs["service.name"] = service_name
    return Resource.create(attrs)


def _otlp_exporter(signal: str) -> Any:
    """An OTLP exporter for ``traces`` or ``metrics``, or None (logged) if unusable."""
    protocol = _protocol(signal)
    module = "trace_exporter" if signal == "traces" else "metric_exporter"
    cls = "OTLPSpanExporter" if signal == "traces" else "OTLPMetricExporter"
    if protocol == "grpc":
        package = "opentelemetry.exporter.otlp.proto.grpc"
        hint = "opentelemetry-exporter-otlp-proto-grpc"
    elif protocol in ("http/protobuf", "http"):
        package = "opentelemetry.exporter.otlp.proto.http"
        hint = "agentic-payments[otlp]"
    else:
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf, grpc); no %s exported",
            protocol,
            signal,
        )
        return None
    try:
        mod = __import__(f"{package}.{module}", fromlist=[cls])
    except ImportError:
        log.warning(
            "OTLP %s export requested but %s is not installed: pip install '%s'",
            signal,
            package,
            hint,
        )
        return None
    return getattr(mod, cls)()


def untrusted_parent_sampler() -> Any:
    """For ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``: a remote parent's sampled
    flag does not decide (a client could otherwise force 100 % tracing of its
    requests, and tracing costs about as much CPU as the decision); the trace id
    ratio does, for remote parents as for roots. The decision depends only on the
    trace id, so processes configured alike still keep a sampled trace whole.
    Any other sampler setting: None (the SDK reads OTEL_TRACES_SAMPLER itself).
    """
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() != "parentbased_traceidratio":
        return None
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    ratio = min(max(ratio, 0.0), 1.0)
    by_id = TraceIdRatioBased(ratio)
    return ParentBased(root=by_id, remote_parent_sampled=by_id, remote_parent_not_sampled=by_id)


def setup_tracing(service_name: str, resource: Mapping[str, str] | None = None) -> bool:
    """Install an SDK TracerProvider when OTEL_* asks for export. Returns whether it did."""
    global _traces_on
    if _traces_on:
        return True
    names = _exporters("traces")
    if not names:
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # shutdown_on_exit=False: the SDK's own atexit shutdown is unbounded (see shutdown_telemetry)
    provider = TracerProvider(
        resource=_resource(service_name, resource),
        shutdown_on_exit=False,
        sampler=untrusted_parent_sampler(),
    )
    added = 0
    for name in names:
        exporter: Any = None
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            exporter = _otlp_exporter("traces")
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
            added += 1
    if not added:
        return False
    trace.set_tracer_provider(provider)
    _traces_on = True
    return True


def setup_metrics(service_name: str, resource: Mapping[str, str] | None = None) -> bool:
    """Install an SDK MeterProvider when OTEL_* asks for metric export."""
    global _metrics_on
    if _metrics_on:
        return True
    names = _exporters("metrics")
    if not names:
        return False
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    readers = []
    for name in names:
        exporter: Any = None
        if name == "console":
            exporter = ConsoleMetricExporter()
        elif name == "otlp":
            exporter = _otlp_exporter("metrics")
        else:
            log.warning("OTEL_METRICS_EXPORTER=%s is not supported (otlp, console, none)", name)
        if exporter is not None:  # the reader reads OTEL_METRIC_EXPORT_INTERVAL
            readers.append(PeriodicExportingMetricReader(exporter))
    if not readers:
        return False
    metrics.set_meter_provider(
        MeterProvider(
            resource=_resource(service_name, resource),
            metric_readers=readers,
            shutdown_on_exit=False,
        )
    )
    _metrics_on = True
    return True


def shutdown_telemetry(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush and stop the SDK providers *we* installed, waiting at most ``timeout_s``.

    A provider installed by a host program (or a test) is left to its owner.
    The bound matters: an unreachable collector makes the OTLP exporter retry
    with back-off for many seconds, and a worker asked to stop must still exit
    promptly (and with 0). What is not exported by then is lost, with a warning.
    """
    from opentelemetry import metrics

    providers = ([trace.get_tracer_provider()] if _traces_on else []) + (
        [metrics.get_meter_provider()] if _metrics_on else []
    )
    if not providers:
        return

    def shutdown_all() -> None:
        for provider in providers:
            shutdown = getattr(provider, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # an exporter failing at exit must not fail the worker
                    log.warning("telemetry shutdown failed", exc_info=True)

    worker = threading.Thread(target=shutdown_all, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning(
            "telemetry not flushed within %.1fs (is the OTLP endpoint reachable?); "
            "exiting without it",
            timeout_s,
        )


shutdown_tracing = shutdown_telemetry


def tracing_active() -> bool:
    """Whether spans would be recorded: an SDK provider is installed (by us or a host)."""
    if _traces_on:
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


# ---------------------------------------------------------------- propagation
def inject_headers(
    headers: dict[str, str] | None = None, context: Context | None = None
) -> dict[str, str]:
    """Headers carrying the current (or given) trace context."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def span_link(headers: Mapping[str, str] | None) -> Link | None:
    """A link to the span whose context travels in ``headers``, if any."""
    ctx = trace.get_current_span(extract_context(headers)).get_span_context()
    return Link(ctx) if ctx.is_valid else None


def format_traceparent(ctx: SpanContext | None) -> str:
    """The W3C traceparent of ``ctx``, or ``-`` if there is no valid context."""
    if ctx is None or not ctx.is_valid:
        return NO_CONTEXT
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """A remote SpanContext from a version-00 traceparent, or None if it is not one."""
    if value != value.lower():  # W3C: lowercase hex only
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or parts[0] != "00":
        return None
    _, trace_hex, span_hex, flags_hex = parts
    if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def format_traceparents(contexts: Sequence[SpanContext | None]) -> str:
    """The ``ap-traceparents`` header value: one entry per request, comma separated."""
    return ",".join(format_traceparent(c) for c in contexts)


def parse_traceparents(value: str | None, expected: int) -> list[SpanContext | None]:
    """Per-request contexts from an ``ap-traceparents`` value.

    A missing value, a wrong number of entries or more than MAX_TRACEPARENTS
    yields ``expected`` Nones (trace context is advisory: never an error);
    a malformed entry yields None at its place.
    """
    if not value or expected <= 0 or expected > MAX_TRACEPARENTS:
        return [None] * max(expected, 0)
    items = value.split(",", MAX_TRACEPARENTS)
    if len(items) != expected:
        return [None] * expected
    return [None if item == NO_CONTEXT else parse_traceparent(item) for item in items]


def context_of(span_context: SpanContext | None) -> Context | None:
    """A parent Context for a remote span context (None stays None)."""
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


# ---------------------------------------------------------------- spans
def messaging_attributes(
    operation: str, subject: str, attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    attrs.update(attributes or {})
    return attrs


def start_messaging_span(
    operation: str,
    subject: str,
    *,
    kind: SpanKind,
    parent: Context | None = None,
    links: list[Link] | None = None,
    attributes: Mapping[str, Any] | None = None,
    name: str | None = None,
    start_time: int | None = None,
) -> Span:
    """A started (not current) messaging span; the caller ends it."""
    return tracer().start_span(
        name or f"{operation} {subject}",
        context=parent,
        kind=kind,
        links=links,
        start_time=start_time,
        attributes=messaging_attributes(operation, subject, attributes),
    )


@contextmanager
def messaging_span(
    operation: str,
    subject: str,
    *,
    kind: SpanKind,
    parent: Context | None = None,
    links: list[Link] | None = None,
    attributes: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Iterator[Span]:
    with tracer().start_as_current_span(
        name or f"{operation} {subject}",
        context=parent,
        kind=kind,
        links=links,
        attributes=messaging_attributes(operation, subject, attributes),
    ) as span:
        yield span
