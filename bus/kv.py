"""Typed compare-and-set on a JetStream key-value bucket: the one place a CAS loop lives.

Every service that keeps records in a KV bucket (the pool, the verdict state,
the key store, the recovery attempts) writes with compare-and-set: ``create``
for a key that must not exist yet, ``update(last=revision)`` otherwise, and
when another writer got there first, read again and re-apply the change.
That loop used to be written out at each site, each with its own attempt count
(5, 8 or 20) and its own exception on giving up; :class:`KeyValue` is that
loop once:

* ``get`` -> an :class:`Entry` (decoded value and revision) or None; ``keys``;
* ``create`` -> the revision, or the handle's conflict error if the key exists;
* ``put(key, value, last=)`` -> one CAS write at a revision the caller read;
* ``update(key, change)`` -> read, apply the pure ``change(current | None)``
  (which returns the new record or :data:`UNCHANGED`), write at the revision
  read, and on a lost race start again, at most :data:`CAS_ATTEMPTS` times;
* ``delete(key)`` -> the same loop for a delete.

Errors are the project's own: a lost race is the handle's ``conflict`` class
(a :class:`~schemas.errors.WriteConflict`; each service passes the subclass
whose code it has always answered, e.g. TrustConflict -> TRUST_CONFLICT), an
undecodable record is the decoder's CodecError, and NATS trouble is a
TransportError (NotConnected, RequestTimeout; bus/nats_errors.py maps them).
No nats-py exception leaves this module.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import nats.js.errors

from bus.nats_errors import map_jetstream_errors
from schemas.errors import CodecError, WriteConflict

log = logging.getLogger("agentic_payments.kv")

#: How many times ``update`` and ``delete`` read and write before giving up with the
#: conflict error. Every retry re-reads, so a retry only loses to a writer that
#: changed the key in between; the budget is the largest the former per-service
#: loops used (5, 8 and 20), so no write gives up sooner than it used to. No
#: backoff: none of those loops had one, and each lost race means another
#: writer made progress.
CAS_ATTEMPTS = 20

#: JetStream API error codes for "wrong last sequence" (the expected revision moved).
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})

T = TypeVar("T")
R = TypeVar("R", bound="Record")


async def subject_keys(kv: Any, pattern: str = ">") -> list[str]:
    """Every key matching ``pattern`` with a message in nats-py bucket ``kv``, deleted
    ones included, sorted.

    Read from the stream's per-subject state, not with nats-py's ``kv.keys()``:
    that one is a watch whose end-of-replay marker is decided from the
    consumer's ``num_pending``, and the consumer-info reply can overtake the
    pushed messages, so under load it can answer "no keys" (NoKeysError) for a
    bucket that has them (seen in CI as a pool of 0 keys). A deleted key's
    last message is its delete marker: a ``get`` then says it is gone.
    """
    prefix: str = kv._pre  # "$KV.<bucket>." (nats-py KeyValue), the KV naming convention
    with map_jetstream_errors("listing the keys of the bucket"):
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{prefix}{pattern}")
    return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))


class Record(Protocol):
    """A record class that serialises itself (every WireMessage, KeyRecord, MemberRecord)."""

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, data: bytes) -> Self: ...


class NoChange(enum.Enum):
    UNCHANGED = "unchanged"


#: What a ``change`` function returns to leave the record as it is (nothing is written).
UNCHANGED: Literal[NoChange.UNCHANGED] = NoChange.UNCHANGED

Change = Callable[[T | None], T | Literal[NoChange.UNCHANGED]]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A decoded record and the revision it was read at."""

    key: str
    value: T
    revision: int


@dataclass(frozen=True)
class Updated(Generic[T]):
    """What ``update`` did.

    ``value`` is the record now stored (the new one, or the current one when the
    change returned UNCHANGED; None when the key is absent and stays so);
    ``revision`` is its revision (0 for an absent key). ``created``: the key was
    absent (or deleted) and this write created it. ``retries``: races lost first.
    """

    value: T | None
    revision: int
    changed: bool
    created: bool
    retries: int


class KeyValue(Generic[T]):
    """A typed handle over one nats-py KV bucket (``js.key_value(...)``).

    ``conflict`` is the error raised when a create finds the key taken or the
    attempt budget runs out (a WriteConflict subclass, for the service's wire
    code); ``on_retry`` runs after every lost race (services count them).
    Several handles may share one bucket (the verdict state holds several
    record types, one handle per type).
    """

    def __init__(
        self,
        kv: Any,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        conflict: type[WriteConflict] = WriteConflict,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._kv = kv
        self._encode = encode
        self._decode = decode
        self._conflict = conflict
        self._on_retry = on_retry

    @classmethod
    def of(
        cls,
        kv: Any,
        record: type[R],
        *,
        conflict: type[WriteConflict] = WriteConflict,
        on_retry: Callable[[], None] | None = None,
    ) -> KeyValue[R]:
        """A handle for a record class with ``encode()`` and a ``decode(data)`` classmethod."""
        return KeyValue(kv, record.encode, record.decode, conflict=conflict, on_retry=on_retry)

    # ------------------------------------------------------------ reads
    async def revision(self, key: str) -> int | None:
        """The key's current revision without decoding it; None if absent or deleted."""
        entry = await self._get_raw(key)
        return None if entry is None else entry[1]

    async def get(self, key: str) -> Entry[T] | None:
        """The decoded record, or None if absent or deleted; CodecError if undecodable."""
        raw = await self._get_raw(key)
        if raw is None:
            return None
        return Entry(key, self._decode(raw[0]), raw[1])

    async def keys(self) -> list[str]:
        """Every key holding a record (not deleted ones), sorted; [] for an empty bucket."""
        return [key for key in await subject_keys(self._kv) if await self._get_raw(key)]

    async def last_revision(self) -> int:
        """The bucket's latest revision (its stream's last sequence)."""
        with map_jetstream_errors("reading the status of the bucket"):
            status = await self._kv.status()
        return int(status.stream_info.state.last_seq)

    # ------------------------------------------------------------ writes
    async def create(self, key: str, value: T) -> int:
        """Write ``value`` if ``key`` is absent (or deleted); its revision, else the conflict."""
        return await self.put(key, value, last=0)

    async def put(self, key: str, value: T, *, last: int) -> int:
        """One compare-and-set write: succeeds only if ``key`` is still at revision ``last``
        (0: absent or deleted). Returns the new revision; the conflict error if it moved."""
        data = self._encode(value)
        with map_jetstream_errors(f"writing {key}"):
            try:
                if last:
                    return int(await self._kv.update(key, data, last=last))
                return int(await self._kv.create(key, data))
            except nats.js.errors.APIError as exc:
                if not _lost_race(exc):
                    raise
                what = "exists already" if not last else f"is no longer at revision {last}"
                raise self._conflict(f"{key} {what}; re-read and retry") from None

    async def update(
        self, key: str, change: Change[T], *, replace_unreadable: bool = False
    ) -> Updated[T]:
        """Read ``key``, apply ``change``, write at the revision read; retried on a lost race.

        ``change`` gets the current record (None when the key is absent) and returns
        the new one or UNCHANGED; an exception it raises (a refusal) ends the update
        with nothing written. It may run once per attempt, so it must not have
        effects beyond its result. An undecodable current record raises the
        decoder's CodecError, unless ``replace_unreadable``: then ``change`` sees
        None and its result overwrites the record (at its revision).
        """
        for attempt in range(CAS_ATTEMPTS):
            raw = await self._get_raw(key)
            revision = 0 if raw is None else raw[1]
            current: T | None = None
            if raw is not None:
                try:
                    current = self._decode(raw[0])
                except CodecError as exc:
                    if not replace_unreadable:
                        raise
                    log.warning("replacing unreadable record %s: [%s] %s", key, exc.code, exc)
            new = change(current)
            if new is UNCHANGED:
                return Updated(current, revision, changed=False, created=False, retries=attempt)
            try:
                written = await self.put(key, new, last=revision)
            except WriteConflict:
                self._retried()
                continue
            return Updated(new, written, changed=True, created=raw is None, retries=attempt)
        raise self._conflict(f"{key} changed under every one of {CAS_ATTEMPTS} attempts; retry")

    async def delete(self, key: str) -> int | None:
        """Delete ``key`` at the revision read (retried on a lost race); None if absent.

        Returns the bucket's last revision after the delete (the delete's own or a
        later one), which a caller can wait for in a mirror of the bucket.
        """
        for _ in range(CAS_ATTEMPTS):
            revision = await self.revision(key)
            if revision is None:
                return None
            with map_jetstream_errors(f"deleting {key}"):
                try:
                    await self._kv.delete(key, last=revision)
                except nats.js.errors.APIError as exc:
                    if not _lost_race(exc):
                        raise
                    self._retried()  # nats-py does not convert this one for delete
                    continue
            return await self.last_revision()
        raise self._conflict(f"{key} changed under every one of {CAS_ATTEMPTS} attempts; retry")

    # ------------------------------------------------------------ plumbing
    def _retried(self) -> None:
        if self._on_retry is not None:
            self._on_retry()

    async def _get_raw(self, key: str) -> tuple[bytes, int] | None:
        with map_jetstream_errors(f"reading {key}"):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # includes deleted and purged keys
                return None
        return entry.value or b"", int(entry.revision or 0)


def _lost_race(exc: nats.js.errors.APIError) -> bool:
    """Whether ``exc`` is JetStream's "wrong last sequence" (another writer won)."""
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return True
    return exc.err_code in WRONG_LAST_SEQUENCE
