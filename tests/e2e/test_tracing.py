"""One trace per request across real processes, exported over real OTLP/HTTP.

Tally, three verifiers and a client run as separate processes configured only
by OTEL_* variables; they export to an OTLP/HTTP receiver started here (a
stdlib HTTP server decoding the protobuf, tests/otlp_receiver.py). Every
request must come back as one trace: client send → tally process → ballot send
→ every verifier's process → tally process votes (linked to the counted
verifier spans) → reply send → client receive, with the messaging attributes.
Worker metrics must arrive through the OTel SDK too.

The opt-in Phoenix test sends the same traces to Arize Phoenix, a real OTLP
backend, and reads them back from its REST API: set AP_TEST_PHOENIX to the
``phoenix`` executable (installed in its own venv, see docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.identity import AgentIdentity
from tests.helpers import ROOT, Cluster

pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http",
    reason="needs the otlp extra: pip install -e '.[otlp]'",
)
from tests.otlp_receiver import OtlpReceiver, SpanRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VERIFIERS = 3


@dataclass
class TracedCluster(Cluster):
    otel_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = super().env()
        for key in [k for k in env if k.startswith("OTEL_")]:
            del env[key]
        env.update(self.otel_env)
        return env


def otel_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


async def run_system_and_client(c: TracedCluster, count: int, invalid: int) -> list[dict[str, str]]:
    for i in range(1, VERIFIERS + 1):
        c.start_verifier(f"v{i}")
    await c.wait_pool(VERIFIERS)
    c.start_tally("t1")
    await c.wait_tally()
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "workers.cli",
            "trace",
            "--count",
            str(count),
            "--invalid",
            str(invalid),
            "--json",
        ],
        env=c.env(),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    requests: list[dict[str, str]] = json.loads(proc.stdout)["requests"]
    assert len(requests) == count
    assert all(r["decision"] == r["expected"] for r in requests)
    return requests


def one(spans: list[SpanRecord], what: str, pred: Callable[[SpanRecord], bool]) -> SpanRecord:
    found = [s for s in spans if pred(s)]
    assert len(found) == 1, f"{what}: {len(found)} spans {[s.name for s in spans]}"
    return found[0]


def request_trace(spans: list[SpanRecord], trace_id: str) -> list[SpanRecord]:
    """All spans of one trace (the trace id the ``trace`` command printed)."""
    return [s for s in spans if s.trace_id == trace_id]


def trace_complete(trace: list[SpanRecord], prefix: str) -> bool:
    names = [s.name for s in trace]
    return (
        names.count(f"process {prefix}.ballot") >= VERIFIERS
        and "receive _INBOX" in names
        and "send _INBOX" in names
    )


def check_trace(
    trace: list[SpanRecord],
    prefix: str,
    request_id: str,
    decision: str,
    service: Callable[[SpanRecord], str] = lambda s: s.service,
) -> None:
    """The whole request path in one trace, parents right, messaging attributes set."""
    assert len({s.trace_id for s in trace}) == 1
    for s in trace:
        if s.name == "agentic-payments trace":
            continue
        assert s.attributes.get("messaging.system") == "nats", s
        assert s.attributes.get("messaging.operation.type") in ("send", "receive", "process")
        assert s.span_id and s.end_ns >= s.start_ns
    root = one(trace, "root", lambda s: not s.parent_span_id)
    assert (root.name, service(root)) == ("agentic-payments trace", "agentic-payments-client")
    send = one(trace, "client send", lambda s: s.name == f"send {prefix}.verify.request")
    assert (send.kind, service(send)) == ("CLIENT", "agentic-payments-client")
    assert send.parent_span_id == root.span_id
    assert send.attributes["messaging.message.conversation_id"] == request_id
    assert send.attributes["messaging.destination.name"] == f"{prefix}.verify.request"
    process = one(trace, "tally process", lambda s: s.name == f"process {prefix}.verify.request")
    assert (process.kind, service(process)) == ("CONSUMER", "agentic-payments-tally")
    assert process.parent_span_id == send.span_id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.consumer.group.name"] == "tally"
    assert process.attributes["messaging.message.conversation_id"] == request_id
    assert process.attributes["agentic_payments.decision"] == decision
    ballot = one(trace, "ballot send", lambda s: s.name == f"send {prefix}.ballot")
    assert (ballot.kind, service(ballot)) == ("PRODUCER", "agentic-payments-tally")
    assert ballot.parent_span_id == process.span_id
    ballot_id = ballot.attributes["messaging.message.id"]
    verifiers = [s for s in trace if s.name == f"process {prefix}.ballot"]
    assert len(verifiers) == VERIFIERS, verifiers
    for v in verifiers:
        assert (v.kind, service(v)) == ("CONSUMER", "agentic-payments-verifier")
        assert v.parent_span_id == ballot.span_id
        assert v.attributes["messaging.message.id"] == ballot_id
        assert v.attributes["agentic_payments.valid"] is (decision == "VALID")
    assert len({v.attributes["agentic_payments.verifier_key"] for v in verifiers}) == VERIFIERS
    votes = one(trace, "votes", lambda s: s.name == f"process {prefix}.vote.t1")
    assert (votes.kind, service(votes)) == ("CONSUMER", "agentic-payments-tally")
    assert votes.parent_span_id == process.span_id
    assert votes.attributes["agentic_payments.decision"] == decision
    q = votes.attributes["agentic_payments.q"]
    linked = {span_id for _, span_id in votes.links}
    assert len(linked) >= q and linked <= {v.span_id for v in verifiers}
    reply = one(trace, "reply send", lambda s: s.name == "send _INBOX")
    assert (reply.kind, service(reply)) == ("PRODUCER", "agentic-payments-tally")
    assert reply.parent_span_id == process.span_id
    assert reply.attributes["messaging.destination.temporary"] is True
    receive = one(trace, "client receive", lambda s: s.name == "receive _INBOX")
    assert (receive.kind, service(receive)) == ("CLIENT", "agentic-payments-client")
    assert receive.parent_span_id == send.span_id
    assert [span_id for _, span_id in receive.links] == [reply.span_id]
    order = [send, process, ballot, *verifiers, votes, reply, receive]
    assert all(s.start_ns >= send.start_ns for s in order)  # one clock on one machine


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)  # 32 s under load
async def test_one_trace_per_request_across_processes(
    receiver: OtlpReceiver, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    c = TracedCluster(
        nats_url=nats_url, prefix=prefix, data_dir=tmp_path, otel_env=otel_env(receiver.endpoint)
    )
    try:
        results = await run_system_and_client(c, count=6, invalid=2)
        assert sorted(r["decision"] for r in results) == ["INVALID"] * 2 + ["VALID"] * 4
        assert len({r["trace_id"] for r in results}) == len(results)

        def all_traces_complete() -> bool:
            spans, _ = receiver.snapshot()
            return all(trace_complete(request_trace(spans, r["trace_id"]), prefix) for r in results)

        await wait_for(all_traces_complete, "every request's spans")
        spans, _ = receiver.snapshot()
        traces = set()
        for r in results:
            trace = request_trace(spans, r["trace_id"])
            check_trace(trace, prefix, r["request_id"], r["decision"])
            traces.add(r["trace_id"])
        assert len(traces) == len(results)  # one trace per request, not one per ballot
        instances = {
            s.resource["service.instance.id"]
            for s in spans
            if s.service == "agentic-payments-verifier"
        }
        assert len(instances) == VERIFIERS

        def metrics_arrived() -> bool:
            _, metrics = receiver.snapshot()
            got = {(m.service, m.name) for m in metrics if m.points}
            return {
                ("agentic-payments-tally", "ap.worker.tasks"),
                ("agentic-payments-tally", "ap.worker.processing.duration"),
                ("agentic-payments-tally", "ap.tally.pending"),
                ("agentic-payments-tally", "ap.tally.pool_size"),
                ("agentic-payments-verifier", "ap.worker.tasks"),
                ("agentic-payments-verifier", "ap.worker.events"),
                ("agentic-payments-verifier", "ap.verifier.remembered_votes"),
            } <= got

        await wait_for(metrics_arrived, "worker metrics")
    finally:
        codes = c.stop_all()
    assert all(code == 0 for code in codes.values()), codes


async def test_worker_stops_promptly_when_the_collector_is_down(
    nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """An unreachable OTLP endpoint makes the exporter retry with back-off; a worker
    asked to stop must still exit 0 quickly (bounded flush, no atexit hang)."""
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    c = TracedCluster(nats_url=nats_url, prefix=prefix, data_dir=tmp_path, otel_env=otel_env(dead))
    try:
        c.start_verifier("v1")
        await c.wait_pool(1)
        await wait_for(
            lambda: (
                "Transient error" in c.log("verifier-v1")
                or "Failed to export" in c.log("verifier-v1")
            ),
            "a failed export",
        )
    finally:
        started = time.monotonic()
        codes = c.stop_all(timeout=30)
        took = time.monotonic() - started
    assert codes == {"verifier-v1": 0}, c.log("verifier-v1")
    assert took < 15, took


# ------------------------------------------------------------------ Phoenix (opt-in)
PHOENIX = os.environ.get("AP_TEST_PHOENIX", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def phoenix_spans(base: str) -> list[SpanRecord]:
    """All spans of the default project, read back through Phoenix's REST API."""
    records: list[SpanRecord] = []
    cursor = ""
    while True:
        page = _get_json(
            f"{base}/v1/projects/default/spans?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        )
        for s in page["data"]:
            attrs = _flatten(s.get("attributes") or {})
            records.append(
                SpanRecord(
                    trace_id=s["context"]["trace_id"],
                    span_id=s["context"]["span_id"],
                    parent_span_id=s.get("parent_id") or "",
                    name=s["name"],
                    kind=str(s.get("span_kind", "")).upper(),
                    service=str(attrs.get("service.name", "")),
                    resource={},
                    attributes=attrs,
                    links=(),
                    start_ns=0,
                    end_ns=0,
                )
            )
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return records


def _flatten(attrs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.skipif(
    not PHOENIX,
    reason="set AP_TEST_PHOENIX=/path/to/phoenix (an Arize Phoenix "
    "install in its own venv) to run the real-backend tracing test",
)
async def test_traces_reach_phoenix(nats_url: str, prefix: str, tmp_path: Path) -> None:
    port, grpc_port = _free_port(), _free_port()
    env = dict(
        os.environ,
        PHOENIX_WORKING_DIR=str(tmp_path / "phoenix"),
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc_port),
    )
    log = (tmp_path / "phoenix.log").open("wb")
    server = subprocess.Popen(  # noqa: ASYNC220 (a server we keep running, not awaited)
        [PHOENIX, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    c = TracedCluster(nats_url=nats_url, prefix=prefix, data_dir=tmp_path, otel_env=otel_env(base))
    try:

        def up() -> bool:
            assert server.poll() is None, (tmp_path / "phoenix.log").read_text()
            try:
                _get_json(f"{base}/v1/projects")
                return True
            except OSError:
                return False

        await wait_for(up, "phoenix to serve", timeout=120)
        results = await run_system_and_client(c, count=3, invalid=1)

        def complete() -> bool:
            spans = phoenix_spans(base)
            return all(trace_complete(request_trace(spans, r["trace_id"]), prefix) for r in results)

        await wait_for(complete, "spans in phoenix", timeout=60)
        spans = phoenix_spans(base)
        for r in results:
            trace = request_trace(spans, r["trace_id"])
            names = sorted(s.name for s in trace)
            assert names == sorted(
                [
                    "agentic-payments trace",
                    f"send {prefix}.verify.request",
                    f"process {prefix}.verify.request",
                    f"send {prefix}.ballot",
                    *[f"process {prefix}.ballot"] * VERIFIERS,
                    f"process {prefix}.vote.t1",
                    "send _INBOX",
                    "receive _INBOX",
                ]
            ), names
            by_id = {s.span_id: s for s in trace}
            root = [s for s in trace if not s.parent_span_id]
            assert [s.name for s in root] == ["agentic-payments trace"]
            assert all(s.parent_span_id in by_id for s in trace if s.parent_span_id)
            # Phoenix keeps span attributes (not resource ones, nor links, and reports
            # its own span kinds): check the messaging ones and the parents by name
            parent_name = {s.name: by_id[s.parent_span_id].name for s in trace if s.parent_span_id}
            assert parent_name == {
                f"send {prefix}.verify.request": "agentic-payments trace",
                f"process {prefix}.verify.request": f"send {prefix}.verify.request",
                f"send {prefix}.ballot": f"process {prefix}.verify.request",
                f"process {prefix}.ballot": f"send {prefix}.ballot",
                f"process {prefix}.vote.t1": f"process {prefix}.verify.request",
                "send _INBOX": f"process {prefix}.verify.request",
                "receive _INBOX": f"send {prefix}.verify.request",
            }
            assert all(
                s.attributes.get("messaging.system") == "nats" for s in trace if s.parent_span_id
            )
            verifiers = [s for s in trace if s.name == f"process {prefix}.ballot"]
            assert (
                len({v.attributes["agentic_payments.verifier_key"] for v in verifiers}) == VERIFIERS
            )
            assert all(
                v.attributes["agentic_payments.valid"] is (r["decision"] == "VALID")
                for v in verifiers
            )
    finally:
        c.stop_all()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


async def test_verify_command_is_traced_into_the_tally(
    receiver: OtlpReceiver, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """`agentic-payments verify` exports its client span when OTEL_* asks, and the
    tally's spans join the same trace."""
    c = TracedCluster(
        nats_url=nats_url, prefix=prefix, data_dir=tmp_path, otel_env=otel_env(receiver.endpoint)
    )
    try:
        await c.start_system(VERIFIERS)
        key = tmp_path / "agent.key"
        AgentIdentity.load_or_create(key)
        run = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "workers.cli",
                "verify",
                "--key",
                str(key),
                "--message",
                "pay 1",
                "--timeout",
                "15",
            ],
            env=c.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr

        def joined() -> bool:
            spans, _ = receiver.snapshot()
            clients = [s for s in spans if s.service == "agentic-payments-client"]
            tally = {s.trace_id for s in spans if s.service == "agentic-payments-tally"}
            return any(s.trace_id in tally for s in clients)

        await wait_for(joined, "the verify command's trace in the tally")
    finally:
        codes = c.stop_all()
    assert all(code == 0 for code in codes.values()), codes
