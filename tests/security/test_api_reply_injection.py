"""JetStream API replies written into a bucket (found while closing hole 6b).

Every JetStream API request answers on the requester's reply subject, which the
server does not check, and a stream stores whatever is published on its
subjects. So ``alice`` (a client, allowed direct gets on the members bucket to
check certificates) can send a direct get for any deleted key with v1's record
subject as reply: the server writes the delete marker, headers and all, as v1's
newest record, and every pool mirror dropped v1 (n 4 -> 3: a tolerated
minority moves closer to a quorum).

The server's copy carries its Nats-Stream/Nats-Sequence headers in the stored
headers, which no bucket writer sends: BucketMirror now ignores such a marker
(bus/state.py ``_genuine``). The pool mirror is run here as ``t2``, a tally
user, i.e. with exactly a tally's grants.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus import membership
from bus.state import state_bucket
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from tests.secure import SecureServer

Attacker = Callable[[str], Awaitable[Client]]
WATCH_S = 1.5


@pytest.mark.xfail(
    strict=True,
    reason="OPEN HOLE (docs/security.md 'JetStream API replies'): the pool is read with "
    "message gets (bus/membership.read_pool), which take the server's copy of a delete "
    "marker for a real delete; skipping copies would not close it (JSON answers and "
    "verbatim no_hdr copies look like writes, and enough of them trim a key's history). "
    "The root fix is an account that holds the streams behind service imports.",
)
async def test_a_client_cannot_evict_a_member_by_a_direct_get_reply(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects = Subjects(secure_server.prefix)
    admin = await attacker("admin")
    await state_bucket(admin, subjects)
    members = await membership.members_bucket(admin, subjects)
    for i in range(1, 5):
        await membership.register(admin, subjects, f"v{i}", AgentIdentity.generate())
    await members.put("gone", b"x")
    await members.delete("gone")  # a lifted quarantine leaves such a marker

    watcher = membership.PoolWatcher(await attacker("t2"), subjects)
    await watcher.start()
    try:
        assert len(watcher.view.keys) == 4
        alice = await attacker("alice")
        await alice.publish(
            f"$JS.API.DIRECT.GET.KV_{subjects.members_bucket}",
            json.dumps({"last_by_subj": f"$KV.{subjects.members_bucket}.gone"}).encode(),
            reply=f"$KV.{subjects.members_bucket}.v1",
        )
        await alice.flush()
        last = (await members.status()).stream_info.state.last_seq
        loop = asyncio.get_running_loop()
        end = loop.time() + WATCH_S
        while loop.time() < end:
            assert len(watcher.view.keys) == 4, f"pool shrank to {len(watcher.view.keys)}"
            await asyncio.sleep(0.05)
        assert watcher._mirror.revision >= last  # it did read past the copy
    finally:
        await watcher.stop()
