"""The verdict state bucket: everything a verifier consults beyond the signature.

Key status (from the key manager), trust anchors and certificates (from the
trust-chain validator), authorities and quorum policies (from the authority
coordinator) all live in one JetStream key-value bucket, ``{prefix}_state``,
each service owning its own key prefix (:data:`AREAS`). One bucket means one
*state revision* — the bucket's last sequence, exactly like the pool epoch —
so a vote can say which state it was judged under and a tally can refuse to
count votes judged under different states in one decision.

Services write with compare-and-set (``create`` for new keys, ``update`` with
the last revision otherwise). Private material never goes here; the key
manager keeps encrypted private keys in its own bucket.

:class:`BucketMirror` keeps a decoded, always-current copy of any bucket
without a JetStream consumer (bus/tail.py: direct gets, woken by a core
subscription and a poll), skipping malformed records, so readers answer from
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError

from bus.config import js_replicas
from bus.nats_errors import map_jetstream_errors
from bus.subjects import Subjects
from bus.tail import (
    POLL_S,
    StoredMsg,
    Wakeup,
    is_server_copy,
    read_until_caught_up,
    stored_headers,
    stream_info,
)
from schemas.codec import Deleted, Unreadable
from schemas.errors import CodecError, ConfigError, RequestTimeout

log = logging.getLogger("agentic_payments.state")
T = TypeVar("T")
#: ``merge(key, current, new) -> stored``: what a mirror keeps when ``new`` (a decoded
#: record, an Unreadable or a Deleted marker) arrives over ``current`` (None if the
#: key had nothing). Lets a reader refuse changes no honest writer makes (the
#: verdict state keeps a revocation once seen: workers/consensus/verdict_state.py).
Merge = Callable[[str, object, object], object]

#: Key prefixes in the state bucket and the service that owns each.
AREAS = {
    "key": "keys",  # key.<public key hex>        -> key status (revocation, expiry)
    "anchor": "trust",  # anchor.<public key hex>     -> trust anchor
    "cert": "trust",  # cert.<serial>               -> trust certificate
    "authority": "authority",  # authority.<public key hex> -> authority record
    "policy": "authority",  # policy.<category>           -> quorum policy
}
STATE_HISTORY = 5


def state_key(area: str, name: str) -> str:
    if area not in AREAS:
        raise ValueError(f"unknown state area {area!r}")
    return f"{area}.{name}"


#: How long opening a bucket keeps retrying JetStream API timeouts (a clustered
#: JetStream electing a leader, or a replicas-3 create under load, can take seconds).
OPEN_RETRY_S = 30.0


async def ensure_bucket(
    nc: Client,
    name: str,
    *,
    history: int = STATE_HISTORY,
    description: str = "",
    forbid_ttl: bool = False,
) -> Any:
    """Open KV bucket ``name``, creating it (direct gets allowed) if it is missing.

    JetStream API timeouts are retried with back-off for up to OPEN_RETRY_S;
    other errors surface at once, as the project's own (bus/nats_errors.py):
    no JetStream or a closed connection is NotConnected, the last timeout
    RequestTimeout. With ``forbid_ttl`` an existing bucket that expires
    records is refused (ConfigError): for the pool and the verdict state an
    expiring record would silently undo a revocation or a quarantine.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_RETRY_S
    delay = 0.25
    while True:
        try:
            with map_jetstream_errors(f"opening bucket {name}"):
                kv = await _open_or_create(nc, name, history, description)
                if forbid_ttl:
                    config = (await kv.status()).stream_info.config
                    if config.max_age:
                        raise ConfigError(
                            f"bucket {name} expires records after {config.max_age}s:"
                            " a revocation or quarantine would silently lapse; "
                            "recreate it without a TTL"
                        )
                return kv
        except RequestTimeout:
            if loop.time() + delay > deadline:
                raise
            log.warning("JetStream did not answer opening bucket %s; retrying", name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)


async def _open_or_create(nc: Client, name: str, history: int, description: str) -> Any:
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            bucket=name,
            history=history,
            direct=True,
            replicas=js_replicas(),
            description=description,
        )
    except (nats.errors.TimeoutError, TimeoutError):
        raise
    except Exception:  # created concurrently by another worker
        return await js.key_value(name)


async def state_bucket(nc: Client, subjects: Subjects) -> Any:
    return await ensure_bucket(
        nc, subjects.state_bucket, forbid_ttl=True, description="agentic-payments verdict state"
    )


class BucketMirror(Generic[T]):
    """A decoded in-memory copy of a KV bucket, kept current without a consumer.

    It reads the bucket's stream with direct gets (bus/tail.py) from the
    sequence after the last one applied, woken by a core subscription on the
    bucket's subjects and at the latest every POLL_S. ``decode(key, value)``
    raises CodecError for a malformed record, which is then skipped (logged),
    or kept as an Unreadable marker with ``keep_unreadable``; with
    ``keep_deleted`` (default: as ``keep_unreadable``) a deleted key stays as a
    :class:`Deleted` marker.

    ``revision`` and ``items`` change together, in one step without an await:
    new records are applied to a copy that replaces the published one only once
    everything up to ``revision`` has been read (a batch with nothing pending),
    so a reader never sees a revision ahead of its items. ``on_change`` runs
    after every published change.
    """

    def __init__(
        self,
        nc: Client,
        bucket: str,
        decode: Callable[[str, bytes], T],
        *,
        on_change: Callable[[], None] | None = None,
        keep_unreadable: bool = False,
        keep_deleted: bool | None = None,
        merge: Merge | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._decode = decode
        self._on_change = on_change
        self._items: dict[str, T | Unreadable | Deleted] = {}
        self._keep_unreadable = keep_unreadable
        # a mirror that fails closed on unreadable records fails closed on deleted ones too
        self._keep_deleted = keep_unreadable if keep_deleted is None else keep_deleted
        self._merge = merge
        self.revision = 0
        self.failures = 0
        #: delete markers ignored as server-written copies (see _genuine)
        self.injected = 0
        #: the bucket's last revision as last polled (>= what the mirror applied)
        self.known_last = 0
        self._next_seq = 1
        self._direct = True
        self._wakeup = Wakeup(nc, [f"{self._prefix}>"], poll_s=poll_s)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def items(self) -> Mapping[str, T | Unreadable | Deleted]:
        """Decoded records (and, if asked for, Unreadable and Deleted markers), as of
        ``revision``. Never mutated once published: a new revision is a new map."""
        return self._items

    def snapshot(self) -> tuple[int, Mapping[str, T | Unreadable | Deleted]]:
        """``(revision, items)`` taken together."""
        return self.revision, self._items

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        return None if isinstance(item, (Unreadable, Deleted)) else item

    async def start(self, timeout: float = 5.0) -> None:
        """Open the bucket and read it up to its end; then follow it.

        Raises the project's TransportError family (NotConnected without
        JetStream or connection, RequestTimeout if the first read takes longer
        than ``timeout``), never a nats-py class.
        """
        # every mirrored bucket (pool, verdict state) must keep records forever
        await ensure_bucket(self._nc, self._bucket, forbid_ttl=True)
        await self._wakeup.start()
        async with asyncio.timeout(timeout):  # not wait_for (bpo-42130)
            await self._rebuild()
        self._ready.set()
        self._task = asyncio.create_task(self._run())

    async def _reopen(self) -> None:
        """Re-read the bucket from scratch (a stream recreated under us); readers keep
        the old map and revision until the new ones are complete."""
        await self._rebuild()

    async def _rebuild(self) -> None:
        """Read the whole bucket into a fresh map and publish it with its revision
        (first start, or a stream that was recreated under us)."""
        info = await stream_info(self._nc, self._stream)
        self._direct = info.allow_direct
        if not self._direct:
            log.warning("bucket %s has no direct gets; reading it message by message", self._bucket)
        messages = await read_until_caught_up(
            self._nc, self._stream, seq=max(1, info.first_seq), direct=self._direct
        )
        self._publish({}, await self._genuine(messages), info.last_seq, base=0)

    async def _catch_up(self) -> None:
        """Read what was stored after the last applied sequence, publish it at once."""
        info = await stream_info(self._nc, self._stream)
        self.known_last = max(self.known_last, info.last_seq)
        if info.last_seq < self.revision:  # the stream was recreated: start over
            log.warning(
                "bucket %s went back to revision %d; re-reading", self._bucket, info.last_seq
            )
            self.failures += 1
            self.known_last = info.last_seq
            await self._reopen()
            return
        if info.last_seq < self._next_seq:
            return
        messages = await read_until_caught_up(
            self._nc, self._stream, seq=self._next_seq, direct=self._direct
        )
        self._publish(
            dict(self._items), await self._genuine(messages), info.last_seq, base=self.revision
        )

    async def _genuine(self, messages: list[StoredMsg]) -> list[StoredMsg]:
        """``messages`` without delete markers the server wrote as an API answer.

        Anyone allowed a JetStream API request can name a bucket subject as its
        reply subject, and the server stores its answer there: a direct get of a
        delete marker so "deletes" any key (a member, a key status). Such a copy
        carries the server's Nats-Stream/Nats-Sequence headers in its *stored*
        headers, which no bucket writer sends; direct gets overwrite those, so each
        marker (rare: honest writers almost never delete) is checked once with a
        message get. A copy is skipped, counted in ``injected``."""
        out: list[StoredMsg] = []
        for stored in messages:
            if stored.operation in ("DEL", "PURGE"):
                headers = await stored_headers(self._nc, self._stream, stored.seq)
                if headers is not None and is_server_copy(headers):
                    self.injected += 1
                    log.warning(
                        "ignored a server-written copy of a delete marker at %s (seq %d)",
                        stored.subject,
                        stored.seq,
                    )
                    continue
            out.append(stored)
        return out

    def _publish(
        self,
        items: dict[str, T | Unreadable | Deleted],
        messages: list[StoredMsg],
        last_seq: int,
        *,
        base: int,
    ) -> None:
        """Apply ``messages`` to ``items`` (a private copy) and publish both with the
        revision reached, in one synchronous step (no reader sees a half)."""
        for stored in messages:
            self._apply(items, stored)
        reached = max([last_seq, base, *(m.seq for m in messages)])
        changed = bool(messages) or reached != self.revision or not self._ready.is_set()
        self._items = items
        self.revision = reached
        self.known_last = max(self.known_last, reached)
        self._next_seq = reached + 1
        if changed and self._on_change is not None:
            self._on_change()

    def _apply(self, items: dict[str, T | Unreadable | Deleted], stored: StoredMsg) -> None:
        if not stored.subject.startswith(self._prefix):
            return
        key = stored.subject[len(self._prefix) :]
        current = items.get(key)
        new: object
        if stored.operation in ("DEL", "PURGE"):
            before = current.previous if isinstance(current, Deleted) else current
            new = Deleted(key, stored.seq, before)
        else:
            try:
                new = self._decode(key, stored.data)
            except CodecError as exc:
                log.warning("malformed record %r in %s: %s", key, self._bucket, exc)
                new = Unreadable(key, f"[{exc.code}] {exc}")
        if self._merge is not None:
            new = self._merge(key, current, new)
        if (isinstance(new, Deleted) and not self._keep_deleted) or (
            isinstance(new, Unreadable) and not self._keep_unreadable
        ):
            items.pop(key, None)
        else:
            items[key] = new  # type: ignore[assignment]

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.warning("reading bucket %s failed; retrying", self._bucket, exc_info=True)
                await asyncio.sleep(self._wakeup.poll_s)

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until this mirror has applied ``revision`` (True) or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.revision < revision:
            if loop.time() >= end:
                return False
            self._wakeup.poke()
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        await self._wakeup.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
