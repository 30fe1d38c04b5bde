"""The verdict-state bucket mirror against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.aio.client import Client

from bus.config import NatsConfig
from bus.state import BucketMirror, state_bucket, state_key
from bus.subjects import Subjects
from schemas.errors import SchemaViolation

pytestmark = pytest.mark.integration


def _decode(key: str, value: bytes) -> str:
    if not value.startswith(b"ok:"):
        raise SchemaViolation("not ok")
    return value.decode()


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_mirror_follows_writes_revision_and_skips_malformed(nc: Client, prefix: str) -> None:
    subjects = Subjects(prefix)
    kv = await state_bucket(nc, subjects)
    rev1 = await kv.create(state_key("key", "aa"), b"ok:1")
    changes: list[int] = []
    mirror: BucketMirror[str] = BucketMirror(
        nc, subjects.state_bucket, _decode, on_change=lambda: changes.append(1)
    )
    await mirror.start()
    try:
        assert mirror.revision == rev1
        assert mirror.get("key.aa") == "ok:1"
        rev2 = await kv.put(state_key("anchor", "bb"), b"garbage")
        rev3 = await kv.update(state_key("key", "aa"), b"ok:2", last=rev1)
        assert await mirror.wait_for_revision(rev3, 5.0)
        assert mirror.revision == rev3 > rev2
        assert mirror.get("key.aa") == "ok:2"
        assert mirror.get("anchor.bb") is None  # malformed: skipped, not fatal
        await kv.delete(state_key("key", "aa"))
        await _until(lambda: mirror.get("key.aa") is None)
        assert changes
        assert not await mirror.wait_for_revision(mirror.revision + 100, 0.05)
    finally:
        await mirror.stop()


def test_state_key_refuses_unknown_area() -> None:
    with pytest.raises(ValueError, match="unknown state area"):
        state_key("nope", "x")


async def test_a_state_bucket_with_a_ttl_is_refused(nats_config: NatsConfig, nc: Client) -> None:
    """Whoever creates the bucket first must not be able to make revocations lapse."""
    from schemas.errors import ConfigError

    subjects = Subjects(nats_config.prefix)
    await nc.jetstream().create_key_value(bucket=subjects.state_bucket, ttl=60)
    with pytest.raises(ConfigError, match="expires records"):
        await state_bucket(nc, subjects)
    mirror: BucketMirror[str] = BucketMirror(nc, subjects.state_bucket, _decode)
    with pytest.raises(ConfigError):
        await mirror.start()


async def test_a_rebuilt_mirror_never_shows_a_revision_ahead_of_its_items(
    nc: Client, prefix: str
) -> None:
    """Hole 8: a mirror that missed writes (a dead watch, a gap) and re-reads the
    bucket must not publish the new revision before the records up to it: a
    verifier would sign "judged at revision R" over a state without R's revocation.

    The decoder looks at what a reader sees while the re-read is under way: once
    the re-read has gone past the revocation (decoding a later record), the mirror
    must either still show the old revision, or already hold the revocation.
    """
    subjects = Subjects(prefix)
    kv = await state_bucket(nc, subjects)
    await kv.create(state_key("key", "aa"), b"ok:active")
    seen: list[tuple[int, str | None]] = []
    mirror: BucketMirror[str] = BucketMirror(nc, subjects.state_bucket, lambda k, v: _hook(k, v))

    def _hook(key: str, value: bytes) -> str:
        if key == "key.cc":  # decoded after the revocation, within the same re-read
            seen.append((mirror.revision, mirror.get("key.aa")))
        return _decode(key, value)

    await mirror.start()
    # the mirror stops following (its watch died): it misses the next writes
    for name in ("_task", "_fresh_task"):
        task = getattr(mirror, name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    watcher = getattr(mirror, "_watcher", None)
    if watcher is not None:
        await watcher.stop()
    revoked = await kv.put(state_key("key", "aa"), b"ok:revoked")
    later = await kv.create(state_key("key", "cc"), b"ok:other")
    await mirror._reopen()
    mirror._task = asyncio.create_task(mirror._run())
    try:
        assert await mirror.wait_for_revision(later, 5.0)
        assert mirror.get("key.aa") == "ok:revoked"
        assert seen, "the re-read decoded the later record"
        for revision, status in seen:
            assert revision < revoked or status == "ok:revoked", (
                f"revision {revision} published with key.aa still {status!r}"
            )
    finally:
        await mirror.stop()
