"""Verifier membership in a JetStream key-value bucket.

Key = verifier id, value = a MessagePack MemberRecord. The pool is the set of
active members' public keys; the pool *epoch* is the bucket's latest revision
(its stream's last sequence), so every membership change — join, key change,
removal — gives a new, larger epoch, and every tally watching the bucket
agrees on it without coordination. Registering again with the same key is a
no-op, so restarts do not churn the epoch. Updates use compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from bus.config import js_replicas
from bus.subjects import Subjects
from schemas.codec import decode, encode
from schemas.errors import CodecError, SchemaViolation
from schemas.identity import PUBLIC_KEY_BYTES

log = logging.getLogger("agentic_payments.membership")
ACTIVE = "active"
#: Set by the anomaly worker on a Byzantine verifier: the record stays (as a
#: trace of why) but the key is out of the pool; ``register`` does not
#: re-activate it — an operator clears it with ``members remove``.
QUARANTINED = "quarantined"


@dataclass(frozen=True)
class MemberRecord:
    worker_id: str
    public_key: bytes
    status: str = ACTIVE
    registered_at_ms: int = 0

    def encode(self) -> bytes:
        return encode({"type": "member", "v": 1, "worker_id": self.worker_id,
                       "public_key": self.public_key, "status": self.status,
                       "registered_at_ms": self.registered_at_ms})

    @classmethod
    def decode(cls, data: bytes) -> MemberRecord:
        """Strict: anything malformed is a SchemaViolation (the record is then ignored)."""
        obj = decode(data)
        if not isinstance(obj, dict) or obj.get("type") != "member" or obj.get("v") != 1:
            raise SchemaViolation("not a version 1 member record")
        key = obj.get("public_key")
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise SchemaViolation("member public_key must be 32 bytes")
        worker_id, status, at = obj.get("worker_id"), obj.get("status"), obj.get("registered_at_ms")
        if not isinstance(worker_id, str) or not isinstance(status, str):
            raise SchemaViolation("member worker_id and status must be strings")
        if not isinstance(at, int) or isinstance(at, bool):
            raise SchemaViolation("member registered_at_ms must be an integer")
        return cls(worker_id=worker_id, public_key=key, status=status, registered_at_ms=at)


@dataclass(frozen=True)
class PoolView:
    """The pool as of one epoch."""

    epoch: int
    members: tuple[MemberRecord, ...]

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(m.public_key for m in self.members if m.status == ACTIVE)


async def members_bucket(nc: Client, subjects: Subjects) -> Any:
    """Bind the membership bucket, creating it on first use."""
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.members_bucket)
    except BucketNotFoundError:
        replicas = js_replicas()
        with contextlib.suppress(Exception):  # a concurrent creator won the race
            return await js.create_key_value(bucket=subjects.members_bucket, history=5,
                                             replicas=replicas,
                                             description="agentic-payments verifier pool")
        return await js.key_value(subjects.members_bucket)


async def register(nc: Client, subjects: Subjects, worker_id: str, public_key: bytes) -> bool:
    """Make ``worker_id`` an active member with ``public_key``; True if anything changed."""
    kv = await members_bucket(nc, subjects)
    record = MemberRecord(worker_id, public_key, ACTIVE, time.time_ns() // 1_000_000)
    for _ in range(5):
        try:
            entry = await kv.get(worker_id)
        except KeyNotFoundError:
            try:
                await kv.create(worker_id, record.encode())
                return True
            except KeyWrongLastSequenceError:
                continue
        try:
            current = MemberRecord.decode(entry.value or b"")
            if current.public_key == public_key and current.status == ACTIVE:
                return False
            if current.status == QUARANTINED:
                log.warning("%s is quarantined; not re-registering it (an operator clears "
                            "it with 'members remove %s')", worker_id, worker_id)
                return False
        except CodecError:
            pass
        try:
            await kv.update(worker_id, record.encode(), last=entry.revision)
            return True
        except KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"could not register {worker_id}: too much contention")


async def remove(nc: Client, subjects: Subjects, worker_id: str) -> bool:
    kv = await members_bucket(nc, subjects)
    try:
        await kv.get(worker_id)
    except KeyNotFoundError:
        return False
    await kv.delete(worker_id)
    return True


async def quarantine(nc: Client, subjects: Subjects, worker_id: str,
                     public_key: bytes) -> int | None:
    """Mark ``worker_id`` quarantined if it is active with ``public_key`` (compare-and-set).

    Returns the new epoch (the bucket revision written), or None if the
    record is gone, inactive already, or now holds another key.
    """
    kv = await members_bucket(nc, subjects)
    for _ in range(5):
        try:
            entry = await kv.get(worker_id)
            current = MemberRecord.decode(entry.value or b"")
        except (KeyNotFoundError, CodecError):
            return None
        if current.public_key != public_key or current.status != ACTIVE:
            return None
        record = MemberRecord(worker_id, public_key, QUARANTINED, current.registered_at_ms)
        try:
            revision: int = await kv.update(worker_id, record.encode(), last=entry.revision)
            return revision
        except KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"could not quarantine {worker_id}: too much contention")


async def read_pool(nc: Client, subjects: Subjects) -> PoolView:
    """The current pool. The epoch is read before and after the records and the read
    is retried if it moved, so a change landing mid-read cannot pair an epoch with
    another epoch's members (which would make certificates of that epoch fail)."""
    kv = await members_bucket(nc, subjects)
    for _ in range(10):
        before = (await kv.status()).stream_info.state.last_seq
        members = []
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            try:
                entry = await kv.get(key)
                members.append(MemberRecord.decode(entry.value or b""))
            except (KeyNotFoundError, CodecError):
                continue
        if (await kv.status()).stream_info.state.last_seq == before:
            break
    return PoolView(epoch=before, members=tuple(members))


async def pool_at(nc: Client, subjects: Subjects, epoch: int) -> PoolView:
    """The pool as it was at ``epoch``, replayed from the bucket's history.

    Certificates name the epoch they were decided in; after a membership
    change a client still needs that older pool to re-check them. The bucket
    keeps 5 revisions per key, so a key changed more than 5 times since
    ``epoch`` is reconstructed wrongly — and the certificate check then fails
    closed rather than trusting anything.
    """
    kv = await members_bucket(nc, subjects)
    watcher = await kv.watchall(include_history=True)
    members: dict[str, MemberRecord] = {}
    try:
        async with asyncio.timeout(10):
            async for entry in watcher:
                if entry is None or (entry.revision or 0) > epoch:
                    break
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    members.pop(entry.key, None)
                else:
                    try:
                        members[entry.key] = MemberRecord.decode(entry.value)
                    except CodecError:
                        members.pop(entry.key, None)
                if entry.delta == 0:
                    break
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return PoolView(epoch, tuple(sorted(members.values(), key=lambda m: m.worker_id)))


class PoolWatcher:
    """Keeps the current PoolView up to date from a KV watch."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._members: dict[str, MemberRecord] = {}
        self._epoch = 0
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.view = PoolView(0, ())
        self.failures = 0
        self._replaying = True

    async def start(self, timeout: float = 5.0) -> None:
        kv = await members_bucket(self._nc, self._subjects)
        status = await kv.status()
        self._epoch = status.stream_info.state.last_seq
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _run(self) -> None:
        """Apply watch updates; a bad record is skipped, a dead watch is restarted."""
        while True:
            try:
                await self._consume()
                return  # watcher stopped on purpose
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("membership watch failed; restarting it")
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._watcher.stop()
                with contextlib.suppress(Exception):
                    kv = await members_bucket(self._nc, self._subjects)
                    self._watcher = await kv.watchall()
                    self._members = {}  # rebuilt from the replay; view kept until it ends
                    self._replaying = True

    async def _consume(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                self._replaying = False
                self._publish()
                self._ready.set()
                continue
            if entry.revision:
                self._epoch = max(self._epoch, entry.revision)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._members.pop(entry.key, None)
            else:
                try:
                    self._members[entry.key] = MemberRecord.decode(entry.value)
                except CodecError:
                    log.warning("ignoring malformed member record %r", entry.key)
                    self._members.pop(entry.key, None)
            if entry.delta == 0:
                self._replaying = False
            if not self._replaying:
                self._publish()
                self._ready.set()

    def _publish(self) -> None:
        view = PoolView(self._epoch, tuple(sorted(self._members.values(),
                                                  key=lambda m: m.worker_id)))
        if view != self.view:
            log.info("pool epoch %d: %d active verifiers", view.epoch, len(view.keys))
        self.view = view

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
