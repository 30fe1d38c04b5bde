"""bus/service.py: one dispatcher, the same answers and counters for every service."""

from __future__ import annotations

import logging

import pytest

from bus.service import Dispatcher, Operation, operation
from bus.stats import ProcessingStats
from schemas.codec import decode, encode
from schemas.errors import (
    AgenticPaymentsError,
    CodecError,
    StoreFull,
    TrustConflict,
    TrustNotFound,
)
from schemas.messages import ErrorReply, WireMessage
from schemas.trust import RemoveAnchorRequest, TrustAck

log = logging.getLogger("test.dispatch")
KEY = b"\x01" * 32


class Inbound:
    """A received request: its bytes, and what was answered."""

    def __init__(self, data: bytes, *, broken: bool = False) -> None:
        self.data = data
        self.answers: list[bytes] = []
        self.broken = broken

    async def respond(self, data: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("requester went away")
        self.answers.append(data)


def reply_of(inbound: Inbound) -> ErrorReply:
    assert len(inbound.answers) == 1
    return ErrorReply.from_wire(decode(inbound.answers[0]))


async def remove(req: RemoveAnchorRequest) -> WireMessage:
    if req.public_key == b"\x02" * 32:
        raise TrustNotFound("no trust anchor\nwith a newline " + "x" * 10_000)
    if req.public_key == b"\x03" * 32:
        raise RuntimeError("secret detail: /var/lib/keys/master.key")
    if req.public_key == b"\x04" * 32:
        raise AgenticPaymentsError("stored record is corrupt at revision 17")
    if req.public_key == b"\x05" * 32:
        raise StoreFull("writing anchor.01: JetStream storage is full")
    return TrustAck("remove-anchor", "anchor.01", True, 1, "removed")


def dispatcher(
    stats: ProcessingStats, **kwargs: tuple[type[AgenticPaymentsError], ...]
) -> Dispatcher:
    ops = {"remove-anchor": operation(RemoveAnchorRequest, remove)}
    return Dispatcher("trust", ops, stats, log, **kwargs)


async def serve(service: Dispatcher, data: bytes) -> Inbound:
    inbound = Inbound(data)
    await service.serve("remove-anchor", inbound)
    return inbound


async def test_a_reply_is_counted_as_op() -> None:
    stats = ProcessingStats()
    inbound = await serve(dispatcher(stats), RemoveAnchorRequest(KEY).encode())
    assert TrustAck.decode(inbound.answers[0]).changed
    assert stats.counters["op_remove_anchor"] == 1
    assert (stats.tasks, stats.failures) == (1, 0)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", "MALFORMED_PAYLOAD"),
        (b"", "MALFORMED_PAYLOAD"),
        (encode({"type": "trust_list", "v": 1}), "SCHEMA_VIOLATION"),  # another op's request
        (encode({"type": "trust_remove_anchor", "v": 1}), "SCHEMA_VIOLATION"),
        (encode({"type": "trust_remove_anchor", "v": 7}), "UNSUPPORTED_VERSION"),
    ],
)
async def test_bad_input_is_refused_with_its_code(data: bytes, code: str) -> None:
    stats = ProcessingStats()
    inbound = await serve(dispatcher(stats, refusals=(CodecError,)), data)
    assert reply_of(inbound).code == code
    assert stats.counters[f"rejected_{code}"] == 1
    assert "op_remove_anchor" not in stats.counters
    assert (stats.tasks, stats.failures) == (1, 0)  # a verdict, not a failure


async def test_a_refusal_keeps_its_code_with_a_bounded_printable_message() -> None:
    stats = ProcessingStats()
    inbound = await serve(dispatcher(stats), RemoveAnchorRequest(b"\x02" * 32).encode())
    reply = reply_of(inbound)
    assert reply.code == "TRUST_NOT_FOUND"
    assert reply.message.startswith("no trust anchor with a newline")
    assert len(reply.message) == 4096 and reply.message.isprintable()
    assert stats.counters["rejected_TRUST_NOT_FOUND"] == 1


async def test_an_unexpected_exception_is_internal_and_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = ProcessingStats()
    with caplog.at_level(logging.ERROR, "test.dispatch"):
        inbound = await serve(dispatcher(stats), RemoveAnchorRequest(b"\x03" * 32).encode())
    reply = reply_of(inbound)
    assert reply.code == "INTERNAL"
    assert "secret" not in reply.message and "master.key" not in reply.message
    assert "remove-anchor" in reply.message
    assert (stats.tasks, stats.failures) == (1, 1)
    assert "op_remove_anchor" not in stats.counters
    assert any("master.key" in (r.exc_text or "") for r in caplog.records)  # the log has it


async def test_a_project_error_outside_the_refusals_is_internal() -> None:
    stats = ProcessingStats()
    narrow = dispatcher(stats, refusals=(TrustConflict,))
    inbound = await serve(narrow, RemoveAnchorRequest(b"\x04" * 32).encode())
    reply = reply_of(inbound)
    assert reply.code == "INTERNAL" and "revision 17" not in reply.message
    assert stats.failures == 1
    wide = dispatcher(ProcessingStats())  # by default every project error is a refusal
    inbound = await serve(wide, RemoveAnchorRequest(b"\x04" * 32).encode())
    assert reply_of(inbound).message == "stored record is corrupt at revision 17"


async def test_a_full_store_is_answered_store_full_and_counted_as_a_failure() -> None:
    stats = ProcessingStats()
    inbound = await serve(dispatcher(stats), RemoveAnchorRequest(b"\x05" * 32).encode())
    reply = reply_of(inbound)
    assert reply.code == "STORE_FULL" and "storage is full" in reply.message
    assert stats.counters["failed_STORE_FULL"] == 1
    assert (stats.tasks, stats.failures) == (1, 1)  # the worker could not do its job


async def test_a_reply_that_cannot_be_sent_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = ProcessingStats()
    inbound = Inbound(RemoveAnchorRequest(KEY).encode(), broken=True)
    with caplog.at_level(logging.WARNING, "test.dispatch"):
        await dispatcher(stats).serve("remove-anchor", inbound)
    assert stats.counters["op_remove_anchor"] == 1
    assert any("could not answer" in r.getMessage() for r in caplog.records)


async def test_the_decoder_of_an_op_is_its_own() -> None:
    seen: list[str] = []

    async def echo(text: str) -> WireMessage:
        seen.append(text)
        return ErrorReply("NONE", text)

    service = Dispatcher("echo", {"say": Operation(bytes.decode, echo)}, ProcessingStats(), log)
    reply, ok = await service.answer("say", b"hello")
    assert ok and seen == ["hello"] and isinstance(reply, ErrorReply)
    with pytest.raises(KeyError):
        service.handler("shout")


@pytest.mark.parametrize("reply", ["", "_INBOX.x.1"])
async def test_a_plain_publish_to_a_micro_endpoint_is_handled_not_answered(
    reply: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A micro ``Request`` without a reply subject (a plain publish) is not answered:
    answering it raised ValueError, logged with a traceback per message (found by
    tests/fuzz/test_wire.py in the trust and recovery workers)."""
    from nats.aio.msg import Msg
    from nats.micro.request import Request

    sent: list[tuple[str, bytes]] = []

    class FakeClient:
        async def publish(self, subject: str, data: bytes, headers: object = None) -> None:
            sent.append((subject, data))

    msg = Msg(FakeClient(), subject="x.trust.remove-anchor", reply=reply)  # type: ignore[arg-type]
    msg.data = RemoveAnchorRequest(KEY).encode()
    stats = ProcessingStats()
    with caplog.at_level(logging.WARNING, "test.dispatch"):
        await dispatcher(stats).serve("remove-anchor", Request(msg))
    assert stats.counters["op_remove_anchor"] == 1
    assert [s for s, _ in sent] == ([reply] if reply else [])
    assert not any("could not answer" in r.getMessage() for r in caplog.records)
