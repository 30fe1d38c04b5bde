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

:class:`BucketMirror` keeps a decoded, always-current copy of any bucket from
a KV watch (restarting the watch if it fails, skipping malformed records), so
readers answer from memory.
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
from schemas.codec import Unreadable
from schemas.errors import CodecError, ConfigError, RequestTimeout

log = logging.getLogger("agentic_payments.state")
T = TypeVar("T")

#: Key prefixes in the state bucket and the service that owns each.
AREAS = {
    "key": "keys",  # key.<public key hex>        -> key status (revocation, expiry)
    "anchor": "trust",  # anchor.<public key hex>     -> trust anchor
    "cert": "trust",  # cert.<serial>               -> trust certificate
    "authority": "authority",  # authority.<public key hex> -> authority record
    "policy": "authority",  # policy.<category>           -> quorum policy
}
STATE_HISTORY = 5
FRESHNESS_POLL_S = 0.5
STALL_RESTART_S = 1.0


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
    """A decoded in-memory copy of a KV bucket, kept current by a watch.

    ``decode(key, value)`` raises CodecError for a malformed record, which is
    then skipped (logged), never fatal. ``revision`` is the bucket's latest
    revision seen; ``on_change`` runs after every applied update once the
    initial replay is done.
    """

    def __init__(
        self,
        nc: Client,
        bucket: str,
        decode: Callable[[str, bytes], T],
        *,
        on_change: Callable[[], None] | None = None,
        keep_unreadable: bool = False,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self._decode = decode
        self._on_change = on_change
        self._items: dict[str, T | Unreadable] = {}
        self._keep_unreadable = keep_unreadable
        self.revision = 0
        self.failures = 0
        self._watcher: Any = None
        self._kv: Any = None
        self._building: dict[str, T | Unreadable] | None = None
        #: the bucket's last revision as last polled (>= what the watch applied)
        self.known_last = 0
        self._task: asyncio.Task[None] | None = None
        self._fresh_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._replaying = True

    @property
    def items(self) -> Mapping[str, T | Unreadable]:
        """Decoded records (and, with ``keep_unreadable``, Unreadable markers)."""
        return self._items

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        return None if isinstance(item, Unreadable) else item

    async def start(self, timeout: float = 5.0) -> None:
        """Open the bucket and its watch; return once the replay is applied.

        Raises the project's TransportError family (NotConnected without
        JetStream or connection, RequestTimeout if the replay takes longer
        than ``timeout``), never a nats-py class.
        """
        # every mirrored bucket (pool, verdict state) must keep records forever
        self._kv = await ensure_bucket(self._nc, self._bucket, forbid_ttl=True)
        with map_jetstream_errors(f"watching bucket {self._bucket}"):
            status = await self._kv.status()
            self.revision = self.known_last = status.stream_info.state.last_seq
            await self._open_watch()
            self._task = asyncio.create_task(self._run())
            self._fresh_task = asyncio.create_task(self._freshness())
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def _open_watch(self) -> None:
        """A new watch whose replay builds a fresh copy; readers keep the old,
        complete one until the replay is done (never a half-built state)."""
        self._watcher = None
        # the replay is complete only once it reaches the revision the bucket had
        # when the watch opened: nats-py's end-of-replay None can come first
        self._replay_target = self.known_last
        self._replay_seen = 0
        self._watcher = await self._kv.watchall()
        self._building = {}
        self._replaying = True

    async def _run(self) -> None:
        while True:
            try:
                await self._consume()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("watch of %s failed; restarting it", self._bucket)
                await asyncio.sleep(1.0)
                await self._reopen()

    async def _reopen(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        with contextlib.suppress(Exception):
            self._kv = await ensure_bucket(self._nc, self._bucket)
            await self._open_watch()

    async def _freshness(self) -> None:
        """Restart a watch that lags the bucket.

        After a reconnect (server restart, failover) nats-py's ordered watch
        only notices missed heartbeats many seconds later; meanwhile the mirror
        would be stale. Polling the bucket's last revision bounds that: a mirror
        behind it for STALL_RESTART_S is rebuilt.
        """
        loop = asyncio.get_running_loop()
        behind_since: float | None = None
        while True:
            await asyncio.sleep(FRESHNESS_POLL_S)
            try:
                status = await self._kv.status()
            except Exception:
                continue
            last = status.stream_info.state.last_seq
            self.known_last = max(self.known_last, last)
            if last <= self.revision:
                behind_since = None
                continue
            now = loop.time()
            if behind_since is None:
                behind_since = now
            elif now - behind_since >= STALL_RESTART_S:
                self.failures += 1
                log.warning(
                    "watch of %s is behind the bucket (%d < %d); restarting it",
                    self._bucket,
                    self.revision,
                    last,
                )
                behind_since = None
                if self._task is not None:
                    self._task.cancel()
                    with contextlib.suppress(BaseException):
                        await self._task
                await self._reopen()
                self._task = asyncio.create_task(self._run())

    async def _consume(self) -> None:
        if self._watcher is None:
            raise RuntimeError(f"no watch on {self._bucket}")
        async for entry in self._watcher:
            if entry is None:
                # nats-py decides this marker from the consumer's num_pending, and
                # that reply can overtake the pushed entries: an early marker would
                # publish an empty state as complete (revocations unseen: fail open)
                if self._replay_seen >= self._replay_target or await self._bucket_empty():
                    self._caught_up()
                continue
            items = self._building if self._building is not None else self._items
            if entry.revision:
                self.revision = max(self.revision, entry.revision)
                self._replay_seen = max(self._replay_seen, entry.revision)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                items.pop(entry.key, None)
            else:
                try:
                    items[entry.key] = self._decode(entry.key, entry.value)
                except CodecError as exc:
                    log.warning("malformed record %r in %s: %s", entry.key, self._bucket, exc)
                    if self._keep_unreadable:
                        items[entry.key] = Unreadable(entry.key, f"[{exc.code}] {exc}")
                    else:
                        items.pop(entry.key, None)
            if entry.delta == 0:
                self._caught_up()
            elif not self._replaying and self._on_change is not None:
                self._on_change()

    async def _bucket_empty(self) -> bool:
        """No message left to replay (an emptied stream): the marker is then right."""
        status = await self._kv.status()
        return int(status.stream_info.state.messages) == 0

    def _caught_up(self) -> None:
        if self._building is not None:
            self._items = self._building
            self._building = None
        self._replaying = False
        self._ready.set()
        if self._on_change is not None:
            self._on_change()

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until this mirror has applied ``revision`` (True) or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.revision < revision:
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        if self._fresh_task is not None:
            self._fresh_task.cancel()
            with contextlib.suppress(BaseException):
                await self._fresh_task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
