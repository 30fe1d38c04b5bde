"""``agentic-payments trace``: send traced requests and print their trace ids.

The way to see one request's whole path in a tracing backend: it configures
OpenTelemetry from the same OTEL_* variables as the workers (service name
``agentic-payments-client``), submits ``--count`` signed requests (the first
``--invalid`` of them with a broken signature), flushes the spans and prints,
per request, its id, decision and trace id — look that id up in the backend. A
request that ended in an error shows the error's code as its decision and the
reason next to it.

Exit codes: 0 every request decided as expected (VALID, or INVALID for the
broken ones); 1 otherwise; 69 NATS or the tally unreachable; 78 tracing not
configured (no OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from opentelemetry import trace

from bus.client import VerifyClient, signed_request
from bus.tracing import setup_tracing, shutdown_telemetry, tracer
from schemas.errors import AgenticPaymentsError, ConfigError, NotConnected, TransportError
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from workers.cli.kit import (
    EXIT_NOT_VALID,
    attempt_timeout_option,
    json_option,
    nats_config,
    nats_options,
    output,
)

CLIENT_SERVICE = "agentic-payments-client"


def broken(request: VerificationRequest) -> VerificationRequest:
    """The same request with one signature bit flipped (decided INVALID)."""
    sig = bytes([request.signature[0] ^ 1]) + request.signature[1:]
    return VerificationRequest(request.request_id, request.message, sig, request.public_key)


async def _trace(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    identity = AgentIdentity.generate()
    requests = [signed_request(identity, f"traced payment {i}") for i in range(args.count)]
    requests = [broken(r) if i < args.invalid else r for i, r in enumerate(requests)]
    rows: list[dict[str, Any]] = []
    ok = True
    async with await VerifyClient.connect(nats_config(args), timeout=args.timeout) as client:

        async def one(i: int, request: VerificationRequest) -> None:
            nonlocal ok
            # A root span per request, so each request is its own trace.
            with tracer().start_as_current_span(
                "agentic-payments trace", context=trace.set_span_in_context(trace.INVALID_SPAN)
            ) as span:
                trace_id = f"{span.get_span_context().trace_id:032x}"
                expected = "INVALID" if i < args.invalid else "VALID"
                reason = ""
                try:
                    decision = (await client.verify_with_consensus(request)).decision
                except (NotConnected, TransportError):
                    raise
                except AgenticPaymentsError as exc:
                    # the code alone hid why (issue #11: a CERTIFICATE_INVALID nobody
                    # could explain); the reason is printed next to it
                    decision, reason = exc.code, str(exc)
                ok = ok and decision == expected
                rows.append(
                    {
                        "request_id": request.request_id,
                        "trace_id": trace_id,
                        "decision": decision,
                        "expected": expected,
                        "reason": reason,
                    }
                )

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    return (0 if ok else EXIT_NOT_VALID), {"requests": rows}


def cmd_trace(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 10_000 or not 0 <= args.invalid <= args.count:
        raise ConfigError("--count must be 1..10000 and --invalid 0..count")
    if not setup_tracing(CLIENT_SERVICE):
        raise ConfigError(
            "tracing is not configured: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. "
            "http://127.0.0.1:6006 for Phoenix) or OTEL_TRACES_EXPORTER=console"
        )
    try:
        code, data = asyncio.run(_trace(args))
    finally:
        shutdown_telemetry()
    human = "\n".join(
        f"{r['request_id']}  {r['decision']:<9} trace {r['trace_id']}"
        + (f"  ({r['reason']})" if r["reason"] else "")
        for r in data["requests"]
    )
    output(args, human, data)
    return code


def register(sub: Any, kinds: Any) -> None:
    """Add the ``trace`` command (see workers/cli/main.py EXTENSIONS)."""
    parser = sub.add_parser(
        "trace",
        help="send traced requests and print their trace ids",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nats_options(parser)
    parser.add_argument(
        "--count", type=int, default=3, help="requests to send (default %(default)s)"
    )
    parser.add_argument(
        "--invalid",
        type=int,
        default=1,
        help="how many of them carry a broken signature (default %(default)s)",
    )
    attempt_timeout_option(parser)
    json_option(parser)
    parser.set_defaults(func=cmd_trace)
