"""The key manager against a real nats-server: every operation, bad input, CAS,
the public statuses in the state bucket, the revocation event, and that no
private key ever shows up in a reply, a stored value or a log line."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.config import NatsConfig
from bus.key_client import KeyClient
from bus.runtime import RuntimeConfig
from bus.state import state_bucket, state_key
from bus.subjects import Subjects
from schemas.errors import MasterKeyInvalid, RemoteError
from schemas.identity import AgentIdentity, verify_signature
from schemas.keys import DOMAIN_DOCUMENT, KeyInfo, KeyList, KeyRecord, KeyRevoked, KeyStatus
from schemas.messages import ErrorReply
from workers.keys.crypto import MasterKey
from workers.keys.worker import KeysWorker

pytestmark = pytest.mark.integration
MASTER = os.urandom(32)


def make_worker(
    nats_config: NatsConfig, tmp_path: Path, worker_id: str = "keys1", sweep_s: float = 3600.0
) -> KeysWorker:
    runtime = RuntimeConfig(
        worker_id=worker_id, nats=nats_config, data_dir=tmp_path, drain_timeout_s=2
    )
    return KeysWorker(runtime, MasterKey(bytearray(MASTER), "test"), sweep_interval_s=sweep_s)


@pytest.fixture
async def keys(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[KeyClient]:
    caplog.set_level(logging.DEBUG)
    worker = make_worker(nats_config, tmp_path)
    await worker.start()
    try:
        yield KeyClient(nc, nats_config.prefix, timeout=10)
    finally:
        await worker.stop()


async def status_of(nc: Client, prefix: str, public_key: bytes) -> KeyStatus:
    kv = await state_bucket(nc, Subjects(prefix))
    entry = await kv.get(state_key("key", public_key.hex()))
    return KeyStatus.decode(entry.value)


async def stored(nc: Client, prefix: str, name: str) -> tuple[bytes, KeyRecord]:
    kv = await nc.jetstream().key_value(Subjects(prefix).keys_bucket)
    entry = await kv.get(name)
    return entry.value, KeyRecord.decode(entry.value)


def seeds(record: KeyRecord) -> list[bytes]:
    master = MasterKey(bytearray(MASTER), "test")
    return [bytes(master.open(v.sealed_seed)) for v in record.versions if v.sealed_seed]


async def error_code(call: Awaitable[Any]) -> str:
    with pytest.raises(RemoteError) as info:
        await call
    return info.value.code


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def keys_worker_key(tmp_path: Path) -> bytes:
    return AgentIdentity.load(tmp_path / "keys" / "keys-keys1.key").public_key


async def test_lifecycle_statuses_and_no_key_leaks(
    keys: KeyClient, nc: Client, prefix: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    events: list[KeyRevoked] = []

    async def on_event(msg: Msg) -> None:
        events.append(KeyRevoked.decode(msg.data))

    await nc.subscribe(Subjects(prefix).keys_revoked, cb=on_event)
    replies: list[bytes] = []
    created = await keys.create("agent-1", "agent_identity")
    replies.append(created.encode())
    v1 = created.record.latest
    assert (created.record.state, v1.version) == ("Enabled", 1)
    st = await status_of(nc, prefix, v1.public_key)
    assert (st.name, st.version, st.purpose, st.refusal(int(time.time() * 1000))) == (
        "agent-1",
        1,
        "agent_identity",
        None,
    )

    rotated = await keys.rotate("agent-1")
    replies.append(rotated.encode())
    v2 = rotated.record.latest
    assert v2.version == 2 and v2.public_key != v1.public_key
    sig = await keys.sign("agent-1", b"pay 12.50 EUR")
    replies.append(sig.encode())
    assert (sig.version, sig.public_key) == (2, v2.public_key)
    assert verify_signature(v2.public_key, b"pay 12.50 EUR", sig.signature)
    old = await keys.sign("agent-1", b"pay", version=1)
    assert verify_signature(v1.public_key, b"pay", old.signature)

    _, before = await stored(nc, prefix, "agent-1")
    secrets = seeds(before)
    assert len(secrets) == 2
    revoked = await keys.revoke("agent-1", "laptop stolen", version=1)
    replies.append(revoked.encode())
    assert revoked.record.versions[0].revoked_reason == "laptop stolen"
    st1 = await status_of(nc, prefix, v1.public_key)
    assert st1.refusal(int(time.time() * 1000)) == "KEY_REVOKED"
    assert st1.revoked_reason == "laptop stolen"
    assert (await status_of(nc, prefix, v2.public_key)).refusal(0) is None
    await eventually(lambda: asyncio.sleep(0, len(events) == 1))
    assert (events[0].name, events[0].version, events[0].public_key) == (
        "agent-1",
        1,
        v1.public_key,
    )
    assert events[0].signature_ok() and events[0].signer == keys_worker_key(tmp_path)
    assert not replace(events[0], reason="other").signature_ok()
    assert await error_code(keys.sign("agent-1", b"x", version=1)) == "KEY_VERSION_INVALID"

    listed = await keys.list()
    replies.append(listed.encode())
    assert [k.record.name for k in listed.keys] == ["agent-1"]

    raw, record = await stored(nc, prefix, "agent-1")
    assert record.versions[0].sealed_seed == b"" and len(seeds(record)) == 1  # erased
    kv = await nc.jetstream().key_value(Subjects(prefix).keys_bucket)

    async def purged() -> bool:  # older revisions with v1's seed are purged
        return len(await kv.history("agent-1")) == 1

    await eventually(purged)
    logs = caplog.text
    for secret in secrets:
        for blob in (raw, *replies):
            assert secret not in blob
        assert secret.hex() not in logs and secret.hex() not in raw.hex()
    assert MASTER.hex() not in logs


async def test_disable_enable_delete_destroy(keys: KeyClient, nc: Client, prefix: str) -> None:
    info = await keys.create("doc", "document_signing")
    pk = info.record.latest.public_key
    assert (await keys.disable("doc")).record.state == "Disabled"
    assert (await status_of(nc, prefix, pk)).refusal(0) == "KEY_DISABLED"
    assert await error_code(keys.sign("doc", b"x")) == "KEY_STATE_CONFLICT"
    assert await error_code(keys.rotate("doc")) == "KEY_STATE_CONFLICT"
    assert await error_code(keys.disable("doc")) == "KEY_STATE_CONFLICT"
    assert (await keys.enable("doc")).record.state == "Enabled"
    assert (await status_of(nc, prefix, pk)).refusal(0) is None

    assert await error_code(keys.delete("doc")) == "KEY_POLICY_DENIED"
    await keys.config("doc", deletion_allowed=True, deletion_wait_s=0)
    pending = await keys.delete("doc")
    assert pending.record.state == "PendingDeletion"
    assert (await status_of(nc, prefix, pk)).refusal(0) == "KEY_PENDING_DELETION"
    swept = await keys.sweep()
    assert swept.destroyed == ("doc",)
    _, record = await stored(nc, prefix, "doc")
    assert record.state == "Destroyed" and all(v.sealed_seed == b"" for v in record.versions)
    kv = await nc.jetstream().key_value(Subjects(prefix).keys_bucket)
    assert len(await kv.history("doc")) == 1  # no older revision keeps a sealed seed
    assert (await status_of(nc, prefix, pk)).refusal(0) == "KEY_DESTROYED"
    assert await error_code(keys.enable("doc")) == "KEY_STATE_CONFLICT"
    assert await error_code(keys.sign("doc", b"x")) == "KEY_STATE_CONFLICT"


@pytest.mark.parametrize(
    ("purpose", "message", "signed"),
    [
        ("agent_identity", b"pay 1 EUR", b"pay 1 EUR"),
        ("agent_identity", b"agentic-payments/certificate/v1\x00...", None),
        ("document_signing", b"pay 1 EUR", DOMAIN_DOCUMENT + b"pay 1 EUR"),
        ("certificate_signing", b"pay 1 EUR", None),
        ("authentication", b"challenge", None),
    ],
)
async def test_sign_is_purpose_checked_and_domain_tagged(
    keys: KeyClient, purpose: str, message: bytes, signed: bytes | None
) -> None:
    """schemas.keys.signing_payload through the worker: what each purpose signs, and
    KEY_POLICY_DENIED (the worker keeps serving) for what it must not."""
    public_key = (await keys.create("k", purpose)).record.latest.public_key
    if signed is None:
        assert await error_code(keys.sign("k", message)) == "KEY_POLICY_DENIED"
        assert (await keys.get("k")).record.name == "k"
        return
    sig = await keys.sign("k", message)
    assert verify_signature(public_key, signed, sig.signature)


async def test_pending_deletion_waits_and_can_be_cancelled(keys: KeyClient) -> None:
    await keys.create("slow", "authentication", deletion_allowed=True, deletion_wait_s=3600)
    await keys.delete("slow")
    assert (await keys.sweep()).destroyed == ()
    assert (await keys.enable("slow")).record.state == "Enabled"


async def test_min_versions_and_expiry(keys: KeyClient, nc: Client, prefix: str) -> None:
    await keys.create("cert", "certificate_signing")
    await keys.rotate("cert")
    info = await keys.config("cert", min_verify_version=2, min_sign_version=2)
    v1, v2 = info.record.versions
    assert (await status_of(nc, prefix, v1.public_key)).refusal(0) == "KEY_VERSION_RETIRED"
    assert (await status_of(nc, prefix, v2.public_key)).refusal(0) is None
    assert await error_code(keys.sign("cert", b"x", version=1)) == "KEY_VERSION_INVALID"
    assert await error_code(keys.config("cert", min_verify_version=1)) == "KEY_VERSION_INVALID"
    assert await error_code(keys.config("cert", min_sign_version=3)) == "KEY_VERSION_INVALID"

    short = await keys.create("short", "authentication", expires_after_s=1)
    pk = short.record.latest.public_key
    st = await status_of(nc, prefix, pk)
    assert st.expires_at_ms > 0 and st.refusal(st.expires_at_ms - 1) is None
    assert st.refusal(st.expires_at_ms) == "KEY_EXPIRED"
    await asyncio.sleep(
        max(0.0, st.expires_at_ms / 1000 - time.time()) + 0.05
    )  # time is the subject: expiry
    assert await error_code(keys.sign("short", b"x")) == "KEY_VERSION_INVALID"


async def test_auto_rotation_on_demand(keys: KeyClient) -> None:
    await keys.create("auto", "agent_identity", auto_rotate_period_s=1)
    await keys.create("manual", "agent_identity")
    assert (await keys.sweep()).rotated == ()
    await asyncio.sleep(1.1)  # time is the subject: the rotation period passes
    swept = await keys.sweep()
    assert swept.rotated == ("auto",)
    assert len((await keys.get("auto")).record.versions) == 2
    assert len((await keys.get("manual")).record.versions) == 1


async def test_auto_rotation_on_schedule(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    worker = make_worker(nats_config, tmp_path, sweep_s=0.3)
    await worker.start()
    try:
        client = KeyClient(nc, nats_config.prefix, timeout=10)
        await client.create("ticking", "authentication", auto_rotate_period_s=1)

        async def rotated() -> bool:
            return len((await client.get("ticking")).record.versions) >= 2

        await eventually(rotated)
    finally:
        await worker.stop()


async def test_concurrent_rotations_on_two_managers_are_serialised_by_cas(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    workers = [make_worker(nats_config, tmp_path, f"keys{i}") for i in (1, 2)]
    for w in workers:
        await w.start()
    try:
        client = KeyClient(nc, nats_config.prefix, timeout=20)
        await client.create("busy", "agent_identity")
        await asyncio.gather(*(client.rotate("busy") for _ in range(12)))
        record = (await client.get("busy")).record
        assert [v.version for v in record.versions] == list(range(1, 14))
        assert len({v.public_key for v in record.versions}) == 13
        served = sum(w.stats.counters.get("op_rotate", 0) for w in workers)
        assert served == 12
        for v in record.versions:
            assert (await status_of(nc, nats_config.prefix, v.public_key)).version == v.version
    finally:
        for w in workers:
            await w.stop()


def _req(**fields: Any) -> bytes:
    return msgpack.packb({"type": "key_request", "v": 1, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("op", "payload", "code"),
    [
        ("create", b"\xc1\xc1", "MALFORMED_PAYLOAD"),
        ("create", b"", "MALFORMED_PAYLOAD"),
        ("get", b"\x92\x01", "MALFORMED_PAYLOAD"),  # truncated array
        ("sign", _req(name="a", message=b"x" * 300_000), "PAYLOAD_TOO_LARGE"),
        ("get", msgpack.packb({"type": "key_request", "v": 2, "name": "a"}), "UNSUPPORTED_VERSION"),
        ("create", _req(name="a", purpose="agent_identity", version="1"), "SCHEMA_VIOLATION"),
        ("create", _req(name="x" * 65, purpose="agent_identity"), "SCHEMA_VIOLATION"),
        ("create", _req(name="a", purpose="launch_codes"), "SCHEMA_VIOLATION"),
        ("sign", _req(name="a", message="not-bin"), "SCHEMA_VIOLATION"),
        ("revoke", _req(name="a"), "SCHEMA_VIOLATION"),  # reason missing
        ("get", _req(name="nobody"), "KEY_NOT_FOUND"),
        ("rotate", _req(name="nobody"), "KEY_NOT_FOUND"),
        ("sign", _req(name="nobody", message=b"x"), "KEY_NOT_FOUND"),
        ("revoke", _req(name="nobody", reason="r"), "KEY_NOT_FOUND"),
    ],
)
async def test_bad_input_gets_a_code_and_service_keeps_serving(
    keys: KeyClient, op: str, payload: bytes, code: str
) -> None:
    reply = await keys.raw(op, payload)
    assert isinstance(reply, ErrorReply) and reply.code == code, reply
    assert isinstance(await keys.raw("list", _req()), KeyList)
    info = await keys.create("still-here", "authentication")
    assert isinstance(info, KeyInfo) and info.record.name == "still-here"


async def test_duplicate_create_and_revoke_twice(keys: KeyClient, nc: Client, prefix: str) -> None:
    first = await keys.create("dup", "agent_identity")
    assert await error_code(keys.create("dup", "authentication")) == "KEY_EXISTS"
    assert (await keys.get("dup")).record.latest.public_key == first.record.latest.public_key
    await keys.revoke("dup", "first reason")
    again = await keys.revoke("dup", "second reason")
    assert again.record.versions[0].revoked_reason == "first reason"
    assert await error_code(keys.revoke("dup", "r", version=5)) == "KEY_VERSION_INVALID"
    assert await error_code(keys.rotate("nothere")) == "KEY_NOT_FOUND"
    st = await status_of(nc, prefix, first.record.latest.public_key)
    assert st.refusal(0) == "KEY_REVOKED"


async def test_sweep_repairs_a_missing_status(keys: KeyClient, nc: Client, prefix: str) -> None:
    info = await keys.create("repair", "agent_identity")
    kv = await state_bucket(nc, Subjects(prefix))
    key = state_key("key", info.record.latest.public_key.hex())
    await kv.purge(key)
    swept = await keys.sweep()
    assert swept.statuses_written >= 1
    assert (await status_of(nc, prefix, info.record.latest.public_key)).name == "repair"


async def test_corrupt_stored_record_is_an_internal_error_not_a_crash(
    keys: KeyClient, nc: Client, prefix: str
) -> None:
    await keys.create("good", "authentication")
    kv = await nc.jetstream().key_value(Subjects(prefix).keys_bucket)
    await kv.put("broken", b"\x81\xa4type\xaakey_record")
    reply = await keys.raw("get", _req(name="broken"))
    assert isinstance(reply, ErrorReply) and reply.code == "INTERNAL"
    assert [k.record.name for k in (await keys.list()).keys] == ["good"]
    assert (await keys.sweep()).statuses_written == 0
    assert (await keys.get("good")).record.name == "good"


async def test_a_stale_writer_never_overwrites_a_newer_status(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    worker = make_worker(nats_config, tmp_path)
    await worker.start()
    try:
        client = KeyClient(nc, nats_config.prefix, timeout=10)
        await client.create("race", "agent_identity")
        old_record, old_revision = await worker._read("race")
        await client.revoke("race", "compromised")
        pk = old_record.latest.public_key
        assert (await status_of(nc, nats_config.prefix, pk)).revoked
        assert await worker._publish_status(old_record, old_revision) == 0
        assert (await status_of(nc, nats_config.prefix, pk)).refusal(0) == "KEY_REVOKED"
    finally:
        await worker.stop()


async def test_a_master_key_that_does_not_open_the_stored_keys_is_refused(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    worker = make_worker(nats_config, tmp_path)
    await worker.start()
    try:
        await KeyClient(nc, nats_config.prefix, timeout=10).create("mine", "authentication")
    finally:
        await worker.stop()
    runtime = RuntimeConfig(
        worker_id="keys2", nats=nats_config, data_dir=tmp_path, drain_timeout_s=2
    )
    wrong = KeysWorker(runtime, MasterKey(bytearray(os.urandom(32)), "wrong"))
    with pytest.raises(MasterKeyInvalid):
        await wrong.start()
    await wrong.stop()
    again = make_worker(nats_config, tmp_path)  # the right one still starts
    await again.start()
    await again.stop()
