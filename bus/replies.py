"""Answer only inside the inbox namespace: the one guard of every request/reply path.

The requester chooses a request's reply subject, and nats-server's
``allow_responses`` lets the receiving worker publish one answer to whatever it
was handed — beyond its own grants. A client that sent one malformed byte to the
tally with its reply set to ``$KV.<prefix>_members.v1`` had the tally's
ErrorReply written over v1's member record (eviction); the same trick lifted a
quarantine, corrupted a key record, overwrote a stored certificate, and through
nats-py's own ``$SRV.PING`` handler made every verifier write into a member
record (issue #10, hole 1). Narrowing grants cannot fix it: the tally may write
the decisions bucket anyway.

So a worker answers a request only when its reply subject is inside
``_INBOX.>`` (``bus.subjects.is_inbox``; every user's private inbox
``_INBOX.<name>`` lies under it). Anything else is not handled at all: it is
counted as ``rejected_REPLY_SUBJECT_REFUSED`` (schemas/errors.ReplySubjectRefused)
and logged at a bounded rate, and the worker keeps serving. A message without
a reply passes (nobody can be written to; the handler decides what a plain
publish means).

Where it applies (each path once): ``Worker.subscribe``/``subscribe_intake``
with ``replies=True`` (the tally's request intake), ``bus.service.Dispatcher``
(keys, authority, trust, recovery history, the supervisor's restart endpoint),
and every subscription of the worker's micro service — the status endpoint and
nats-py's internal PING/INFO/STATS handlers — through ``GuardedClient``, the
connection the runtime hands ``nats.micro.add_service``. It does not apply to
plain pub/sub (heartbeats, votes, alerts), nor to ballots, whose reply is the
tally's vote subject and which the verifier does not answer as a reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.stats import ProcessingStats
from bus.subjects import is_inbox
from schemas.errors import ReplySubjectRefused

MsgHandler = Callable[[Msg], Awaitable[None]]
#: Counter of refused requests (``rejected_<code>``, as the Dispatcher counts refusals).
REFUSED_COUNTER = f"rejected_{ReplySubjectRefused.code}"
#: At most one warning per this many seconds per guard (a flood must not flood the log).
LOG_EVERY_S = 10.0


class ReplyGuard:
    """Decides, counts and logs; one per worker (or per dispatcher)."""

    def __init__(
        self,
        stats: ProcessingStats,
        log: logging.Logger,
        *,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.log = log
        self.log_every_s = log_every_s
        self.clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0

    def admit(self, msg: Msg) -> bool:
        """True if ``msg`` may be handled (no reply, or a reply inside ``_INBOX.``)."""
        reply = msg.reply
        if not reply or is_inbox(reply):
            return True
        self.stats.count(REFUSED_COUNTER)
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= self.log_every_s:
            self.log.warning(
                "[%s] not answering %d request(s) whose reply subject is outside _INBOX "
                "(latest: %r on %r)",
                ReplySubjectRefused.code,
                self._unlogged,
                reply[:128],
                msg.subject[:128],
            )
            self._logged_at = now
            self._unlogged = 0
        return False

    def wrap(self, cb: MsgHandler) -> MsgHandler:
        """``cb`` behind the guard: a refused message never reaches it."""

        async def guarded(msg: Msg) -> None:
            if self.admit(msg):
                await cb(msg)

        return guarded


class GuardedClient:
    """The connection as ``nats.micro`` sees it: every ``subscribe`` callback is guarded.

    nats.micro's Service and Endpoint subscribe through ``service._client`` (the
    PING/INFO/STATS verbs in ``Service.start``, each endpoint in ``Endpoint._start``)
    and answer with ``msg.respond``; wrapping the callbacks here covers nats-py's
    internal handlers too, which the runtime could not reach otherwise. Everything
    else is the real client's.
    """

    def __init__(self, nc: Client, guard: ReplyGuard) -> None:
        self._nc = nc
        self._guard = guard

    async def subscribe(
        self, subject: str, queue: str = "", cb: MsgHandler | None = None, **kwargs: Any
    ) -> Subscription:
        wrapped = None if cb is None else self._guard.wrap(cb)
        return await self._nc.subscribe(subject, queue=queue, cb=wrapped, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)
