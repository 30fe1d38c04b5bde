"""The typed compare-and-set handle (bus/kv.py) against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from bus import kv as kvmod
from bus.config import NatsConfig
from bus.connection import connect
from bus.kv import CAS_ATTEMPTS, UNCHANGED, KeyValue
from bus.state import ensure_bucket
from schemas.errors import (
    AgenticPaymentsError,
    CodecError,
    KeyUpdateConflict,
    NotConnected,
    SchemaViolation,
    StateConflict,
    TransportError,
    TrustConflict,
    WriteConflict,
)

pytestmark = pytest.mark.integration

KEY = "counter"


def _encode(n: int) -> bytes:
    return f"n:{n}".encode()


def _decode(data: bytes) -> int:
    if not data.startswith(b"n:"):
        raise SchemaViolation("not a counter")
    return int(data[2:])


def _increment(current: int | None) -> int:
    return (current or 0) + 1


class Racing:
    """A bucket with a rival writer: after each of the first ``races`` reads of a key,
    the rival adds 100 to it (or creates it at 100), so the write that follows loses."""

    def __init__(self, kv: Any, races: int) -> None:
        self._kv = kv
        self.races = races

    async def get(self, key: str) -> Any:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            await self._race(key, None)
            raise
        await self._race(key, _decode(entry.value))
        return entry

    async def _race(self, key: str, value: int | None) -> None:
        if self.races > 0:
            self.races -= 1
            await self._kv.put(key, _encode((value or 0) + 100))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)


@pytest.fixture
async def bucket(nc: Client, prefix: str) -> AsyncIterator[Any]:
    yield await ensure_bucket(nc, f"{prefix}_kvtest")


def _handle(kv: Any, **options: Any) -> KeyValue[int]:
    return KeyValue(kv, _encode, _decode, **options)


async def _history(kv: Any, key: str) -> list[int]:
    return [_decode(e.value) for e in await kv.history(key) if e.value]


async def test_get_create_put_round_trip(bucket: Any) -> None:
    handle = _handle(bucket)
    assert await handle.get(KEY) is None
    assert await handle.revision(KEY) is None
    assert await handle.keys() == []
    revision = await handle.create(KEY, 7)
    entry = await handle.get(KEY)
    assert entry is not None and (entry.value, entry.revision) == (7, revision)
    assert await handle.revision(KEY) == revision
    newer = await handle.put(KEY, 8, last=revision)
    assert newer > revision and await handle.last_revision() == newer
    assert (await handle.get(KEY)).value == 8  # type: ignore[union-attr]
    await handle.create("another", 1)
    assert await handle.keys() == ["another", KEY]
    await handle.delete("another")
    assert await handle.keys() == [KEY]


@pytest.mark.parametrize(
    ("conflict", "code"),
    [
        (WriteConflict, "WRITE_CONFLICT"),
        (TrustConflict, "TRUST_CONFLICT"),
        (StateConflict, "STATE_CONFLICT"),
        (KeyUpdateConflict, "KEY_UPDATE_CONFLICT"),
    ],
)
async def test_create_on_an_existing_key_is_the_handles_conflict(
    bucket: Any, conflict: type[WriteConflict], code: str
) -> None:
    handle = _handle(bucket, conflict=conflict)
    first = await handle.create(KEY, 1)
    with pytest.raises(conflict) as info:
        await handle.create(KEY, 2)
    assert info.value.code == code and isinstance(info.value, WriteConflict)
    assert await _history(bucket, KEY) == [1]
    with pytest.raises(conflict):  # a stale revision loses the same way
        await handle.put(KEY, 3, last=first - 1 if first > 1 else first + 1)
    assert await _history(bucket, KEY) == [1]


async def test_create_after_delete_succeeds(bucket: Any) -> None:
    handle = _handle(bucket)
    await handle.create(KEY, 1)
    assert await handle.delete(KEY) is not None
    assert await handle.get(KEY) is None
    await handle.create(KEY, 2)
    assert (await handle.get(KEY)).value == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("start", "races", "expected"),
    [
        (None, 0, 1),  # absent: created
        (5, 0, 6),  # present: updated
        (5, 3, 306),  # three lost races, each re-read: the rival's writes are kept
        (None, 1, 101),  # the rival creates the key between our read and our create
        (5, CAS_ATTEMPTS - 1, 5 + 100 * (CAS_ATTEMPTS - 1) + 1),  # wins on the last attempt
    ],
)
async def test_update_under_a_concurrent_writer_retries_and_wins(
    bucket: Any, start: int | None, races: int, expected: int
) -> None:
    if start is not None:
        await bucket.create(KEY, _encode(start))
    retried: list[int] = []
    handle = _handle(Racing(bucket, races), on_retry=lambda: retried.append(1))
    result = await handle.update(KEY, _increment)
    assert result.changed and result.value == expected
    assert result.retries == races == len(retried)
    assert result.created == (start is None and races == 0)
    entry = await handle.get(KEY)
    assert entry is not None and (entry.value, entry.revision) == (expected, result.revision)


async def test_concurrent_updates_lose_no_increment(bucket: Any) -> None:
    handles = [_handle(bucket) for _ in range(4)]
    results = await asyncio.gather(*(h.update(KEY, _increment) for h in handles * 5))
    assert (await handles[0].get(KEY)).value == 20  # type: ignore[union-attr]
    assert sorted(r.value for r in results) == list(range(1, 21))  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("conflict", "code"), [(WriteConflict, "WRITE_CONFLICT"), (TrustConflict, "TRUST_CONFLICT")]
)
async def test_budget_exhausted_is_the_conflict_error(
    bucket: Any, conflict: type[WriteConflict], code: str
) -> None:
    await bucket.create(KEY, _encode(0))
    retried: list[int] = []
    racing = Racing(bucket, races=10**6)
    handle = _handle(racing, conflict=conflict, on_retry=lambda: retried.append(1))
    with pytest.raises(conflict) as info:
        await handle.update(KEY, _increment)
    assert info.value.code == code
    assert len(retried) == CAS_ATTEMPTS == 10**6 - racing.races
    assert await _history(bucket, KEY) == [100 * n for n in range(CAS_ATTEMPTS + 1)][-5:]


async def test_budget_of_one_gives_up_after_one_lost_race(
    bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvmod, "CAS_ATTEMPTS", 1)
    await bucket.create(KEY, _encode(0))
    with pytest.raises(WriteConflict, match="1 attempts"):
        await _handle(Racing(bucket, races=1)).update(KEY, _increment)
    assert (await _handle(bucket).get(KEY)).value == 100  # type: ignore[union-attr]


@pytest.mark.parametrize("start", [None, 4])
async def test_no_change_writes_nothing(bucket: Any, start: int | None) -> None:
    if start is not None:
        await bucket.create(KEY, _encode(start))
    handle = _handle(bucket)
    before = await handle.last_revision()
    seen: list[int | None] = []

    def keep(current: int | None) -> Any:
        seen.append(current)
        return UNCHANGED

    result = await handle.update(KEY, keep)
    assert seen == [start]
    assert not result.changed and not result.created and result.retries == 0
    assert result.value == start
    assert result.revision == (0 if start is None else before)
    assert await handle.last_revision() == before


async def test_a_refusal_from_the_change_writes_nothing(bucket: Any) -> None:
    handle = _handle(bucket)

    calls: list[int] = []

    def refuse(current: int | None) -> int:
        calls.append(1)
        raise StateConflict("no")  # even a conflict-class refusal is not retried

    with pytest.raises(StateConflict):
        await handle.update(KEY, refuse)
    assert calls == [1]
    assert await handle.get(KEY) is None


async def test_an_undecodable_record_is_a_codec_error_or_replaced(bucket: Any) -> None:
    revision = await bucket.put(KEY, b"garbage")
    handle = _handle(bucket)
    with pytest.raises(CodecError) as info:
        await handle.get(KEY)
    assert info.value.code == "SCHEMA_VIOLATION"
    with pytest.raises(CodecError):
        await handle.update(KEY, _increment)
    assert await handle.last_revision() == revision  # nothing written
    result = await handle.update(KEY, _increment, replace_unreadable=True)
    assert result.changed and not result.created and result.value == 1
    assert (await handle.get(KEY)).value == 1  # type: ignore[union-attr]


async def test_delete_retries_a_lost_race_and_reports_absent_keys(bucket: Any) -> None:
    retried: list[int] = []
    handle = _handle(Racing(bucket, races=2), on_retry=lambda: retried.append(1))
    assert await _handle(bucket).delete(KEY) is None
    await bucket.create(KEY, _encode(1))
    revision = await handle.delete(KEY)
    assert len(retried) == 2
    assert revision is not None and revision == await _handle(bucket).last_revision()
    assert await handle.get(KEY) is None


async def test_nats_failures_are_transport_errors(nats_config: NatsConfig, prefix: str) -> None:
    client = await connect(nats_config, name="kv-closed")
    handle = _handle(await ensure_bucket(client, f"{prefix}_kvtest"))
    await handle.create(KEY, 1)
    await client.close()
    for call in (
        handle.get(KEY),
        handle.create("other", 1),
        handle.update(KEY, _increment),
        handle.delete(KEY),
        handle.last_revision(),
    ):
        with pytest.raises(TransportError) as info:
            await call
        assert isinstance(info.value, NotConnected), info.value
        assert isinstance(info.value, AgenticPaymentsError)
        assert not isinstance(info.value, nats.errors.Error)
