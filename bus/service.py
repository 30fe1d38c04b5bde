"""One request/reply dispatcher for every service (keys, trust, authority, recovery history).

A service is a table of operations: for each op, how its request is decoded
(the op's request class) and the coroutine that answers it. The dispatcher
wraps every handler once, as nats.py's ``Endpoint._handle_request`` does for
a micro-service endpoint, so each service answers alike:

* the reply is the handler's message, counted as ``op_<op>`` (``-`` in an
  op becomes ``_``);
* a refusal — an exception of the service's ``refusals`` classes (bad input
  is always one: every ``CodecError``) — is an ErrorReply with the error's
  own stable code and a bounded, printable message, counted as
  ``rejected_<code>``. A refusal is a verdict on the request, not a failure
  of the worker;
* a full JetStream store (``StoreFull``) is answered with its own code
  ``STORE_FULL`` — the caller can tell "retry once space is freed" from a bug —
  and still counted as a failure of the worker (it could not do its job);
* anything else, the project's other errors included, is this worker's
  failure: ``ErrorReply("INTERNAL", ...)`` with no internal detail (the
  traceback goes to the log) and a failure in the processing stats, which
  feeds the worker's health.

Nothing escapes to the transport: a reply that cannot be sent (the
requester went away, the connection is closing) is logged.

A request whose reply subject lies outside ``_INBOX.`` is neither handled nor
answered (bus/replies.py; counted ``rejected_REPLY_SUBJECT_REFUSED``): the
requester picks the reply, and the answer must not land in a KV bucket.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.msg import Msg

from bus.replies import ReplyGuard
from bus.stats import ProcessingStats
from schemas.errors import AgenticPaymentsError, CodecError, StoreFull
from schemas.messages import ErrorReply, WireMessage

Q = TypeVar("Q")
W = TypeVar("W", bound=WireMessage)
#: The longest message an ErrorReply carries (its schema's bound).
MAX_ERROR_MESSAGE = 4096


class Inbound(Protocol):
    """A received request: a core NATS ``Msg`` or a micro-service ``Request``."""

    @property
    def data(self) -> bytes: ...

    async def respond(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Operation(Generic[Q]):
    """One op of a service: decode its request, then answer it."""

    decode: Callable[[bytes], Q]
    handle: Callable[[Q], Awaitable[WireMessage]]


def operation(request: type[W], handle: Callable[[W], Awaitable[WireMessage]]) -> Operation[W]:
    """The usual op: its request is one message class, decoded with that class's limits."""
    return Operation(request.decode, handle)


def printable(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """``text`` with control characters blanked, at most ``limit`` characters (for a reply)."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def _reply_subject(msg: Inbound) -> str | None:
    """The reply subject of a core ``Msg`` or of a micro ``Request`` (which wraps one
    and has no public accessor); None when it cannot be known (then answer anyway).
    A plain publish to a micro endpoint has none: answering it raised ValueError,
    logged with a traceback per message (the wire fuzz, tests/fuzz/test_wire.py)."""
    inner = msg if isinstance(msg, Msg) else getattr(msg, "_msg", None)
    return (inner.reply or "") if isinstance(inner, Msg) else None


def counter_name(op: str) -> str:
    return op.replace("-", "_")


class Dispatcher:
    """Answers the requests of one service's operations; see the module docstring."""

    def __init__(
        self,
        service: str,
        operations: Mapping[str, Operation[Any]],
        stats: ProcessingStats,
        log: logging.Logger,
        *,
        refusals: tuple[type[AgenticPaymentsError], ...] = (AgenticPaymentsError,),
    ) -> None:
        self.service = service
        self.operations = dict(operations)
        self.stats = stats
        self.log = log
        self.refusals: tuple[type[AgenticPaymentsError], ...] = (CodecError, *refusals)
        self.replies = ReplyGuard(stats, log)

    def handler(self, op: str) -> Callable[[Inbound], Awaitable[None]]:
        """The subscription (or micro endpoint) callback of ``op``."""
        if op not in self.operations:
            raise KeyError(f"{self.service} has no operation {op!r}")
        return functools.partial(self.serve, op)

    async def answer(self, op: str, data: bytes) -> tuple[WireMessage, bool]:
        """The reply to ``data`` sent to ``op``, and whether the worker did its job.

        Never raises (but for cancellation): every refusal and failure is an ErrorReply.
        """
        try:
            spec = self.operations[op]
            reply = await spec.handle(spec.decode(data))
        except StoreFull as exc:  # never a verdict on the request, whatever the refusals
            self.stats.count(f"failed_{exc.code}")
            self.log.warning("%s %s failed [%s]: %s", self.service, op, exc.code, exc)
            return ErrorReply(exc.code, printable(str(exc))), False
        except self.refusals as exc:
            self.stats.count(f"rejected_{exc.code}")
            self.log.debug("%s %s refused [%s]: %s", self.service, op, exc.code, exc)
            return ErrorReply(exc.code, printable(str(exc))), True
        except Exception:
            self.log.exception("%s %s failed", self.service, op)
            return ErrorReply("INTERNAL", f"{self.service} {op} failed; see the worker log"), False
        self.stats.count(f"op_{counter_name(op)}")
        return reply, True

    async def serve(self, op: str, msg: Inbound) -> None:
        """Answer ``msg``: decode, handle, count, time, respond."""
        if isinstance(msg, Msg) and not self.replies.admit(msg):
            return  # its reply is not an inbox: not handled, not answered
        started = time.perf_counter()
        reply, ok = await self.answer(op, msg.data)
        self.stats.record((time.perf_counter() - started) * 1000, ok)
        if _reply_subject(msg) == "":
            return  # a plain publish: nobody waits for an answer
        try:
            await msg.respond(reply.encode())
        except Exception:  # the requester went away, or the connection is closing
            self.log.warning("could not answer a %s %s request", self.service, op, exc_info=True)
