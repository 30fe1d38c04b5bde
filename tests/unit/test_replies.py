"""bus/replies.py: a worker answers only reply subjects inside ``_INBOX.`` (issue #10 hole 1)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from nats.aio.msg import Msg

from bus.replies import REFUSED_COUNTER, GuardedClient, ReplyGuard
from bus.service import Dispatcher, operation
from bus.stats import ProcessingStats
from bus.subjects import MAX_REPLY_SUBJECT, is_inbox
from schemas.messages import WireMessage
from schemas.trust import RemoveAnchorRequest, TrustAck

log = logging.getLogger("test.replies")


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("_INBOX.abc", True),
        ("_INBOX.alice.Xy12.7", True),
        ("_INBOX.v1.a-b_c.9", True),
        ("_INBOX", False),  # the root itself is no inbox
        ("_INBOX.", False),
        ("_INBOX..x", False),
        ("_INBOX.a.", False),
        ("_INBOX.*", False),
        ("_INBOX.alice.>", False),
        ("_INBOX.a b", False),
        ("_INBOX.a\tb", False),
        ("_INBOX.a\x00", False),
        ("_inbox.abc", False),
        ("_INBOXES.abc", False),
        ("x._INBOX.abc", False),
        ("$KV.ap_members.v1", False),
        ("$KV.ap_members.quarantined.v4", False),
        ("$KV.ap_decisions.0123", False),
        ("$JS.API.STREAM.DELETE.KV_ap_members", False),
        ("ap.vote.t1", False),
        ("ap.keys.revoke", False),
        ("", False),
        ("_INBOX." + "a" * (MAX_REPLY_SUBJECT - 7), True),
        ("_INBOX." + "a" * (MAX_REPLY_SUBJECT - 6), False),
    ],
)
def test_is_inbox(subject: str, ok: bool) -> None:
    assert is_inbox(subject) is ok


def msg(reply: str, subject: str = "ap.verify.request", data: bytes = b"\xc1") -> Msg:
    return Msg(_client=None, subject=subject, reply=reply, data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "admitted"),
    [("", True), ("_INBOX.alice.1", True), ("$KV.ap_members.v1", False), ("ap.x", False)],
)
def test_guard_admits_inboxes_and_plain_publishes_only(reply: str, admitted: bool) -> None:
    stats = ProcessingStats()
    assert ReplyGuard(stats, log).admit(msg(reply)) is admitted
    assert stats.counters[REFUSED_COUNTER] == (0 if admitted else 1)


def test_guard_logs_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    stats = ProcessingStats()
    guard = ReplyGuard(stats, log, log_every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.replies"):
        for _ in range(1000):
            guard.admit(msg("$KV.ap_members.v1"))
        now[0] += 10.0
        guard.admit(msg("$KV.ap_keys.k"))
    assert stats.counters[REFUSED_COUNTER] == 1001
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "REPLY_SUBJECT_REFUSED" in lines[0] and " 1 request" in lines[0]
    # the second line accounts for the 999 left unlogged plus the latest
    assert " 1000 request" in lines[1] and "$KV.ap_keys.k" in lines[1]


async def test_wrapped_callback_never_sees_a_refused_message() -> None:
    seen: list[str] = []

    async def cb(m: Msg) -> None:
        seen.append(m.reply)

    wrapped = ReplyGuard(ProcessingStats(), log).wrap(cb)
    for reply in ("$KV.ap_members.v1", "_INBOX.a.1", "", "ap.vote.t1"):
        await wrapped(msg(reply))
    assert seen == ["_INBOX.a.1", ""]


class FakeClient:
    def __init__(self) -> None:
        self.subscribed: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.marker = "real client attribute"

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None, **kw: Any) -> str:
        self.subscribed.append((subject, queue, cb, kw))
        return "sub"


async def test_guarded_client_wraps_every_callback_and_forwards_the_rest() -> None:
    """nats.micro subscribes with keywords (Endpoint._start) and positionally
    (Service.start); both get guarded callbacks."""
    fake = FakeClient()
    seen: list[str] = []

    async def cb(m: Msg) -> None:
        seen.append(m.reply)

    guarded = GuardedClient(fake, ReplyGuard(ProcessingStats(), log))  # type: ignore[arg-type]
    assert await guarded.subscribe("$SRV.PING", cb=cb) == "sub"
    assert await guarded.subscribe(subject="ap.status.x", queue="q", cb=cb, max_msgs=3) == "sub"
    assert guarded.marker == "real client attribute"
    for _, _, wrapped, _ in fake.subscribed:
        assert wrapped is not cb
        await wrapped(msg("$KV.ap_members.v1"))
        await wrapped(msg("_INBOX.r.1"))
    assert seen == ["_INBOX.r.1", "_INBOX.r.1"]
    assert fake.subscribed[1][1] == "q" and fake.subscribed[1][3] == {"max_msgs": 3}


class Answered:
    """A core Msg whose answers are recorded (Dispatcher.serve calls respond)."""

    def __init__(self, reply: str) -> None:
        self.msg = msg(reply, data=RemoveAnchorRequest(b"\x01" * 32).encode())
        self.answers: list[bytes] = []

        async def respond(data: bytes) -> None:
            self.answers.append(data)

        self.msg.respond = respond  # type: ignore[method-assign]


async def test_dispatcher_neither_handles_nor_answers_a_non_inbox_reply() -> None:
    handled: list[bytes] = []

    async def remove(req: RemoveAnchorRequest) -> WireMessage:
        handled.append(req.public_key)
        return TrustAck("remove-anchor", "anchor.01", True, 1, "removed")

    stats = ProcessingStats()
    rpc = Dispatcher("trust", {"remove-anchor": operation(RemoveAnchorRequest, remove)}, stats, log)
    bad, good = Answered("$KV.ap_state.anchor.01"), Answered("_INBOX.admin.1")
    await rpc.serve("remove-anchor", bad.msg)
    await rpc.serve("remove-anchor", good.msg)
    assert bad.answers == [] and len(good.answers) == 1
    assert len(handled) == 1
    assert stats.counters[REFUSED_COUNTER] == 1 and stats.tasks == 1
