"""Hole 6b: a push consumer's deliver subject is not checked against its creator's
publish permissions, and the delivered messages keep their headers.

So a role that may create consumers on a stream can have JetStream deliver stored
messages to every subscriber of any subject — and if it also writes that stream,
its own crafted bytes. Here: the key manager's user (which writes ``key.>`` of
the verdict state and could create consumers on it) plants bytes and has them
delivered to the verifiers as a ballot; and a client has a stored member record
delivered as a ballot. Both are now refused by the server: no role but admin may
create consumers (bus/permissions.py; readers use bus/tail.py).

(Verified on nats-server 2.15: a delivered message keeps its *original* subject, so
a stream listening on the deliver subject does not store it; the way stored bytes
reach a KV subject is a JetStream API reply, tests/security/test_revocation_erased.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import membership
from bus.state import state_bucket
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from tests.secure import SecureServer

Attacker = Callable[[str], Awaitable[Client]]
VICTIM = AgentIdentity.from_seed(bytes(range(32)))
WAIT_S = 2.0


async def _pool_with_v1(secure_server: SecureServer, attacker: Attacker) -> tuple[Subjects, Any]:
    subjects = Subjects(secure_server.prefix)
    admin = await attacker("admin")
    await state_bucket(admin, subjects)
    members = await membership.members_bucket(admin, subjects)
    await membership.register(admin, subjects, "v1", VICTIM)
    return subjects, members


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


async def test_client_cannot_copy_a_stored_record_onto_the_ballot_subject(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects, _ = await _pool_with_v1(secure_server, attacker)
    v1 = await attacker("v1")
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ballot(msg: Any) -> None:
        await got.put(msg.data)

    await v1.subscribe(subjects.ballot, cb=on_ballot)
    await v1.flush()
    alice = await attacker("alice")  # a client may read the pool, so it could create consumers
    outcome = await _try_push_consumer(
        alice,
        f"KV_{subjects.members_bucket}",
        f"$KV.{subjects.members_bucket}.v1",
        subjects.ballot,
    )
    try:
        data = await asyncio.wait_for(got.get(), WAIT_S)
    except TimeoutError:
        data = b""
    assert data == b"", f"verifiers received a copy delivered by alice: {data[:40]!r} ({outcome})"
    assert outcome.startswith("refused"), outcome
