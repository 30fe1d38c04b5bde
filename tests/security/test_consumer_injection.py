"""Hole 6b: a push consumer's deliver subject is not checked against its creator's
publish permissions, and the delivered messages keep their headers.

So a role that may create consumers on a stream can have JetStream copy stored
messages onto any subject of the account — and if it also writes that stream,
its own crafted bytes. Here: the key manager's user (which writes ``key.>`` of
the verdict state and could create consumers on it) plants a delete marker and
has it delivered into v1's member record, evicting v1; and a client copies an
existing delete marker of the members bucket over v1's record. Both are now
refused by the server: no role but admin may create consumers (bus/permissions.py;
readers use bus/tail.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import membership
from bus.state import state_bucket
from bus.subjects import Subjects
from tests.secure import SecureServer

Attacker = Callable[[str], Awaitable[Client]]
VICTIM_KEY = bytes(range(32))
WAIT_S = 3.0


async def _pool_with_v1(secure_server: SecureServer, attacker: Attacker) -> tuple[Subjects, Any]:
    subjects = Subjects(secure_server.prefix)
    admin = await attacker("admin")
    await state_bucket(admin, subjects)
    members = await membership.members_bucket(admin, subjects)
    await membership.register(admin, subjects, "v1", VICTIM_KEY)
    # a push consumer delivers only where someone listens: every mirror of the pool
    # holds a subscription on the bucket's subjects (its wake-up, bus/tail.py)
    await admin.subscribe(f"$KV.{subjects.members_bucket}.>")
    await admin.flush()
    return subjects, members


async def _v1_survives(members: Any) -> bool:
    """False as soon as v1's record reads as deleted (polls up to WAIT_S)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while loop.time() < end:
        try:
            await members.get("v1")
        except nats.js.errors.KeyNotFoundError:
            return False
        await asyncio.sleep(0.05)
    return True


async def _try_push_consumer(nc: Client, stream: str, filter_subject: str, deliver: str) -> str:
    """Create a push consumer delivering ``filter_subject`` to ``deliver``; what happened."""
    try:
        await nc.jetstream().add_consumer(
            stream,
            ConsumerConfig(
                deliver_subject=deliver,
                filter_subject=filter_subject,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ),
            timeout=1.0,
        )
    except Exception as exc:  # refused: permissions violation -> no reply (timeout)
        return f"refused ({type(exc).__name__})"
    return "created"


async def test_key_manager_cannot_deliver_a_planted_delete_marker_into_the_pool(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects, members = await _pool_with_v1(secure_server, attacker)
    keys1 = await attacker("keys1")
    planted = f"$KV.{subjects.state_bucket}.key.{'ab' * 32}"
    # keys1 may write key.> of the verdict state: a crafted delete marker (a body does
    # not make it less of one: every KV reader goes by the KV-Operation header)
    await keys1.jetstream().publish(planted, b"erased", headers={"KV-Operation": "DEL"})
    outcome = await _try_push_consumer(
        keys1,
        f"KV_{subjects.state_bucket}",
        planted,
        f"$KV.{subjects.members_bucket}.v1",
    )
    assert await _v1_survives(members), f"v1 evicted by a consumer keys1 created: {outcome}"
    assert outcome.startswith("refused"), outcome


async def test_key_manager_cannot_deliver_a_crafted_ballot(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects, _ = await _pool_with_v1(secure_server, attacker)
    keys1 = await attacker("keys1")
    v1 = await attacker("v1")
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ballot(msg: Any) -> None:
        await got.put(msg.data)

    await v1.subscribe(subjects.ballot, cb=on_ballot)
    await v1.flush()
    planted = f"$KV.{subjects.state_bucket}.key.{'cd' * 32}"
    await keys1.jetstream().publish(planted, b'{"type":"ballot","forged":true}')
    outcome = await _try_push_consumer(
        keys1, f"KV_{subjects.state_bucket}", planted, subjects.ballot
    )
    try:
        data = await asyncio.wait_for(got.get(), WAIT_S)
    except TimeoutError:
        data = b""
    assert data == b"", f"verifiers received keys1's bytes as a ballot: {data!r} ({outcome})"
    assert outcome.startswith("refused"), outcome


async def test_client_cannot_copy_a_delete_marker_over_a_member_record(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects, members = await _pool_with_v1(secure_server, attacker)
    await members.put("gone", b"x")
    await members.delete("gone")
    alice = await attacker("alice")
    outcome = await _try_push_consumer(
        alice,
        f"KV_{subjects.members_bucket}",
        f"$KV.{subjects.members_bucket}.gone",
        f"$KV.{subjects.members_bucket}.v1",
    )
    assert await _v1_survives(members), f"alice's consumer evicted v1: {outcome}"
    assert outcome.startswith("refused"), outcome
