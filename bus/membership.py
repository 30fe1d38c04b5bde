"""Verifier membership in a JetStream key-value bucket.

Key = verifier id, value = a MessagePack MemberRecord. The pool is the set of
active members' public keys; the pool *epoch* is the bucket's latest revision
(its stream's last sequence), so every membership change — join, key change,
removal — gives a new, larger epoch, and every tally watching the bucket
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
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from bus.kv import UNCHANGED, KeyValue, NoChange, subject_keys
from bus.nats_errors import map_jetstream_errors
from bus.state import BucketMirror, ensure_bucket
from bus.subjects import Subjects
from schemas.codec import decode, encode
from schemas.errors import (
    CodecError,
    ConfigError,
    SchemaViolation,
    TransportError,
    WriteConflict,
)
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
        return encode(
            {
                "type": "member",
                "v": 1,
                "worker_id": self.worker_id,
                "public_key": self.public_key,
                "status": self.status,
                "registered_at_ms": self.registered_at_ms,
            }
        )

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
    def verifiers(self) -> tuple[MemberRecord, ...]:
        """Verifier records (and quarantine records), not tally records."""
        return tuple(m for m in self.members if not m.worker_id.startswith(TALLY_PREFIX))

    @property
    def tallies(self) -> tuple[MemberRecord, ...]:
        return tuple(m for m in self.members if m.worker_id.startswith(TALLY_PREFIX))

    @property
    def keys(self) -> frozenset[bytes]:
        """Active verifier keys. Quarantine applies to the key, not the id: a key
        quarantined under any id is out of the pool even if another id holds it actively."""
        quarantined = {m.public_key for m in self.members if m.status == QUARANTINED}
        return frozenset(
            m.public_key
            for m in self.members
            if m.status == ACTIVE
            and m.public_key not in quarantined
            and not m.worker_id.startswith(TALLY_PREFIX)
        )

    @property
    def tally_keys(self) -> frozenset[bytes]:
        """Keys of the admitted tallies (records ``tally.<id>``): verifiers judge only
        ballots signed by one of them."""
        return frozenset(
            m.public_key
            for m in self.members
            if m.status == ACTIVE and m.worker_id.startswith(TALLY_PREFIX)
        )


async def members_bucket(nc: Client, subjects: Subjects) -> Any:
    """Bind the membership bucket, creating it on first use (history 5)."""
    return await ensure_bucket(
        nc,
        subjects.members_bucket,
        history=5,
        forbid_ttl=True,
        description="agentic-payments verifier pool",
    )


async def register(
    nc: Client, subjects: Subjects, worker_id: str, public_key: bytes, *, check_holders: bool = True
) -> bool:
    """Make ``worker_id`` an active member with ``public_key``; True if anything changed.

    ``check_holders`` refuses a key another id holds (``admit``, an operator's tool).
    A verifier registering itself skips it: it may read single records only (see
    bus/permissions.kv_lookup), and the pool counts a key once however many ids
    hold it, and quarantines it whichever id is quarantined.
    """
    kv = await members_bucket(nc, subjects)
    record = MemberRecord(worker_id, public_key, ACTIVE, time.time_ns() // 1_000_000)
    if check_holders:
        holders = list(
            dict.fromkeys(
                m.worker_id
                for m in (await read_pool(nc, subjects)).members
                if m.public_key == public_key and m.worker_id != worker_id
            )
        )
        if holders:  # one key, one member: two ids would count one verifier twice
            raise ConfigError(
                f"public key already registered as {', '.join(holders)}; "
                f"one key may hold only one pool seat"
            )
    members = KeyValue.of(kv, MemberRecord)
    if await members.revision(quarantine_key(worker_id)) is not None:
        _log_quarantined(worker_id)
        return False

    def change(current: MemberRecord | None) -> MemberRecord | NoChange:
        if current is None:  # absent, or a malformed record being replaced
            return record
        if current.status == QUARANTINED:
            return UNCHANGED
        if current.public_key == public_key and current.status == ACTIVE:
            return UNCHANGED  # registering again is a no-op: the epoch does not move
        return record

    result = await members.update(worker_id, change, replace_unreadable=True)
    if result.value is not None and result.value.status == QUARANTINED:
        _log_quarantined(worker_id)
    return result.changed


def _log_quarantined(worker_id: str) -> None:
    log.warning(
        "%s is quarantined; not re-registering it (an operator clears it with 'members remove %s')",
        worker_id,
        worker_id,
    )


async def remove(nc: Client, subjects: Subjects, worker_id: str) -> bool:
    """Remove ``worker_id`` from the pool, and clear its quarantine (an operator's act)."""
    kv = await members_bucket(nc, subjects)
    removed = False
    with map_jetstream_errors(f"removing {worker_id} from the pool"):
        for key in (worker_id, quarantine_key(worker_id)):
            try:
                await kv.get(key)
            except KeyNotFoundError:
                continue
            await kv.delete(key)
            removed = True
    return removed


#: Key prefix of tally records: ``tally.<id>`` holds the key tally ``<id>`` signs
#: ballots and certificates with (written by that tally, bus/permissions.py).
TALLY_PREFIX = "tally."


def tally_record_key(worker_id: str) -> str:
    return f"{TALLY_PREFIX}{worker_id}"


async def register_tally(nc: Client, subjects: Subjects, worker_id: str, public_key: bytes) -> bool:
    """Admit tally ``worker_id`` with ``public_key`` (its record ``tally.<id>``); True if
    anything changed. Registering again with the same key is a no-op."""
    key = tally_record_key(worker_id)
    members = KeyValue.of(await members_bucket(nc, subjects), MemberRecord)
    record = MemberRecord(key, public_key, ACTIVE, time.time_ns() // 1_000_000)

    def change(current: MemberRecord | None) -> MemberRecord | NoChange:
        if current is not None and current.public_key == public_key and current.status == ACTIVE:
            return UNCHANGED
        return record

    return (await members.update(key, change, replace_unreadable=True)).changed


#: Key prefix of quarantine records. They are separate from the member's own record
#: (which the verifier itself writes when it registers), so a quarantined verifier
#: cannot undo its quarantine by rewriting its record, and the anomaly role may
#: write only these keys (bus/permissions.py).
QUARANTINE_PREFIX = "quarantined."


def quarantine_key(worker_id: str) -> str:
    return f"{QUARANTINE_PREFIX}{worker_id}"


async def quarantine(
    nc: Client, subjects: Subjects, worker_id: str, public_key: bytes
) -> int | None:
    """Quarantine ``worker_id``'s key if it is an active member with ``public_key``.

    Writes (create-only) the record ``quarantined.<worker_id>``; the pool
    excludes every key with a quarantine record. Returns the new epoch (the
    bucket revision written), or None if the member is gone, holds another
    key, or is quarantined already.
    """
    members = KeyValue.of(await members_bucket(nc, subjects), MemberRecord)
    try:
        entry = await members.get(worker_id)
    except CodecError:
        return None
    if entry is None or entry.value.public_key != public_key or entry.value.status != ACTIVE:
        return None
    record = MemberRecord(worker_id, public_key, QUARANTINED, time.time_ns() // 1_000_000)
    try:
        return await members.create(quarantine_key(worker_id), record)
    except WriteConflict:
        return None  # quarantined already


async def read_pool(nc: Client, subjects: Subjects) -> PoolView:
    """The current pool. The epoch is read before and after the records and the read
    is retried if it moved, so a change landing mid-read cannot pair an epoch with
    another epoch's members (which would make certificates of that epoch fail)."""
    kv = await members_bucket(nc, subjects)
    failure: Exception | None = None
    with map_jetstream_errors("reading the pool"):
        for _ in range(10):
            before = (await kv.status()).stream_info.state.last_seq
            members = []
            try:  # not kv.keys(): it can answer "no keys" for a full bucket (subject_keys)
                keys = await subject_keys(kv)
            except Exception as exc:  # a timeout under load: never report "no members" for it
                failure = exc
                await asyncio.sleep(0.2)
                continue
            for key in keys:
                try:
                    entry = await kv.get(key)
                    members.append(MemberRecord.decode(entry.value or b""))
                except (KeyNotFoundError, CodecError):
                    continue
            if (await kv.status()).stream_info.state.last_seq == before:
                return PoolView(epoch=before, members=tuple(members))
    if failure is not None:
        raise TransportError(f"cannot read the pool: {failure.__class__.__name__}: {failure}")
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
    members: dict[str, MemberRecord] = {}
    with map_jetstream_errors(f"replaying the pool history to epoch {epoch}"):
        if (await kv.status()).stream_info.state.last_seq == 0:
            return PoolView(epoch, ())
        watcher = await kv.watchall(include_history=True)
        try:
            async with asyncio.timeout(10):
                async for entry in watcher:
                    # nats-py's end-of-replay None can come before the history
                    # (see bus.kv.subject_keys): only the entries themselves say
                    # where the replay is (revision past epoch, or delta 0: the last)
                    if entry is None:
                        continue
                    if (entry.revision or 0) > epoch:
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
    """Keeps the current PoolView up to date from a BucketMirror (consumer-free
    direct gets, bus/tail.py; a malformed record is skipped)."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._mirror: BucketMirror[MemberRecord] = BucketMirror(
            nc,
            subjects.members_bucket,
            lambda _key, value: MemberRecord.decode(value),
            on_change=self._publish,
        )
        self.view = PoolView(0, ())

    @property
    def failures(self) -> int:
        return self._mirror.failures

    async def start(self, timeout: float = 5.0) -> None:
        await members_bucket(self._nc, self._subjects)  # created with the pool's settings
        await self._mirror.start(timeout)
        self._publish()

    def _publish(self) -> None:
        members = [m for m in self._mirror.items.values() if isinstance(m, MemberRecord)]
        view = PoolView(self._mirror.revision, tuple(sorted(members, key=lambda m: m.worker_id)))
        if view != self.view:
            log.info("pool epoch %d: %d active verifiers", view.epoch, len(view.keys))
        self.view = view

    async def stop(self) -> None:
        await self._mirror.stop()
