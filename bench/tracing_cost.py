"""CPU cost of the tracing code paths, in-process, per request (prints JSON).

    python bench/tracing_cost.py [--batch 64] [--rounds 200]

Measures what a worker pays per request for its spans, with the SDK's
BatchSpanProcessor and an exporter that (a) drops spans ("sdk") or (b) also
encodes them to OTLP protobuf like the OTLP/HTTP exporter does before sending
("sdk+otlp_encode", needs the otlp extra). "off" is the disabled path (no SDK
provider: one ``tracing_active()`` check). The tally's four spans per request
(process, ballot send, votes process, reply send) and a verifier's one span
per request of a ballot are built with the same helpers the workers use.
Complements bench/consensus.py, whose end-to-end numbers on a shared 2-core
machine are too noisy to isolate a few microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from bus import tracing  # noqa: E402
from bus.tracing import (  # noqa: E402
    context_of,
    format_traceparents,
    parse_traceparents,
    start_messaging_span,
)


class DropExporter(SpanExporter):
    def __init__(self, encode: bool) -> None:
        self.encode = encode
        self.spans = 0
        if encode:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            self._encode = encode_spans

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        if self.encode:
            self._encode(spans).SerializeToString()
        return SpanExportResult.SUCCESS


class Provider:
    """Swap the global tracer provider (the API allows setting it once)."""

    def __init__(self) -> None:
        self.current: Any = None

    def use(self, provider: Any) -> None:
        trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
        self.current = provider


def tally_request(batch: int) -> None:
    """The tally's spans for ``batch`` requests of one ballot (same shapes as the worker)."""
    if not tracing.tracing_active():
        return
    process = [
        start_messaging_span(
            "process",
            "ap.verify.request",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.consumer.group.name": "tally",
                "messaging.message.conversation_id": "r",
            },
        )
        for _ in range(batch)
    ]
    process = [p for p in process if p.is_recording()]  # as the tally: unsampled → no more
    sends = [
        start_messaging_span(
            "send",
            "ap.ballot",
            kind=SpanKind.PRODUCER,
            parent=trace.set_span_in_context(p),
            attributes={"messaging.message.id": "b", "agentic_payments.ballot_index": i},
        )
        for i, p in enumerate(process)
    ]
    format_traceparents([s.get_span_context() for s in sends])
    for s in sends:
        s.end()
    for p in process:
        start_messaging_span(
            "process",
            "ap.vote.t1",
            kind=SpanKind.CONSUMER,
            parent=trace.set_span_in_context(p),
            attributes={"agentic_payments.decision": "VALID"},
        ).end()
        reply = start_messaging_span(
            "send", "_INBOX.x", kind=SpanKind.PRODUCER, parent=trace.set_span_in_context(p)
        )
        tracing.inject_headers(context=trace.set_span_in_context(reply))
        reply.end()
        p.end()


def verifier_ballot(header: str, batch: int) -> None:
    if not tracing.tracing_active():
        return
    contexts = parse_traceparents(header, batch)
    spans = [
        start_messaging_span(
            "process",
            "ap.ballot",
            kind=SpanKind.CONSUMER,
            parent=context_of(c),
            attributes={"messaging.message.id": "b", "agentic_payments.ballot_index": i},
        )
        for i, c in enumerate(contexts)
        if c is not None and c.trace_flags.sampled
    ]
    format_traceparents([s.get_span_context() for s in spans])
    for s in spans:
        s.set_attributes({"agentic_payments.valid": True, "agentic_payments.reason": "OK"})
        s.end()


def cpu_us(
    make_provider: Callable[[], Any],
    swap: Provider,
    fn: Callable[[], None],
    batch: int,
    rounds: int,
) -> float:
    """Median over 5 samples of process CPU time (all threads, including the export
    thread and the final flush) per request."""
    samples = []
    for _ in range(5):
        provider = make_provider()
        swap.use(provider)
        start = time.process_time()
        for _ in range(rounds):
            fn()
        shutdown = getattr(provider, "shutdown", None)
        if callable(shutdown):
            shutdown()  # export (and encode) everything still queued
        samples.append((time.process_time() - start) / (rounds * batch) * 1e6)
    return round(statistics.median(samples), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="requests per ballot (64)")
    p.add_argument("--rounds", type=int, default=100, help="ballots per sample (100)")
    args = p.parse_args()
    swap = Provider()
    header = ",".join(f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(args.batch))
    unsampled = header.replace("-01,", "-00,")[:-2] + "00"
    results: dict[str, Any] = {
        "batch": args.batch,
        "rounds": args.rounds,
        "unit": "CPU microseconds per request (median of 5)",
    }

    def tally() -> None:
        tally_request(args.batch)

    def verifier() -> None:
        verifier_ballot(header, args.batch)

    def verifier_unsampled() -> None:
        verifier_ballot(unsampled, args.batch)

    def off() -> Any:
        tracing._traces_on = False
        return trace.NoOpTracerProvider()

    results["off"] = {
        "tally": cpu_us(off, swap, tally, args.batch, args.rounds),
        "verifier": cpu_us(off, swap, verifier, args.batch, args.rounds),
    }
    modes = [("sdk", False)]
    try:
        import opentelemetry.exporter.otlp.proto.common.trace_encoder  # noqa: F401

        modes.append(("sdk+otlp_encode", True))
    except ImportError:
        pass
    for name, encode in modes:

        def make(encode: bool = encode, sampler: Any = None) -> Any:
            provider = TracerProvider(shutdown_on_exit=False, sampler=sampler)
            provider.add_span_processor(
                BatchSpanProcessor(DropExporter(encode), max_queue_size=1 << 20)
            )
            return provider

        results[name] = {
            "tally": cpu_us(make, swap, tally, args.batch, args.rounds),
            "verifier": cpu_us(make, swap, verifier, args.batch, args.rounds),
            "tally_unsampled": cpu_us(
                lambda: make(sampler=ALWAYS_OFF), swap, tally, args.batch, args.rounds
            ),
            "verifier_unsampled_ballot": cpu_us(
                make, swap, verifier_unsampled, args.batch, args.rounds
            ),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
