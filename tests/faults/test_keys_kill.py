"""Fault: the key manager is killed (-9) in the middle of a stream of rotations, while
clients keep sending verification requests. After a restart each key is at the old or
the new version, never in between: every version's seed is stored and opens under
the master key to that version's public key, every version's public status is
there, and the latest version signs a payment the pool decides VALID."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid

import nacl.bindings
import pytest

from bus.client import VerifyClient
from bus.connection import connect
from bus.key_client import KeyClient
from bus.state import state_key
from bus.subjects import Subjects
from schemas.errors import AgenticPaymentsError, NoResponders, RequestTimeout
from schemas.identity import verify_signature
from schemas.keys import KeyRecord, KeyStatus
from schemas.messages import VerificationRequest
from tests.faults.load import Load, report
from tests.helpers import Cluster
from workers.keys.crypto import MasterKey

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
KILLS = 2


def _start_keys(cluster: Cluster) -> None:
    cluster._spawn(
        "keys-keys1",
        ["-m", "workers.cli", "worker", "keys", "--id", "keys1", "--heartbeat-s", "1"],
    )


async def _stored(nc: object, subjects: Subjects, name: str) -> KeyRecord:
    kv = await nc.jetstream().key_value(subjects.keys_bucket)  # type: ignore[attr-defined]
    return KeyRecord.decode((await kv.get(name)).value)


async def _check_whole(
    nc: object, subjects: Subjects, master: MasterKey, name: str, timeout: float
) -> KeyRecord:
    """The stored key is whole: versions 1..n, each seed present and its own, and
    (once the restarted manager's startup sweep ran) each version's status written."""
    record = await _stored(nc, subjects, name)
    assert [v.version for v in record.versions] == list(range(1, len(record.versions) + 1))
    for v in record.versions:
        assert v.sealed_seed, f"version {v.version} lost its seed"
        seed = master.open(v.sealed_seed)
        public, _ = nacl.bindings.crypto_sign_seed_keypair(bytes(seed))
        assert public == v.public_key, f"version {v.version}: seed of another key"
    state = await nc.jetstream().key_value(subjects.state_bucket)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    for v in record.versions:
        while True:
            try:
                entry = await state.get(state_key("key", v.public_key.hex()))
                status = KeyStatus.decode(entry.value)
                if status.version == v.version and status.name == name:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, f"no public status for version {v.version}"
            await asyncio.sleep(0.2)
    return record


async def _latest_when_serving(keys: KeyClient, cluster: Cluster, name: str) -> int:
    """The key's latest version, once the restarted manager answers."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return (await keys.get(name)).record.latest.version
        except (NoResponders, RequestTimeout):  # not up yet, or still starting
            proc = cluster.processes["keys-keys1"]
            assert proc.poll() is None, cluster.log("keys-keys1")
            assert time.monotonic() < deadline, "the key manager did not come back"
            await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_key_manager_killed_during_rotations(cluster: Cluster) -> None:
    await cluster.start_system(3)
    _start_keys(cluster)
    subjects = Subjects(cluster.prefix)
    nc = await connect(cluster.control(), name="fault-keys")
    keys = KeyClient(nc, cluster.prefix, timeout=5.0)
    name = f"payer-{uuid.uuid4().hex[:6]}"
    created = False
    deadline = time.monotonic() + 30
    while not created:  # the manager is starting
        try:
            await keys.create(name, "agent_identity")
            created = True
        except NoResponders:
            assert time.monotonic() < deadline, cluster.log("keys-keys1")
            await asyncio.sleep(0.3)
    master, _ = MasterKey.resolve(None, cluster.data_dir / "keys" / "master.key", env={})
    rng = random.Random()
    outcomes: list[dict[str, int]] = []
    try:
        async with (
            await VerifyClient.connect(cluster.control(), timeout=4.0, retries=0) as client,
            Load(client, "keyskill") as load,
        ):
            await load.wait_decided(10, timeout=30)
            for _ in range(KILLS):
                confirmed = (await keys.get(name)).record.latest.version

                async def rotate_forever() -> None:
                    nonlocal confirmed
                    while True:
                        info = await keys.rotate(name)
                        confirmed = info.record.latest.version

                rotations = asyncio.create_task(rotate_forever())
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                cluster.kill("keys-keys1", signal.SIGKILL)
                cluster.processes["keys-keys1"].wait(5)
                rotations.cancel()
                with contextlib.suppress(asyncio.CancelledError, AgenticPaymentsError):
                    await rotations
                _start_keys(cluster)
                latest = await _latest_when_serving(keys, cluster, name)
                # the rotation in flight at the kill happened wholly or not at all
                assert latest in (confirmed, confirmed + 1), (confirmed, latest)
                record = await _check_whole(nc, subjects, master, name, timeout=15)
                assert record.latest.version == latest
                outcomes.append({"confirmed": confirmed, "after_restart": latest})
            # the latest version is fully usable: it signs, and the pool accepts it
            signed = await keys.sign(name, b"pay 5 EUR after the crash")
            assert signed.version == record.latest.version
            message = b"pay 5 EUR after the crash"
            assert verify_signature(signed.public_key, message, signed.signature)
            cert = await client.verify_with_consensus(
                VerificationRequest(
                    f"keyskill-final-{uuid.uuid4().hex[:6]}",
                    b"pay 5 EUR after the crash",
                    signed.signature,
                    signed.public_key,
                )
            )
            assert cert.decision == "VALID", cert
            await load.stop(drain_s=20)
            result = await load.audit(nc, cluster.prefix)
    finally:
        master.close()
        await nc.close()
    report("keys_kill9_during_rotation", kills=outcomes, **result)
    assert result["lost"] == 0, result
    assert result["wrong"] == 0, result
