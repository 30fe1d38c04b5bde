"""bus/call.py and bus/service.py against a real nats-server: the one client call
(no-responders retry, error mapping, typed reply) and the one dispatcher behind it."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.call import call, send_request
from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.service import Dispatcher, operation
from bus.stats import ProcessingStats
from schemas.errors import (
    MalformedPayload,
    NoResponders,
    NotConnected,
    RemoteError,
    RequestTimeout,
    SchemaViolation,
    TrustNotFound,
)
from schemas.messages import ErrorReply, WireMessage
from schemas.trust import ChainReply, ListRequest, RemoveAnchorRequest, TrustAck
from tests.wait import eventually

pytestmark = pytest.mark.integration
ACK = TrustAck("list", "anchor.01", False, 7, "listed")


def subject(prefix: str) -> str:
    return f"{prefix}.rpc.test"


async def answer_with(nc: Client, subj: str, data: bytes) -> None:
    async def respond(msg: Msg) -> None:
        await msg.respond(data)

    await nc.subscribe(subj, cb=respond)
    await barrier(nc)


async def test_no_responders_is_retried_until_a_worker_answers(
    nc: Client, nats_config: NatsConfig, prefix: str
) -> None:
    late = await connect(nats_config, name="late-worker")
    try:

        async def start_later() -> None:
            await asyncio.sleep(0.4)  # time is the subject: the worker starts late
            await answer_with(late, subject(prefix), ACK.encode())

        starter = asyncio.create_task(start_later())
        began = time.monotonic()
        reply = await call(nc, subject(prefix), ListRequest(), TrustAck, timeout=5, service="t")
        await starter
        assert reply == ACK
        assert time.monotonic() - began >= 0.35  # it waited for the late worker
    finally:
        await late.close()


async def test_no_responders_retries_are_bounded(nc: Client, prefix: str) -> None:
    began = time.monotonic()
    with pytest.raises(NoResponders) as info:
        await send_request(nc, subject(prefix), b"", timeout=30, service="tally", attempts=3)
    assert time.monotonic() - began < 2.0  # 3 sends, 0.05 + 0.1 s apart: not the 30 s timeout
    assert info.value.code == "NO_RESPONDERS" and "tally" in str(info.value)
    with pytest.raises(NoResponders):  # and never past the timeout
        await send_request(nc, subject(prefix), b"", timeout=0.3, service="tally")
    assert time.monotonic() - began < 3.0


async def test_a_timeout_is_request_timeout_and_not_retried(nc: Client, prefix: str) -> None:
    seen: list[Msg] = []

    async def silent(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(subject(prefix), cb=silent)
    await barrier(nc)
    with pytest.raises(RequestTimeout) as info:
        await call(nc, subject(prefix), ListRequest(), TrustAck, timeout=0.3, service="t")
    assert info.value.code == "TIMEOUT"
    await asyncio.sleep(0.1)  # time is the subject: no resend after the timeout
    assert len(seen) == 1  # a write may have been applied: sent once


async def test_an_error_reply_is_remote_error_with_its_code(nc: Client, prefix: str) -> None:
    await answer_with(nc, subject(prefix), ErrorReply("TRUST_NOT_FOUND", "no anchor").encode())
    with pytest.raises(RemoteError) as info:
        await call(nc, subject(prefix), ListRequest(), TrustAck, timeout=2, service="t")
    assert info.value.code == "TRUST_NOT_FOUND" and info.value.message == "no anchor"


async def test_an_unexpected_reply_class_is_refused(nc: Client, prefix: str) -> None:
    await answer_with(nc, subject(prefix), ACK.encode())
    with pytest.raises(SchemaViolation):
        await call(nc, subject(prefix), ListRequest(), ChainReply, timeout=2, service="t")


async def test_garbage_reply_is_a_codec_error(nc: Client, prefix: str) -> None:
    await answer_with(nc, subject(prefix), b"\xc1")
    with pytest.raises(MalformedPayload):
        await call(nc, subject(prefix), ListRequest(), TrustAck, timeout=2, service="t")


async def test_a_closed_connection_is_not_connected(nats_config: NatsConfig, prefix: str) -> None:
    closed = await connect(nats_config, name="closed")
    await closed.close()
    with pytest.raises(NotConnected):
        await call(closed, subject(prefix), ListRequest(), TrustAck, timeout=1, service="t")


async def test_call_and_dispatcher_round_trip(nc: Client, prefix: str) -> None:
    async def remove(req: RemoveAnchorRequest) -> WireMessage:
        if req.public_key == b"\x02" * 32:
            raise TrustNotFound("no such anchor")
        if req.public_key == b"\x03" * 32:
            raise RuntimeError("internal detail")
        return TrustAck("remove-anchor", "anchor.01", True, 2, "removed")

    stats = ProcessingStats()
    ops = {"remove-anchor": operation(RemoveAnchorRequest, remove)}
    service = Dispatcher("trust", ops, stats, logging.getLogger("test.rpc"))
    await nc.subscribe(subject(prefix), cb=service.handler("remove-anchor"))
    await barrier(nc)

    async def remove_call(key: bytes) -> TrustAck:
        request = RemoveAnchorRequest(key)
        return await call(nc, subject(prefix), request, TrustAck, timeout=2, service="trust")

    assert (await remove_call(b"\x01" * 32)).changed
    with pytest.raises(RemoteError) as refused:
        await remove_call(b"\x02" * 32)
    assert refused.value.code == "TRUST_NOT_FOUND"
    with pytest.raises(RemoteError) as failed:
        await remove_call(b"\x03" * 32)
    assert failed.value.code == "INTERNAL" and "detail" not in failed.value.message
    msg = await send_request(nc, subject(prefix), b"\x92\x01", timeout=2, service="trust")
    assert ErrorReply.decode(msg.data).code == "MALFORMED_PAYLOAD"
    await nc.publish(subject(prefix), RemoveAnchorRequest(b"\x01" * 32).encode())  # no reply
    await barrier(nc)
    await eventually(
        lambda: stats.counters.get("op_remove_anchor", 0) == 2, "the unanswered remove"
    )
    assert stats.counters["rejected_TRUST_NOT_FOUND"] == 1
    assert stats.counters["rejected_MALFORMED_PAYLOAD"] == 1
    assert (stats.tasks, stats.failures) == (5, 1)
