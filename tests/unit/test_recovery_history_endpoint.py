"""The recovery worker's history endpoint answers through bus/service.py like every service."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bus.config import NatsConfig
from bus.runtime import RuntimeConfig
from schemas.codec import encode
from schemas.messages import ErrorReply
from schemas.recovery import HistoryQuery, HistoryReply
from workers.recovery.worker import RecoveryOptions, RecoveryWorker


class BrokenBucket:
    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bucket KV_secret_internal is gone")


class EmptyBucket:
    """A bucket with no attempts: its stream lists no subject (bus.kv.subject_keys)."""

    _pre = "$KV.t_recovery."
    _stream = "KV_t_recovery"

    def __init__(self) -> None:
        self._js = self

    async def stream_info(self, name: str, subjects_filter: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(subjects=None))

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        return self

    async def updates(self, timeout: float) -> None:
        return None

    async def stop(self) -> None:
        return None


def worker(tmp_path: Path) -> RecoveryWorker:
    runtime = RuntimeConfig(worker_id="r1", nats=NatsConfig(prefix="t"), data_dir=tmp_path)
    return RecoveryWorker(runtime, RecoveryOptions(), lambda nc, subjects: None)


async def test_an_unreadable_history_is_internal_without_detail(tmp_path: Path) -> None:
    recovery = worker(tmp_path)
    recovery.kv = BrokenBucket()
    reply, ok = await recovery.rpc.answer("history", HistoryQuery().encode())
    assert isinstance(reply, ErrorReply) and reply.code == "INTERNAL" and not ok
    assert "secret" not in reply.message
    assert recovery.stats.failures == 0  # answer() only judges; serve() records the task


async def test_bad_queries_are_refused_and_counted(tmp_path: Path) -> None:
    recovery = worker(tmp_path)
    recovery.kv = EmptyBucket()
    bad = encode({"type": "recovery_history_query", "v": 1, "kind": 3, "worker_id": "", "limit": 1})
    for data, code in ((b"\xc1", "MALFORMED_PAYLOAD"), (bad, "SCHEMA_VIOLATION")):
        reply, ok = await recovery.rpc.answer("history", data)
        assert isinstance(reply, ErrorReply) and reply.code == code and ok
    assert recovery.stats.counters["rejected_SCHEMA_VIOLATION"] == 1
    reply, ok = await recovery.rpc.answer("history", b"")  # empty: the default query
    assert reply == HistoryReply(attempts=()) and ok
    assert recovery.stats.counters["op_history"] == 1
