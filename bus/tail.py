"""Consumer-free reads of a JetStream stream: the one way workers read stream history.

Why no consumers: nats-server does not check a push consumer's deliver
subject against its creator's publish permissions, and delivered messages keep
their headers (``KV-Operation: DEL`` included). Any user allowed
``$JS.API.CONSUMER.CREATE.<stream>`` could therefore have JetStream copy a
stored message (or its own bytes, if it writes the stream) onto *any* subject
of the account: a forged ballot, a member record, or a delete marker over a
revocation in ``$KV.<prefix>_state.key.<hex>``. So no role but admin may create
consumers (bus/permissions.py) and every reader uses what this module offers:

* :func:`read_batch` — ``$JS.API.DIRECT.GET.<stream>`` with ``{"seq": N,
  "batch": M}`` (nats-server 2.11+; needs ``allow_direct``): the server answers
  one message per stored message (headers ``Nats-Sequence``, ``Nats-Subject``,
  ``Nats-Time-Stamp``, the stored headers kept) and an end-of-batch ``204``
  status whose ``Nats-Num-Pending`` says what is left. One batch is read under
  the stream's read isolation, so a batch that ends with nothing pending is a
  consistent picture of the stream at its last sequence. Without
  ``allow_direct`` (a stream created by an older release) it falls back to one
  ``STREAM.MSG.GET`` per message (slower, same answers).
* :func:`read_until_caught_up` — batches until nothing is pending.
* :class:`Wakeup` — a core subscription on the stream's own subjects, only as a
  wake-up (its content is never trusted: the stream is), plus a poll every
  :data:`POLL_S` so a lost wake-up (a reconnect) costs at most that much lag.

Every error is the project's own (TransportError family); no nats-py class
leaves this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.call import FIRST_BACKOFF_S, MAX_BACKOFF_S, NO_RESPONDERS_ATTEMPTS
from bus.nats_errors import map_jetstream_errors
from schemas.errors import NoResponders, RequestTimeout, TransportError

log = logging.getLogger("agentic_payments.tail")

#: Messages asked for per direct-get batch (the server also stops at its max
#: pending bytes, and then says how many are left).
BATCH = 1024
#: How long one batch may take before it is a RequestTimeout.
BATCH_TIMEOUT_S = 5.0
#: Poll interval behind the wake-up subscription: the lag bound when a wake-up is
#: lost. Half the documented 500 ms revocation bound, so a revocation is seen within
#: it even then (docs/performance.md).
POLL_S = 0.25
#: JetStream API error code of STREAM.MSG.GET for "no message found".
NO_MESSAGE = 10037


@dataclass(frozen=True)
class StoredMsg:
    """One stored message as the stream holds it."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the server's store time, RFC 3339 (as given; empty if unknown)
    time: str = ""

    def timestamp(self) -> float | None:
        """The store time as POSIX seconds (None if absent or unreadable)."""
        text = self.time.rstrip("Z")
        head, dot, frac = text.partition(".")
        try:
            when = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
        except ValueError:
            return None
        return when.timestamp() + (float(f"0.{frac}") if dot and frac.isdigit() else 0.0)

    @property
    def operation(self) -> str:
        """The KV operation (``PUT``, ``DEL`` or ``PURGE``); ``PUT`` for plain streams."""
        return self.headers.get("KV-Operation", "PUT")


@dataclass(frozen=True)
class Batch:
    messages: tuple[StoredMsg, ...]
    #: messages after this batch at the time it was read (0: caught up then)
    pending: int


@dataclass(frozen=True)
class StreamInfo:
    first_seq: int
    last_seq: int
    messages: int
    allow_direct: bool


async def stream_info(nc: Client, stream: str) -> StreamInfo:
    """First and last sequence and the direct-get setting of ``stream``."""
    with map_jetstream_errors(f"reading the state of stream {stream}"):
        info = await nc.jetstream().stream_info(stream)
    return StreamInfo(
        first_seq=int(info.state.first_seq or 0),
        last_seq=int(info.state.last_seq or 0),
        messages=int(info.state.messages or 0),
        allow_direct=bool(info.config.allow_direct),
    )


async def read_batch(
    nc: Client,
    stream: str,
    *,
    seq: int = 0,
    start_time: dt.datetime | None = None,
    subject_filter: str = "",
    batch: int = BATCH,
    direct: bool = True,
) -> Batch:
    """Up to ``batch`` stored messages from sequence ``seq`` (or from ``start_time``)
    on, matching ``subject_filter`` (may hold wildcards; empty: all).

    A direct get answered "503 no responders" (no replica serves direct gets yet:
    a stream just created, or a cluster electing a leader) is retried with the same
    backoff as bus/call's requests; a worker must not crash at start-up for it."""
    if not direct:
        return await _msg_get_batch(nc, stream, seq, start_time, subject_filter, batch)
    delay = FIRST_BACKOFF_S
    for attempt in range(NO_RESPONDERS_ATTEMPTS):
        try:
            return await _direct_batch(nc, stream, seq, start_time, subject_filter, batch)
        except NoResponders:
            if attempt == NO_RESPONDERS_ATTEMPTS - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")


async def read_until_caught_up(
    nc: Client,
    stream: str,
    *,
    seq: int,
    subject_filter: str = "",
    direct: bool = True,
    start_time: dt.datetime | None = None,
) -> list[StoredMsg]:
    """Every stored message from ``seq`` (or ``start_time``) up to the stream's end.

    Ends at a batch with nothing pending, so everything stored up to the last
    message returned has been read (older revisions removed meanwhile were
    superseded by messages read later).
    """
    out: list[StoredMsg] = []
    while True:
        got = await read_batch(
            nc,
            stream,
            seq=seq,
            start_time=start_time,
            subject_filter=subject_filter,
            direct=direct,
        )
        start_time = None
        out.extend(got.messages)
        if got.messages:
            seq = got.messages[-1].seq + 1
        if got.pending == 0 or not got.messages:
            return out


async def _direct_batch(
    nc: Client,
    stream: str,
    seq: int,
    start_time: dt.datetime | None,
    subject_filter: str,
    batch: int,
) -> Batch:
    request: dict[str, Any] = {"batch": batch}
    if start_time is not None:
        request["start_time"] = start_time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    else:
        request["seq"] = max(1, seq)
    if subject_filter:
        request["next_by_subj"] = subject_filter
    inbox = nc.new_inbox()
    messages: list[StoredMsg] = []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_reply(msg: Msg) -> None:
        if done.done():
            return
        try:
            pending = _direct_reply(stream, msg, messages)
        except TransportError as exc:
            done.set_exception(exc)
            return
        if pending is not None:
            done.set_result(pending)

    with map_jetstream_errors(f"reading stream {stream}"):
        # a callback, not next_msg(): a batch is hundreds of messages, and the
        # per-message cost of next_msg dominated a replay
        sub = await nc.subscribe(inbox, cb=on_reply, pending_msgs_limit=4 * batch)
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            try:  # asyncio.timeout, not wait_for: see Wakeup.wait
                async with asyncio.timeout(BATCH_TIMEOUT_S):
                    pending = await done
            except TimeoutError:
                raise RequestTimeout(f"direct get on {stream} timed out") from None
            return Batch(tuple(messages), pending)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _direct_reply(stream: str, msg: Msg, into: list[StoredMsg]) -> int | None:
    """Add one direct-get answer to ``into``; the pending count at the end, else None."""
    headers = dict(msg.headers or {})
    status = headers.get("Status")
    if status is None:
        into.append(
            StoredMsg(
                seq=int(headers.get("Nats-Sequence", "0")),
                subject=headers.get("Nats-Subject", ""),
                data=bytes(msg.data),
                headers=headers,
                time=headers.get("Nats-Time-Stamp", ""),
            )
        )
        return None
    if status == "204":  # end of batch
        return int(headers.get("Nats-Num-Pending", "0") or 0)
    if status == "404":  # nothing at or after the start
        return 0
    if status == "503":
        raise NoResponders(f"direct get on {stream}: no server answers direct gets yet")
    raise TransportError(
        f"direct get on {stream} failed: status {status} {headers.get('Description', '')}"
    )


async def _msg_get_batch(
    nc: Client,
    stream: str,
    seq: int,
    start_time: dt.datetime | None,
    subject_filter: str,
    batch: int,
) -> Batch:
    """The fallback without ``allow_direct``: one STREAM.MSG.GET per message."""
    if start_time is not None:  # no start_time on message gets: from the first message on
        seq = (await stream_info(nc, stream)).first_seq
    out: list[StoredMsg] = []
    seq = max(1, seq)
    for _ in range(batch):
        request = {"seq": seq, "next_by_subj": subject_filter or ">"}
        with map_jetstream_errors(f"reading stream {stream}"):
            reply = await nc.request(
                f"$JS.API.STREAM.MSG.GET.{stream}",
                json.dumps(request).encode(),
                timeout=BATCH_TIMEOUT_S,
            )
        body = json.loads(reply.data)
        error = body.get("error")
        if error:
            if error.get("err_code") == NO_MESSAGE:
                return Batch(tuple(out), 0)
            raise TransportError(f"message get on {stream} failed: {error}")
        raw = body["message"]
        stored = StoredMsg(
            seq=int(raw["seq"]),
            subject=str(raw["subject"]),
            data=base64.b64decode(raw.get("data") or ""),
            headers=_parse_headers(base64.b64decode(raw.get("hdrs") or "")),
            time=str(raw.get("time", "")),
        )
        out.append(stored)
        seq = stored.seq + 1
    return Batch(tuple(out), 1)


#: Headers the server adds to a direct-get answer. A *stored* message carrying one
#: is a server answer that was written into the stream (a JetStream API request
#: whose reply subject a stream captures: the server does not check reply
#: subjects), never a write by a client of the bucket.
SERVER_COPY_HEADERS = ("Nats-Stream", "Nats-Sequence", "Nats-Time-Stamp")


async def stored_headers(nc: Client, stream: str, seq: int) -> dict[str, str] | None:
    """The headers message ``seq`` was *stored* with (STREAM.MSG.GET answers them
    verbatim; a direct get overwrites the server's own); None if it is gone."""
    with map_jetstream_errors(f"reading stream {stream}"):
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}",
            json.dumps({"seq": seq}).encode(),
            timeout=BATCH_TIMEOUT_S,
        )
    body = json.loads(reply.data)
    if body.get("error"):
        if body["error"].get("err_code") == NO_MESSAGE:
            return None
        raise TransportError(f"message get on {stream} failed: {body['error']}")
    return _parse_headers(base64.b64decode(body["message"].get("hdrs") or ""))


def is_server_copy(headers: Mapping[str, str]) -> bool:
    """Whether stored ``headers`` mark a copy the server wrote (see SERVER_COPY_HEADERS)."""
    return any(name in headers for name in SERVER_COPY_HEADERS)


def _parse_headers(raw: bytes) -> dict[str, str]:
    """``NATS/1.0\\r\\nKey: Value\\r\\n...`` -> {Key: Value} (the first value of each key)."""
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


class Wakeup:
    """Wakes a stream reader: on any message on ``subjects`` (core NATS), and at the
    latest every ``poll_s``. The messages themselves are ignored: they are only a
    hint that the stream may have grown; the stream is read for the content."""

    def __init__(self, nc: Client, subjects: Sequence[str], *, poll_s: float = POLL_S) -> None:
        self._nc = nc
        self._subjects = tuple(subjects)
        self.poll_s = poll_s
        self._event = asyncio.Event()
        self._subs: list[Any] = []

    async def start(self) -> None:
        with map_jetstream_errors("subscribing to stream subjects"):
            for subject in self._subjects:
                self._subs.append(await self._nc.subscribe(subject, cb=self._on_msg))

    async def _on_msg(self, _msg: Msg) -> None:
        self._event.set()

    def poke(self) -> None:
        """Wake the reader now (tests, or a caller that knows the stream grew)."""
        self._event.set()

    async def wait(self) -> None:
        """Return on the next wake-up or after ``poll_s``, whichever comes first.

        ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 ``wait_for``
        returns normally when it is cancelled in the same loop iteration as the event
        fires (bpo-42130), so a reader loop cancelled by its stop while being woken
        ran on, and the stop's ``await`` of it never returned (the 300 s test hangs
        of issue #11; tests/unit/test_cancellation.py)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_s):
                await self._event.wait()
        self._event.clear()

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


OnStored = Callable[[StoredMsg, int], Awaitable[None]]


class StreamFollower:
    """Hands every message of a stream to ``on_msg(message, pending)``, in order, from
    sequence ``seq`` (or ``start_time``) on and then as new ones are stored: the
    consumer-free replacement of an ordered push consumer. ``pending`` is how many
    messages were left after that one when its batch was read (0: caught up).

    Woken by ``wake_subjects`` (core NATS, content ignored) and polled every
    ``poll_s``; a read that fails is retried at the next wake-up, from the same
    sequence, so nothing is skipped or handed over twice. ``on_caught_up`` runs
    whenever a read reaches the end of the stream.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        wake_subjects: Sequence[str],
        on_msg: OnStored,
        *,
        seq: int = 1,
        start_time: dt.datetime | None = None,
        subject_filter: str = "",
        poll_s: float = POLL_S,
        on_caught_up: Callable[[], None] | None = None,
    ) -> None:
        self._nc = nc
        self._stream = stream
        self._on_msg = on_msg
        self._on_caught_up = on_caught_up
        self._next = max(1, seq)
        self._start_time = start_time
        self._filter = subject_filter
        self._wakeup = Wakeup(nc, wake_subjects, poll_s=poll_s)
        self._direct = True
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    async def start(self) -> None:
        self._direct = (await stream_info(self._nc, self._stream)).allow_direct
        await self._wakeup.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.warning("reading stream %s failed; retrying", self._stream, exc_info=True)
            await self._wakeup.wait()

    async def _read(self, seq: int, start_time: dt.datetime | None = None) -> Batch:
        return await read_batch(
            self._nc,
            self._stream,
            seq=seq,
            start_time=start_time,
            subject_filter=self._filter,
            direct=self._direct,
        )

    async def _drain(self) -> None:
        """Hand over everything up to the end; the next batch is read while this one
        is handed over (a replay costs about the larger of reading and handling)."""
        got = await self._read(self._next, self._start_time)
        while True:
            ahead: asyncio.Task[Batch] | None = None
            if got.pending and got.messages:
                ahead = asyncio.create_task(self._read(got.messages[-1].seq + 1))
            try:
                left = got.pending + len(got.messages)
                for stored in got.messages:
                    left -= 1
                    self._next = stored.seq + 1
                    self._start_time = None
                    await self._on_msg(stored, left)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            if ahead is None:
                if self._on_caught_up is not None:
                    self._on_caught_up()
                return
            got = await ahead

    async def stop(self) -> None:
        await self._wakeup.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
