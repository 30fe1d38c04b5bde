"""The verifier pool in a JetStream key-value bucket.

Key = a record's name, value = a MessagePack MemberRecord (schemas/pool.py says
which keys exist, who may write each, and the pure rules that make a pool of
them: a record counts only if it names its own key, its network and — when its
writer holds the key — carries a proof of possession; one seat per public key;
quarantine only through ``quarantined.<id>``, at most f of them). The pool
*epoch* is the bucket's latest revision (its stream's last sequence), so every
membership change gives a new, larger epoch, and every tally watching the bucket
agrees on it without coordination. Registering again with the same key is a
no-op, so restarts do not churn the epoch. Updates use compare-and-set (bus/kv.py).
Every function raises the project's errors only (NATS trouble is a TransportError,
bus/nats_errors.py), never a nats-py class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NotFoundError

from bus.kv import UNCHANGED, KeyValue, NoChange
from bus.nats_errors import map_jetstream_errors
from bus.state import BucketMirror, ensure_bucket
from bus.subjects import Subjects
from schemas.errors import (
    CodecError,
    ConfigError,
    PoolHistoryMissing,
    PoolUnreadable,
    TransportError,
)
from schemas.identity import AgentIdentity
from schemas.pool import (
    ACTIVE,
    ADMITTED_PREFIX,
    QUARANTINE_PREFIX,
    QUARANTINED,
    ROLE_TALLY,
    ROLE_VERIFIER,
    TALLY_PREFIX,
    Entry,
    MemberRecord,
    Pool,
    admitted_key,
    admitted_record,
    build_pool,
    check_entry,
    quarantine_key,
    quarantine_record,
    self_record,
    tally_record_key,
)

__all__ = [
    "ACTIVE",
    "ADMITTED_PREFIX",
    "QUARANTINED",
    "QUARANTINE_PREFIX",
    "TALLY_PREFIX",
    "MemberRecord",
    "PoolView",
    "PoolWatcher",
    "admit",
    "admitted_key",
    "members_bucket",
    "pool_at",
    "quarantine",
    "quarantine_key",
    "read_pool",
    "register",
    "register_tally",
    "remove",
    "superseded_at",
    "tally_record_key",
]

log = logging.getLogger("agentic_payments.membership")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class PoolView:
    """The pool as of one epoch.

    ``members`` are the seats the records add up to (schemas.pool.build_pool), one
    record per seat: a verifier seat under its id (status ``quarantined`` when an
    honoured quarantine record took it out), a tally under ``tally.<id>``. Records
    that do not count are not members (``rejected`` says why); ``over_cap`` lists
    seats whose quarantine the pool does not honour because f are out already (an
    operator decides: ``members remove``).
    """

    epoch: int
    members: tuple[MemberRecord, ...]
    over_cap: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, epoch: int, pool: Pool) -> PoolView:
        out = {s.id for s in pool.quarantined}
        members = [
            MemberRecord(s.id, s.public_key, QUARANTINED if s.id in out else ACTIVE, role=s.role)
            for s in (*pool.verifiers, *pool.tallies)
        ]
        return cls(
            epoch,
            tuple(sorted(members, key=lambda m: m.worker_id)),
            pool.over_cap,
            pool.rejected,
        )

    @classmethod
    def from_entries(cls, epoch: int, entries: list[Entry], network: str) -> PoolView:
        return cls.of(epoch, build_pool(entries, network))

    @property
    def verifiers(self) -> tuple[MemberRecord, ...]:
        """Verifier seats (quarantined ones included), not tally records."""
        return tuple(m for m in self.members if not m.worker_id.startswith(TALLY_PREFIX))

    @property
    def tallies(self) -> tuple[MemberRecord, ...]:
        return tuple(m for m in self.members if m.worker_id.startswith(TALLY_PREFIX))

    @property
    def keys(self) -> frozenset[bytes]:
        """Active verifier keys (one per seat; quarantined seats are out)."""
        return frozenset(m.public_key for m in self.verifiers if m.status == ACTIVE)

    @property
    def tally_keys(self) -> frozenset[bytes]:
        """Keys of the admitted tallies (records ``tally.<id>``): verifiers judge only
        ballots signed by one of them."""
        return frozenset(m.public_key for m in self.tallies if m.status == ACTIVE)

    def seat_of(self, public_key: bytes) -> MemberRecord | None:
        """The verifier seat holding ``public_key`` (its id is the seat's KV key, never
        what a record claims), or None."""
        return next((m for m in self.verifiers if m.public_key == public_key), None)


async def members_bucket(nc: Client, subjects: Subjects) -> Any:
    """Bind the membership bucket, creating it on first use (history 5)."""
    return await ensure_bucket(
        nc,
        subjects.members_bucket,
        history=5,
        forbid_ttl=True,
        description="agentic-payments verifier pool",
    )


async def _write_own(
    nc: Client, subjects: Subjects, key: str, identity: AgentIdentity, role: str
) -> bool:
    """Write ``key``'s record, signed by ``identity``, unless it already says so."""
    network = subjects.prefix
    members = KeyValue.of(await members_bucket(nc, subjects), MemberRecord)

    def change(current: MemberRecord | None) -> MemberRecord | NoChange:
        if (
            current is not None
            and current.public_key == identity.public_key
            and check_entry(Entry(key, 0, current), network) is None
        ):
            return UNCHANGED  # registering again is a no-op: the epoch does not move
        return self_record(identity, network=network, key=key, role=role, at_ms=_now_ms())

    return (await members.update(key, change, replace_unreadable=True)).changed


async def register(nc: Client, subjects: Subjects, worker_id: str, identity: AgentIdentity) -> bool:
    """Make ``worker_id`` an active verifier with ``identity``'s key; True if anything changed.

    The record is signed by the key it names (proof of possession), so nobody can
    claim a key they do not hold. A quarantine is a separate record
    (``quarantined.<id>``) that re-registering does not touch; the verifier then
    keeps its record as it is (an operator clears it with ``members remove``).
    """
    kv = await members_bucket(nc, subjects)
    members = KeyValue.of(kv, MemberRecord)
    try:
        entry = await members.get(quarantine_key(worker_id))
    except CodecError:
        entry = None
    if entry is not None and entry.value.public_key == identity.public_key:
        log.warning(
            "%s is quarantined; not re-registering it (an operator clears it with "
            "'members remove %s')",
            worker_id,
            worker_id,
        )
        return False
    return await _write_own(nc, subjects, worker_id, identity, ROLE_VERIFIER)


async def admit(nc: Client, subjects: Subjects, worker_id: str, public_key: bytes) -> bool:
    """The admin's admission of seat ``worker_id`` with ``public_key`` (record
    ``admitted.<id>``, no signature: the consortium holds only the public key);
    True if anything changed. Refuses a key another seat holds."""
    pool = await read_pool(nc, subjects)
    holders = [
        m.worker_id for m in pool.members if m.public_key == public_key and m.worker_id != worker_id
    ]
    if holders:  # one key, one seat: the first holder keeps it anyway
        raise ConfigError(
            f"public key already registered as {', '.join(holders)}; "
            f"one key may hold only one pool seat"
        )
    network = subjects.prefix
    key = admitted_key(worker_id)
    members = KeyValue.of(await members_bucket(nc, subjects), MemberRecord)

    def change(current: MemberRecord | None) -> MemberRecord | NoChange:
        if (
            current is not None
            and current.public_key == public_key
            and check_entry(Entry(key, 0, current), network) is None
        ):
            return UNCHANGED
        return admitted_record(worker_id, public_key, network=network, at_ms=_now_ms())

    return (await members.update(key, change, replace_unreadable=True)).changed


async def remove(nc: Client, subjects: Subjects, worker_id: str) -> bool:
    """Remove seat ``worker_id`` (its own record and its admission) and clear its
    quarantine: an operator's act."""
    kv = await members_bucket(nc, subjects)
    removed = False
    with map_jetstream_errors(f"removing {worker_id} from the pool"):
        for key in (worker_id, admitted_key(worker_id), quarantine_key(worker_id)):
            try:
                await kv.get(key)
            except KeyNotFoundError:
                continue
            await kv.delete(key)
            removed = True
    return removed


async def register_tally(
    nc: Client, subjects: Subjects, worker_id: str, identity: AgentIdentity
) -> bool:
    """Admit tally ``worker_id`` with ``identity``'s key (its record ``tally.<id>``,
    signed by that key); True if anything changed. Registering again is a no-op."""
    return await _write_own(nc, subjects, tally_record_key(worker_id), identity, ROLE_TALLY)


async def quarantine(
    nc: Client, subjects: Subjects, worker_id: str, public_key: bytes
) -> int | None:
    """Quarantine seat ``worker_id`` if it is an active verifier seat holding ``public_key``.

    Writes (create-only) the record ``quarantined.<worker_id>`` naming the key; the
    pool honours it while the seat holds that key, for at most f seats. Returns the
    new epoch (the bucket revision written), or None if the seat is gone, holds
    another key, or is quarantined already.
    """
    pool = await read_pool(nc, subjects)
    seat = next((m for m in pool.verifiers if m.worker_id == worker_id), None)
    if seat is None or seat.public_key != public_key or seat.status != ACTIVE:
        return None
    members = KeyValue.of(await members_bucket(nc, subjects), MemberRecord)
    record = quarantine_record(worker_id, public_key, network=subjects.prefix, at_ms=_now_ms())

    def change(current: MemberRecord | None) -> MemberRecord | NoChange:
        # compare-and-set: a quarantine of this key stays (and counts once); a stale
        # one naming the seat's earlier key, or an unreadable one, is replaced
        if current is not None and current.public_key == public_key:
            return UNCHANGED
        return record

    result = await members.update(quarantine_key(worker_id), change, replace_unreadable=True)
    return result.revision if result.changed else None


def _entry(key: str, revision: int, value: bytes | None) -> Entry | None:
    try:
        return Entry(key, revision, MemberRecord.decode(value or b""))
    except CodecError:
        return None


@dataclass(frozen=True)
class _Snapshot:
    """The bucket's current entries at ``epoch`` and, per key, how many of its
    messages the stream still holds (``history``: the per-key limit)."""

    epoch: int
    entries: dict[str, Entry]
    counts: dict[str, int]
    history: int


#: The most one pool read may take, its retries included. Each JetStream call in it
#: has nats-py's own 5 s timeout; without an overall bound ten attempts of a stream
#: info plus one get per record could stall a client call for minutes (issue #11).
READ_DEADLINE_S = 10.0
#: Attempts within the deadline (a read is retried when it raced a change, came back
#: partial, or JetStream did not answer).
READ_ATTEMPTS = 10
#: Pause between attempts.
READ_RETRY_S = 0.2


class _Retry(Exception):
    """One attempt at reading the pool failed in a way a later attempt may not."""


def _retryable(exc: BaseException) -> bool:
    """JetStream not answering (a timeout, "503 no responders": a stream just
    created or recovering, a leader election) is worth another attempt; a closed
    connection or an API error is not."""
    return isinstance(
        exc,
        (
            nats.errors.TimeoutError,
            TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        ),
    )


async def _snapshot(
    nc: Client, subjects: Subjects, *, deadline_s: float = READ_DEADLINE_S
) -> _Snapshot:
    """The current entries, complete and consistent, or PoolUnreadable.

    Everything is read from the stream *leader*: its subject listing and last
    sequence (the epoch) by STREAM.INFO, each record by STREAM.MSG.GET (last by
    subject). Not by direct gets (nats-py's ``kv.get``): any replica, or a mirror,
    may answer those, and one that has not caught up answers an old revision
    (nats-server #4162, seen after a restart) or "not found" for a record the
    leader lists (#4643) — the pool built from that is not the pool of the epoch.

    The epoch is read before and after the records and the read is retried if it
    moved, so a change landing mid-read cannot pair an epoch with another epoch's
    members (which would make certificates of that epoch fail). A read that comes
    back *partial* is retried too and never returned: a listed record a get does
    not find, or a listing that does not account for every message the stream
    holds. Returning those as a smaller pool was the false ``CERTIFICATE_INVALID``
    of issue #11. JetStream not answering (a timeout, 503) is retried as well; the
    whole read, retries included, ends within ``deadline_s``.
    """
    await members_bucket(nc, subjects)  # created with the pool's settings on first use
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    why = "no attempt finished"
    for _ in range(READ_ATTEMPTS):
        left = deadline - loop.time()
        if left <= 0:
            break
        try:  # asyncio.timeout, not wait_for, which can swallow a cancel (bus.tail.Wakeup)
            async with asyncio.timeout(left):
                return await _read_once(nc, subjects)
        except _Retry as exc:
            why = str(exc)
        except TransportError as exc:
            cause = exc.__cause__
            if cause is None or not _retryable(cause):
                raise  # a closed connection, an API error: another attempt will not help
            why = str(exc)
        except TimeoutError:  # the overall deadline cut the attempt short
            why = f"no complete answer within {deadline_s:g}s"
            break
        await asyncio.sleep(max(0.0, min(READ_RETRY_S, deadline - loop.time())))
    raise PoolUnreadable(f"cannot read the pool completely within {deadline_s:g}s: {why}")


async def _read_once(nc: Client, subjects: Subjects) -> _Snapshot:
    """One attempt: the stream's per-record listing, then each record's last message,
    all answered by the stream leader (see :func:`_snapshot`)."""
    with map_jetstream_errors("reading the pool"):
        return await _read_records(nc, subjects)


async def _read_records(nc: Client, subjects: Subjects) -> _Snapshot:
    js = nc.jetstream()
    stream = _stream(subjects)
    prefix = f"$KV.{subjects.members_bucket}."
    # not kv.keys(): it can answer "no keys" for a full bucket (bus.kv.subject_keys)
    info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    before = info.state.last_seq
    counts = {subject[len(prefix) :]: n for subject, n in (info.state.subjects or {}).items()}
    held = info.state.messages or 0
    if sum(counts.values()) != held:  # every message of the stream is some record's
        raise _Retry(
            f"partial read: the stream holds {held} messages but its listing "
            f"accounts for {sum(counts.values())}"
        )
    entries: dict[str, Entry] = {}
    for key in sorted(counts):
        try:  # STREAM.MSG.GET, not a direct get (kv.get): see _snapshot
            got = await js.get_msg(stream, subject=f"{prefix}{key}")
        except NotFoundError:
            raise _Retry(
                f"partial read: the stream lists {counts[key]} message(s) for record "
                f"{key!r} but the get found none"
            ) from None
        revision = got.seq or 0
        if revision > before or got.subject != f"{prefix}{key}":
            raise _Retry("the pool changed during the read")
        if _operation(got) in ("DEL", "PURGE"):
            continue  # its last message is a delete marker: the record is gone
        entry = _entry(key, revision, got.data)
        if entry is not None:
            entries[key] = entry
    if (await js.stream_info(stream)).state.last_seq != before:
        raise _Retry("the pool changed during the read")
    history = info.config.max_msgs_per_subject or 0
    return _Snapshot(before, entries, counts, history)


async def read_pool(nc: Client, subjects: Subjects) -> PoolView:
    """The current pool (see :func:`_snapshot` for how the read stays consistent)."""
    snap = await _snapshot(nc, subjects)
    return PoolView.from_entries(snap.epoch, list(snap.entries.values()), subjects.prefix)


def _stream(subjects: Subjects) -> str:
    return f"KV_{subjects.members_bucket}"


def _missing(seq: int) -> PoolHistoryMissing:
    return PoolHistoryMissing(
        f"revision {seq} of the pool history is gone (trimmed or purged): "
        f"the pool of that time cannot be rebuilt"
    )


async def _message(nc: Client, subjects: Subjects, seq: int) -> Any:
    """Message ``seq`` of the membership stream (a plain message get: no consumer);
    PoolHistoryMissing if the server no longer has it."""
    js = nc.jetstream()
    with map_jetstream_errors(f"reading revision {seq} of the pool history"):
        try:
            return await js.get_msg(_stream(subjects), seq=seq)
        except NotFoundError:
            raise _missing(seq) from None


async def _key_messages(nc: Client, subjects: Subjects, key: str, upto: int) -> list[Any]:
    """The messages the stream still holds for ``key`` with sequence <= ``upto``, oldest
    first (plain "next message for this subject" gets: no consumer)."""
    js = nc.jetstream()
    subject = f"$KV.{subjects.members_bucket}.{key}"
    out: list[Any] = []
    seq = 1
    with map_jetstream_errors(f"reading the history of pool record {key}"):
        while seq <= upto:
            try:
                msg = await js.get_msg(_stream(subjects), seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            if (msg.seq or 0) > upto:
                break
            out.append(msg)
            seq = (msg.seq or seq) + 1
    return out


def _operation(msg: Any) -> str | None:
    headers = msg.headers or {}
    op = headers.get("KV-Operation")
    return str(op) if op is not None else None


async def superseded_at(nc: Client, subjects: Subjects, epoch: int) -> float:
    """Server time (Unix seconds) of revision ``epoch + 1``, the change that ended
    pool ``epoch``. PoolHistoryMissing if that revision is gone (then nobody can say
    how long ago the epoch ended: fail closed)."""
    msg = await _message(nc, subjects, epoch + 1)
    if msg.time is None:
        raise PoolHistoryMissing(f"revision {epoch + 1} of the pool history has no time")
    return float(msg.time.timestamp())


async def pool_at(nc: Client, subjects: Subjects, epoch: int) -> PoolView:
    """The pool as it was at ``epoch``, rebuilt from the bucket's history.

    Certificates name the epoch they were decided in; right after a membership
    change a client still needs the superseded pool to re-check them. The rebuild
    starts from the current records and undoes every revision after ``epoch``: each
    of them is read by sequence, and each key they touched is read back to its last
    message at or before ``epoch`` — plain message gets only, no consumer is created.
    It fails closed (PoolHistoryMissing), never returning a partial pool, when a
    revision after ``epoch`` is gone, or when a touched key holds no message at or
    before ``epoch`` but may have had one (it holds as many messages as the bucket
    keeps per key, or its oldest one rolled up — purged — what came before). NATS
    trouble is a TransportError (retry), never CertificateInvalid.
    """
    snap = await _snapshot(nc, subjects)
    if epoch > snap.epoch or epoch < 0:
        raise PoolHistoryMissing(f"pool epoch {epoch} does not exist (the pool is at {snap.epoch})")
    prefix = f"$KV.{subjects.members_bucket}."
    touched: set[str] = set()
    for seq in range(epoch + 1, snap.epoch + 1):
        subject = (await _message(nc, subjects, seq)).subject or ""
        if subject.startswith(prefix):
            touched.add(subject[len(prefix) :])
    entries = {k: e for k, e in snap.entries.items() if k not in touched}
    for key in sorted(touched):
        every = await _key_messages(nc, subjects, key, snap.epoch)
        before = [m for m in every if (m.seq or 0) <= epoch]
        if before:  # what the stream holds of a key is a suffix of its history
            last = before[-1]
            entry = None
            if _operation(last) not in ("DEL", "PURGE"):
                entry = _entry(key, last.seq or 0, last.data)
            if entry is not None:
                entries[key] = entry
            continue
        rolled_up = bool(every) and "Nats-Rollup" in (every[0].headers or {})
        if rolled_up or (snap.history and snap.counts.get(key, 0) >= snap.history):
            raise _missing(every[0].seq if every else epoch)
    return PoolView.from_entries(epoch, list(entries.values()), subjects.prefix)


class PoolWatcher:
    """Keeps the current PoolView up to date, and says when its epoch moves.

    A BucketMirror (consumer-free direct gets, bus/tail.py) says *that* the bucket
    changed; the view is then re-read with :func:`read_pool`, because the pool
    rules need each record's revision (the first holder of a key keeps its seat,
    the earliest quarantines count), which a watch replay does not keep.

    ``on_change(view)`` runs (synchronously, in the watcher's task) every time a
    re-read moves the epoch: the tally re-ballots open requests from it. Code that
    needs a given epoch awaits :meth:`wait_for_epoch` instead of re-reading the
    pool itself (the verifier, for a ballot from a tally that saw a change first).
    """

    #: how often the view is compared with the mirror's revision when nothing fired
    POLL_S = 1.0

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        on_change: Callable[[PoolView], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._mirror: BucketMirror[bytes] = BucketMirror(
            nc, subjects.members_bucket, lambda _key, value: value, on_change=self._changed
        )
        self._on_change = on_change
        self._dirty = asyncio.Event()
        #: set (and replaced) whenever the epoch moves: what wait_for_epoch waits on
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._read_failures = 0
        self.view = PoolView(0, ())

    @property
    def failures(self) -> int:
        return self._mirror.failures + self._read_failures

    async def wait_for_epoch(self, epoch: int, timeout: float) -> bool:
        """Wait until the view is at ``epoch`` or later (True) or ``timeout`` passed.

        The watcher is asked to re-read now (the caller knows of a newer epoch, e.g.
        from a ballot), then woken by every epoch change, never by polling."""
        if self.view.epoch >= epoch:
            return True
        self._dirty.set()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.view.epoch < epoch:
            left = end - loop.time()
            if left <= 0:
                return False
            moved = self._moved
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: bus.tail.Wakeup.wait
                    await moved.wait()
        return True

    async def start(self, timeout: float = 5.0) -> None:
        await members_bucket(self._nc, self._subjects)  # created with the pool's settings
        await self._mirror.start(timeout)
        await self._refresh()
        self._task = asyncio.create_task(self._run())

    def _changed(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see bus.tail.Wakeup.wait
                async with asyncio.timeout(self.POLL_S):
                    await self._dirty.wait()
            if not self._dirty.is_set() and self._mirror.revision <= self.view.epoch:
                continue
            self._dirty.clear()
            try:
                await self._refresh()
            except Exception as exc:  # NATS trouble: keep the last view, try again
                self._read_failures += 1
                log.warning("could not re-read the pool: %s", exc)
                self._dirty.set()
                await asyncio.sleep(self.POLL_S)

    async def _refresh(self) -> None:
        view = await read_pool(self._nc, self._subjects)
        if view.epoch < self.view.epoch:
            return
        if view != self.view:
            log.info("pool epoch %d: %d active verifiers", view.epoch, len(view.keys))
            for key, why in view.rejected:
                log.warning("pool epoch %d: %s does not count: %s", view.epoch, key, why)
            if view.over_cap:
                log.warning(
                    "pool epoch %d: quarantine of %s not honoured (f seats are out "
                    "already); an operator decides ('members remove')",
                    view.epoch,
                    ", ".join(view.over_cap),
                )
        moved = view.epoch != self.view.epoch
        self.view = view
        if moved:
            self._moved.set()
            self._moved = asyncio.Event()
            if self._on_change is not None:
                try:
                    self._on_change(view)
                except Exception:  # a hook's bug must not stop the pool from being followed
                    log.exception("pool change hook failed at epoch %d", view.epoch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        await self._mirror.stop()
