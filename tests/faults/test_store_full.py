"""Fault: JetStream's file store reaches its limit (a small ``max_file_store``) while
clients keep sending requests. Deciding needs no new storage and goes on; what does
need it fails with the stable code STORE_FULL (not a crash, not "JetStream is not
available"); once space returns (the filler stream is deleted) writes work again."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats.js.errors
import pytest

from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.decisions import decision_key, scope_id
from bus.key_client import KeyClient
from bus.nats_errors import map_jetstream_errors
from bus.natsserver import start_nats_server
from bus.subjects import Subjects
from schemas.errors import NoResponders, RemoteError, RequestTimeout, StoreFull
from tests.faults.load import Load, counters, report
from tests.helpers import Cluster, free_ports

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
LIMIT = 8 * 1024 * 1024
CHUNK = 64 * 1024


async def _fill(js: object, subject: str) -> int:
    """Publish CHUNK-sized messages until the store refuses; the bytes stored."""
    stored = 0
    while True:
        try:
            with map_jetstream_errors("filling the store"):
                await js.publish(subject, b"\0" * CHUNK)  # type: ignore[attr-defined]
        except StoreFull:
            return stored
        stored += CHUNK
        assert stored <= LIMIT, "the store took more than its limit"


async def _create_key(keys: KeyClient, name: str) -> RemoteError | None:
    """Create a key once the manager answers; the ErrorReply it gave, or None."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await keys.create(name, "authentication")
            return None
        except RemoteError as exc:
            return exc
        except (NoResponders, RequestTimeout):  # still starting
            assert time.monotonic() < deadline, "the key manager never answered"
            await asyncio.sleep(0.3)


@pytest.mark.timeout(120)
async def test_store_full_then_space_returns(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "js", port=free_ports(1)[0], max_file_store=LIMIT)
    (tmp_path / "workers").mkdir()
    cluster = Cluster(server.url, f"t{uuid.uuid4().hex[:12]}", tmp_path / "workers")
    config = NatsConfig(url=server.url, prefix=cluster.prefix)
    subjects = Subjects(cluster.prefix)
    nc = await connect(config, name="fault-store")
    js = nc.jetstream()
    keys = KeyClient(nc, cluster.prefix, timeout=5.0)
    try:
        await cluster.start_system(3)
        cluster._spawn(
            "keys-keys1",
            ["-m", "workers.cli", "worker", "keys", "--id", "keys1", "--heartbeat-s", "1"],
        )
        assert await _create_key(keys, "before") is None
        filler = f"FILL_{cluster.prefix}"
        await js.add_stream(name=filler, subjects=[f"{filler}.x"])
        client = await VerifyClient.connect(config, timeout=4.0, retries=0)
        async with client, Load(client, "storefull") as load:
            await load.wait_decided(20, timeout=30)
            filled_at = time.monotonic()
            filled = await _fill(js, f"{filler}.x")
            # the store is full: deciding goes on (it stores nothing it must wait for)
            await load.wait_decided(30, sent_after=time.monotonic(), timeout=30)
            refused = await _create_key(keys, "during")
            assert refused is not None and refused.code == StoreFull.code, refused
            tally = await counters(nc, subjects.status("tally", "t1"))
            assert tally.get("decision_store_errors", 0) > 0, tally
            # space returns
            await js.delete_stream(filler)
            freed = time.monotonic()
            assert await _create_key(keys, "after") is None
            await load.wait_decided(30, sent_after=freed, timeout=30)
            await load.stop(drain_s=20)
            result = await load.audit(nc, cluster.prefix)
        # decisions made after the space returned are stored again (idempotency
        # across restarts is back), checked in the decisions bucket itself
        kv = await js.key_value(subjects.decisions_bucket)
        after = [o for o in load.decided() if o.sent_at >= freed + 1.0 and o.good]
        missing = []
        for o in after:
            key = decision_key(scope_id(o.request.public_key, o.request.request_id))
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                missing.append(o.request.request_id)
        report(
            "store_full",
            max_file_store=LIMIT,
            filler_bytes=filled,
            outage_ms=round(load.max_gap_ms(filled_at)),
            refused_code=refused.code,
            stored_after_recovery=f"{len(after) - len(missing)}/{len(after)}",
            **result,
        )
        for name, proc in cluster.processes.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{cluster.log(name)}"
        assert after and not missing, missing[:5]
        assert result["lost"] == 0, result
        assert result["wrong"] == 0, result
    finally:
        await nc.close()
        cluster.stop_all()
        server.stop()
