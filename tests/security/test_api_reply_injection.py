"""JetStream API replies written into a bucket (found while closing hole 6b).

Every JetStream API request answers on the requester's reply subject, which the
server does not check, and a stream stores whatever is published on its
subjects. So ``alice`` (a client, allowed stream info, direct and message gets
on the members bucket to check certificates) could send a direct get for any
deleted key with v1's record subject as reply: the server wrote the delete
marker, headers and all, as v1's newest record, and every pool mirror dropped
v1 (n 4 -> 3: a tolerated minority moves closer to a quorum). A stream info or
message get answer stored the same way is a JSON "record" that trims v1's
history.

Fixed by the account split (bus/permissions.py ``render_auth_conf``): the
streams live in the DATA account, every user in APP behind service imports of
``$JS.API.>`` and ``$KV.>``, so the server's answer goes back to APP through
the response mapping and is never published in DATA, where the stream listens.
The pool mirror is run here as ``t2``, a tally user, i.e. with exactly a
tally's grants.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

from bus import membership
from bus.state import state_bucket
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from tests.secure import SecureServer

Attacker = Callable[[str], Awaitable[Client]]
WATCH_S = 0.75


async def _last_seq(members: KeyValue) -> int:
    return int((await members.status()).stream_info.state.last_seq)


async def test_no_api_answer_is_stored_in_the_members_bucket(
    secure_server: SecureServer, attacker: Attacker
) -> None:
    subjects = Subjects(secure_server.prefix)
    bucket = subjects.members_bucket
    admin = await attacker("admin")
    await state_bucket(admin, subjects)
    members = await membership.members_bucket(admin, subjects)
    for i in range(1, 5):
        await membership.register(admin, subjects, f"v{i}", AgentIdentity.generate())
    await members.put("gone", b"x")
    await members.delete("gone")  # a lifted quarantine leaves such a marker
    requests = [
        (f"$JS.API.STREAM.INFO.KV_{bucket}", b""),
        (f"$JS.API.DIRECT.GET.KV_{bucket}", json.dumps({"last_by_subj": f"$KV.{bucket}.gone"})),
        (f"$JS.API.DIRECT.GET.KV_{bucket}", json.dumps({"seq": 1, "no_hdr": True})),
        (f"$JS.API.STREAM.MSG.GET.KV_{bucket}", json.dumps({"seq": 1})),
    ]

    watcher = membership.PoolWatcher(await attacker("t2"), subjects)
    await watcher.start()
    try:
        assert len(watcher.view.keys) == 4
        alice = await attacker("alice")
        loop = asyncio.get_running_loop()
        stored: list[str] = []
        for subject, body in requests:
            before = await _last_seq(members)
            payload = body if isinstance(body, bytes) else body.encode()
            await alice.publish(subject, payload, reply=f"$KV.{bucket}.v1")
            await alice.flush()
            end = loop.time() + WATCH_S
            while loop.time() < end:  # no event to wait for when nothing is stored
                if await _last_seq(members) != before:
                    stored.append(f"{subject} {body!r}")
                    break
                await asyncio.sleep(0.05)
            assert len(watcher.view.keys) == 4, f"pool shrank to {len(watcher.view.keys)}"
        assert stored == [], f"answers stored as v1's record: {stored}"
        assert len(watcher.view.keys) == 4
        assert watcher._mirror.revision >= await _last_seq(members)
    finally:
        await watcher.stop()
