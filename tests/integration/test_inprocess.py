"""Tally + verifiers in one process against a real nats-server: the same code
paths as the e2e tests, but observable — trace propagation and counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.decisions import decision_key, scope_id
from bus.runtime import RuntimeConfig
from schemas.certificate import verify_certificate
from schemas.identity import AgentIdentity
from workers.consensus.tally import TallyOptions, TallyWorker
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture
async def system(nats_config: NatsConfig, tmp_path: Path) -> AsyncIterator[TallyWorker]:
    def rt(worker_id: str) -> RuntimeConfig:
        return RuntimeConfig(
            worker_id=worker_id, nats=nats_config, data_dir=tmp_path, drain_timeout_s=3
        )

    verifiers = [VerifierWorker(rt(f"v{i}")) for i in range(1, 5)]
    for v in verifiers:
        await v.start()
    tally = TallyWorker(rt("t1"), TallyOptions(deadline_s=3))
    await tally.start()
    try:
        yield tally
    finally:
        await tally.stop()
        for v in verifiers:
            await v.stop()


async def test_trace_context_flows_client_to_tally_to_verifiers(
    system: TallyWorker, nats_config: NatsConfig
) -> None:
    EXPORTER.clear()
    tracer = trace.get_tracer("test")
    async with await VerifyClient.connect(nats_config) as client:
        with tracer.start_as_current_span("checkout") as root:
            cert = await client.verify_with_consensus(
                signed_request(AgentIdentity.generate(), "traced payment")
            )
    assert cert.decision == "VALID"
    trace_id = root.get_span_context().trace_id
    p = nats_config.prefix

    def named(name: str) -> list[ReadableSpan]:
        return [
            s
            for s in EXPORTER.get_finished_spans()
            if s.name == name and s.context.trace_id == trace_id
        ]

    # every verifier's span ends when its vote is out, maybe after the decision
    deadline = asyncio.get_running_loop().time() + 10
    while len(named(f"process {p}.ballot")) < 4:
        assert asyncio.get_running_loop().time() < deadline, named(f"process {p}.ballot")
        await asyncio.sleep(0.05)
    (send,) = named(f"send {p}.verify.request")
    assert send.attributes["messaging.system"] == "nats"
    assert send.parent is not None and send.parent.span_id == root.get_span_context().span_id
    (process,) = named(f"process {p}.verify.request")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.attributes["agentic_payments.decision"] == "VALID"
    (ballot,) = named(f"send {p}.ballot")
    assert ballot.parent is not None and ballot.parent.span_id == process.context.span_id
    verifier_spans = named(f"process {p}.ballot")
    assert all(
        v.parent is not None and v.parent.span_id == ballot.context.span_id for v in verifier_spans
    )
    assert len({v.attributes["agentic_payments.verifier_key"] for v in verifier_spans}) == 4
    (votes,) = named(f"process {p}.vote.t1")
    assert votes.parent is not None and votes.parent.span_id == process.context.span_id
    verifier_ids = {v.context.span_id for v in verifier_spans}
    assert len(votes.links) >= 3  # q = 3 of 4
    assert {link.context.span_id for link in votes.links} <= verifier_ids
    (reply,) = named("send _INBOX")
    assert reply.parent is not None and reply.parent.span_id == process.context.span_id
    (receive,) = named("receive _INBOX")
    assert receive.parent is not None and receive.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in receive.links] == [reply.context.span_id]


async def test_batching_under_load_and_certificates(
    system: TallyWorker, nats_config: NatsConfig
) -> None:
    agent = AgentIdentity.generate()
    reqs = [signed_request(agent, f"pay {i}") for i in range(400)]
    async with await VerifyClient.connect(nats_config) as client:
        results = await client.verify_many(reqs, concurrency=400)
    assert all(getattr(r, "decision", None) == "VALID" for r in results)
    ballots = {r.ballot_id for r in results}  # type: ignore[union-attr]
    assert len(ballots) < len(reqs) / 4, "requests under load should share ballots"
    assert system._pool is not None
    for r in results[:20]:
        verify_certificate(r, system._pool.view.keys, network=system.subjects.prefix)  # type: ignore[arg-type]
    assert system.stats.counters["decision_VALID"] == 400


async def test_lost_decisions_bucket_is_visible_and_serving_continues(
    system: TallyWorker, nats_config: NatsConfig, nc: Client
) -> None:
    agent = AgentIdentity.generate()
    async with await VerifyClient.connect(nats_config) as client:
        first = await client.verify_with_consensus(signed_request(agent, "before"))
        assert first.decision == "VALID"
        assert system.health().value == "Healthy"
        await nc.jetstream().delete_key_value(f"{nats_config.prefix}_decisions")
        results = await client.verify_many([signed_request(agent, f"after {i}") for i in range(5)])
    assert all(getattr(r, "decision", None) == "VALID" for r in results)
    for _ in range(50):
        if system.stats.counters["decision_store_errors"]:
            break
        await asyncio.sleep(0.05)
    assert system.stats.counters["decision_store_errors"] > 0, system.stats.counters
    assert system.health().value == "Degraded"


async def test_decision_from_bucket_wins_over_a_new_round(
    system: TallyWorker, nats_config: NatsConfig
) -> None:
    agent = AgentIdentity.generate()
    req = signed_request(agent, "once only", "durable-1")
    async with await VerifyClient.connect(nats_config) as client:
        first = await client.verify_with_consensus(req)
        for _ in range(50):  # the create-only write is acknowledged asynchronously
            try:
                key = decision_key(scope_id(agent.public_key, "durable-1"))
                await system._store._kv.get(key)  # type: ignore[union-attr]
                break
            except Exception:
                await asyncio.sleep(0.05)
        system._results.clear()  # as if this tally had restarted
        again = await client.verify_with_consensus(req)
    assert again == first
    assert system.stats.counters["idempotent_hits_durable"] == 1


async def test_every_certificate_lands_in_the_audit_stream(
    system: TallyWorker, nats_config: NatsConfig, nc: Client
) -> None:
    from schemas.messages import ConsensusResult, VerificationRequest

    agent = AgentIdentity.generate()
    good = signed_request(agent, "audited")
    bad = VerificationRequest("audit-bad", b"forged", good.signature, good.public_key)
    async with await VerifyClient.connect(nats_config) as client:
        sent = [await client.verify_with_consensus(r) for r in (good, bad)]
        await client.verify_with_consensus(good)  # a retry is not a new decision
    js = nc.jetstream()
    stream = f"{nats_config.prefix}_AUDIT"
    for _ in range(50):
        if (await js.stream_info(stream)).state.messages >= 2:
            break
        await asyncio.sleep(0.05)
    info = await js.stream_info(stream)
    assert info.state.messages == 2 and info.config.max_age == 30 * 86400
    stored = [await js.get_msg(stream, seq) for seq in (1, 2)]
    assert [m.subject for m in stored] == [
        f"{nats_config.prefix}.decision.VALID",
        f"{nats_config.prefix}.decision.INVALID",
    ]
    assert [ConsensusResult.decode(m.data) for m in stored] == sent
