"""Trace context in NATS headers (W3C traceparent) and OTel set-up from OTEL_* env.

Exporters are configured only by the standard variables: set
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_TRACES_EXPORTER=otlp|console``) and
spans are exported; leave them unset and tracing costs almost nothing (the
API's non-recording spans). Span names and attributes follow the OTel
messaging conventions: ``"{operation} {destination}"``, ``messaging.system =
nats``, ``messaging.operation.type`` = publish / process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind

log = logging.getLogger("agentic_payments.tracing")
TRACER_NAME = "agentic-payments"
_configured = False


def setup_tracing(service_name: str) -> bool:
    """Install an SDK TracerProvider when OTEL_* asks for export. Returns whether it did."""
    global _configured
    if _configured:
        return True
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporter_name in ("", "none") and not endpoint:
        return False
    if exporter_name == "none":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({}))
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP export requested but opentelemetry-exporter-otlp-proto-http "
                        "is not installed: pip install 'agentic-payments[otlp]'")
            return False
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject_headers(headers: dict[str, str] | None = None,
                   context: Context | None = None) -> dict[str, str]:
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


@contextmanager
def messaging_span(operation: str, subject: str, *, kind: SpanKind,
                   parent: Context | None = None, links: list[Link] | None = None,
                   attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    attrs: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }
    attrs.update(attributes or {})
    with tracer().start_as_current_span(f"{operation} {subject}", context=parent, kind=kind,
                                        links=links, attributes=attrs) as span:
        yield span
