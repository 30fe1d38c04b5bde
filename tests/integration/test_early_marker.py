"""nats-py's end-of-replay marker can come before the replay: nothing may read that as "empty".

A nats-py KV watch puts ``None`` ("initial values done") into its queue when
the consumer-info reply says nothing is pending and the subscription has
received nothing yet. Under load that reply can overtake the pushed entries,
so the marker comes *first*. Then nats-py's ``kv.keys()`` says "no keys", a
pool read says "0 members" (clients rejected valid certificates: "pool has 0
keys", seen in CI) and a mirror publishes an empty verdict state as complete
(revocations unseen). These tests force that order on a real nats-server by
wrapping every watch so that it yields ``None`` before its first entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nats.js.kv
import pytest
from nats.aio.client import Client

from bus import membership
from bus.kv import KeyValue, subject_keys
from bus.state import BucketMirror, state_bucket, state_key
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.recovery import HistoryQuery, RecoveryAttempt

pytestmark = pytest.mark.integration


class EarlyMarker:
    """A real KV watcher whose first update is the end-of-replay marker."""

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher
        self._early = True

    def __aiter__(self) -> EarlyMarker:
        return self

    async def __anext__(self) -> Any:
        if self._early:
            self._early = False
            return None
        return await self._watcher.__anext__()

    async def updates(self, timeout: float = 5.0) -> Any:
        if self._early:
            self._early = False
            return None
        return await self._watcher.updates(timeout=timeout)

    async def stop(self) -> None:
        await self._watcher.stop()

    def __getattr__(self, name: str) -> Any:  # _sub and the rest: the real watcher's
        return getattr(self._watcher, name)


@pytest.fixture
def early_marker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    watch = nats.js.kv.KeyValue.watch

    async def early_watch(self: Any, *args: Any, **kwargs: Any) -> EarlyMarker:
        return EarlyMarker(await watch(self, *args, **kwargs))

    monkeypatch.setattr(nats.js.kv.KeyValue, "watch", early_watch)
    yield


async def _pool(nc: Client, subjects: Subjects, n: int) -> set[bytes]:
    keys = set()
    for i in range(n):
        ident = AgentIdentity.generate()
        await membership.register(nc, subjects, f"v{i}", ident)
        keys.add(ident.public_key)
    return keys


async def test_the_forced_order_does_fool_nats_py(
    nc: Client, prefix: str, early_marker: None
) -> None:
    """The wrapper reproduces the bug: nats-py's own kv.keys() now says "no keys"."""
    subjects = Subjects(prefix)
    await _pool(nc, subjects, 3)
    kv = await membership.members_bucket(nc, subjects)
    with pytest.raises(nats.js.errors.NoKeysError):
        await kv.keys()
    assert len(await subject_keys(kv)) == 3


async def test_read_pool_and_pool_at_see_every_member(
    nc: Client, prefix: str, early_marker: None
) -> None:
    subjects = Subjects(prefix)
    keys = await _pool(nc, subjects, 4)
    pool = await membership.read_pool(nc, subjects)
    assert pool.keys == keys
    assert (await membership.pool_at(nc, subjects, pool.epoch)).keys == keys


async def test_a_mirror_is_ready_only_with_the_whole_state(
    nc: Client, prefix: str, early_marker: None
) -> None:
    subjects = Subjects(prefix)
    kv = await state_bucket(nc, subjects)
    for i in range(20):
        await kv.put(state_key("key", f"{i:02x}"), b"revoked")
    at_ready: list[int] = []  # what readers saw when the mirror first called itself complete
    mirror: BucketMirror[bytes] = BucketMirror(
        nc,
        subjects.state_bucket,
        lambda _k, v: v,
        on_change=lambda: at_ready.append(len(mirror.items)),
    )
    await mirror.start()
    try:
        assert at_ready[0] == 20
        assert len(mirror.items) == 20
    finally:
        await mirror.stop()


async def test_an_empty_bucket_is_still_ready_at_once(
    nc: Client, prefix: str, early_marker: None
) -> None:
    subjects = Subjects(prefix)
    mirror: BucketMirror[bytes] = BucketMirror(nc, subjects.state_bucket, lambda _k, v: v)
    await mirror.start(timeout=2.0)
    try:
        assert mirror.items == {}
    finally:
        await mirror.stop()


async def test_key_listing_and_recovery_history_see_every_record(
    nc: Client, prefix: str, early_marker: None
) -> None:
    from workers.recovery.worker import read_history

    js = nc.jetstream()
    raw = await js.create_key_value(bucket=f"{prefix}_early")
    handle: KeyValue[bytes] = KeyValue(raw, encode=lambda v: v, decode=lambda v: v)
    for name in ("a", "b", "c"):
        await handle.create(name, b"x")
    await handle.delete("b")
    assert await handle.keys() == ["a", "c"]

    history = await js.create_key_value(bucket=f"{prefix}_history")
    attempt = RecoveryAttempt(
        kind="verifier",
        worker_id="v1",
        attempt=1,
        dead_generation=1,
        outcome="respawned",
        backend="local",
        recovery_id="r1",
        last_seen_ms=1,
        detected_ms=1,
        requested_ms=1,
    )
    await history.put("verifier.v1.1.1", attempt.encode())
    found = await read_history(history, HistoryQuery(kind="verifier", worker_id="v1"))
    assert [a.worker_id for a in found] == ["v1"]
