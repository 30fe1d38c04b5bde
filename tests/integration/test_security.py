"""The per-role permissions against a real nats-server started with the rendered config.

Each test renders nkey users for its own prefix (bus/permissions.py through
workers/cli/nats_config.py), starts nats-server with that config, and connects
with the role's credentials exactly as a worker would (NATS_NKEY_SEED,
NATS_INBOX_PREFIX). A forbidden publish must both raise the server's
permissions violation on the offender's connection and never reach a
subscriber; a control publish on an allowed subject proves the listener works.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.kv import subject_keys
from bus.subjects import Subjects
from schemas.errors import NotConnected
from tests.secure import SecureServer, start_secure_server

pytestmark = pytest.mark.integration


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureServer]:
    server = start_secure_server(tmp_path / "nats", f"s{uuid.uuid4().hex[:10]}")
    try:
        yield server
    finally:
        server.server.stop()


class Conn:
    """A connection that records the async errors the server sends it."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def wait_error(self, needle: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for err in self.errors:
                    if needle.lower() in err.lower():
                        return err
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def conn(config: NatsConfig) -> AsyncIterator[Conn]:
    nc = await connect(config, name="test")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc._error_cb = on_error  # record permission violations (nats-py calls this)
    try:
        yield Conn(nc, errors)
    finally:
        if not nc.is_closed:
            await nc.close()


async def collect(nc: Client, subject: str) -> tuple[list[Msg], object]:
    got: list[Msg] = []

    async def cb(msg: Msg) -> None:
        got.append(msg)

    sub = await nc.subscribe(subject, cb=cb)
    await barrier(nc)
    return got, sub


async def wait_for(got: list[Msg], count: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(got) < count:  # noqa: ASYNC110 - a plain list filled by a callback
            await asyncio.sleep(0.02)


async def test_verifier_cannot_publish_a_forged_decision(secure: SecureServer) -> None:
    s = Subjects(secure.prefix)
    async with conn(secure.config("admin")) as admin, conn(secure.config("v1")) as v1:
        decisions, _ = await collect(admin.nc, s.decisions_all)
        votes, _ = await collect(admin.nc, s.votes_all)
        await v1.nc.publish(s.decision("VALID"), b"forged certificate")
        await v1.nc.publish(s.votes("t1"), b"a vote")  # control: allowed
        await barrier(v1.nc)
        err = await v1.wait_error("permissions violation for publish")
        assert s.decision("VALID").lower() in err.lower()
        await wait_for(votes, 1)
        await asyncio.sleep(0.3)  # time is the subject: the forged decision never arrives
        assert decisions == []
        assert votes[0].data == b"a vote"


async def test_client_cannot_publish_a_vote_or_a_ballot(secure: SecureServer) -> None:
    s = Subjects(secure.prefix)
    async with conn(secure.config("admin")) as admin, conn(secure.config("alice")) as alice:
        votes, _ = await collect(admin.nc, s.votes_all)
        ballots, _ = await collect(admin.nc, s.ballot)
        requests, _ = await collect(admin.nc, s.request)
        await alice.nc.publish(s.votes("t1"), b"fake vote")
        await alice.nc.publish(s.ballot, b"fake ballot")
        await alice.nc.publish(s.request, b"a request")  # control: allowed
        await barrier(alice.nc)
        await alice.wait_error(f'publish to "{s.votes("t1")}"')
        await alice.wait_error(f'publish to "{s.ballot}"')
        await wait_for(requests, 1)
        await asyncio.sleep(0.3)  # time is the subject: nothing forged arrives
        assert votes == [] and ballots == []


async def test_client_reads_only_its_own_replies(secure: SecureServer) -> None:
    s = Subjects(secure.prefix)
    async with (
        conn(secure.config("alice")) as alice,
        conn(secure.config("bob")) as bob,
        conn(secure.config("admin")) as admin,
    ):
        # a responder standing in for the tally (admin may answer anything)
        async def answer(msg: Msg) -> None:
            await msg.respond(b"reply for " + msg.data)

        await admin.nc.subscribe(s.request, cb=answer)
        await barrier(admin.nc)
        reply = await bob.nc.request(s.request, b"bob", timeout=5)
        assert reply.data == b"reply for bob"
        # alice may not listen on bob's inbox, nor on ballots, nor on everything
        for subject in ("_INBOX.bob.>", s.ballot, ">"):
            await alice.nc.subscribe(subject)
            await barrier(alice.nc)
            await alice.wait_error(f'subscription to "{subject}"')
        assert not alice.errors or all("publish" not in e.lower() for e in alice.errors)


async def test_client_without_its_inbox_prefix_gets_no_reply(secure: SecureServer) -> None:
    """The default _INBOX is not readable: the private inbox prefix is required."""
    s = Subjects(secure.prefix)
    async with (
        conn(secure.config("admin")) as admin,
        conn(secure.config("alice", inbox_prefix=None)) as alice,
    ):

        async def answer(msg: Msg) -> None:
            await msg.respond(b"ok")

        await admin.nc.subscribe(s.request, cb=answer)
        await barrier(admin.nc)
        with pytest.raises(Exception):  # noqa: B017 - nats-py's timeout type varies
            await alice.nc.request(s.request, b"x", timeout=1)
        await alice.wait_error('subscription to "_INBOX.')


async def test_unknown_nkey_and_wrong_role_cannot_connect_or_act(
    secure: SecureServer, tmp_path: Path
) -> None:
    from workers.cli.nats_config import new_user_nkey

    seed, _ = new_user_nkey()
    seed_file = tmp_path / "stranger.nk"
    seed_file.write_text(seed)
    seed_file.chmod(0o600)
    with pytest.raises(NotConnected):
        await connect(
            NatsConfig(url=secure.url, prefix=secure.prefix, nkey_seed=str(seed_file)),
            name="stranger",
            initial_attempts=1,
        )
    with pytest.raises(NotConnected):  # no credentials at all
        await connect(
            NatsConfig(url=secure.url, prefix=secure.prefix), name="anon", initial_attempts=1
        )


async def test_verifier_can_write_only_its_own_member_record(secure: SecureServer) -> None:
    s = Subjects(secure.prefix)
    async with conn(secure.config("admin")) as admin:
        kv = await admin.nc.jetstream().create_key_value(bucket=s.members_bucket, history=5)
        async with conn(secure.config("v1")) as v1:
            js = v1.nc.jetstream()
            ack = await js.publish(f"$KV.{s.members_bucket}.v1", b"mine")
            assert ack.seq >= 1
            with pytest.raises(Exception):  # noqa: B017 - no responders / timeout
                await js.publish(f"$KV.{s.members_bucket}.v2", b"sybil", timeout=1)
            await v1.wait_error(f'publish to "$KV.{s.members_bucket}.v2"')
        assert (await kv.get("v1")).value == b"mine"
        # not nats-py's kv.keys(): that is a push consumer, whose deliveries stay in
        # the DATA account (users read streams with direct gets and stream info)
        assert "v2" not in await subject_keys(kv)


async def test_verifier_cannot_make_jetstream_deliver_its_bytes_as_a_ballot(
    secure: SecureServer,
) -> None:
    """A verifier writes its own member record (arbitrary bytes); if it could also create
    a consumer on that stream, JetStream would deliver the record to any deliver subject
    — e.g. the ballot subject — without checking the verifier's publish permissions."""
    from bus import membership
    from schemas.identity import AgentIdentity

    s = Subjects(secure.prefix)
    async with conn(secure.config("admin")) as admin, conn(secure.config("v1")) as v1:
        await membership.members_bucket(admin.nc, s)  # the operator's bucket
        kv = await v1.nc.jetstream().key_value(s.members_bucket)
        await kv.put("v1", b"\\x89a forged ballot")  # allowed: its own record
        assert await membership.register(
            v1.nc, s, "v1", AgentIdentity.generate()
        )  # registration still works
        ballots, _ = await collect(admin.nc, s.ballot)
        with pytest.raises(Exception):  # noqa: B017 - the server's permission error
            await v1.nc.jetstream().add_consumer(
                f"KV_{s.members_bucket}", deliver_subject=s.ballot, ack_policy="none"
            )
        await asyncio.sleep(0.5)  # time is the subject: no ballot is delivered
        assert ballots == []
