"""Only the project's own exceptions escape from bus/ (issue #9, item 3).

Every public bus entry point that does I/O is called on a closed connection
and on a nats-server without JetStream; what it raises must be an
``AgenticPaymentsError`` with a stable code (NOT_CONNECTED, NO_RESPONDERS, ...),
never a nats-py class, so a caller catches ``schemas.errors`` classes only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from bus import membership, state, streams
from bus.authority_client import AuthorityClient
from bus.call import call, send_request
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import connect
from bus.decisions import DecisionStore, ensure_audit_stream
from bus.key_client import KeyClient
from bus.kv import KeyValue
from bus.membership import MemberRecord, PoolWatcher
from bus.natsserver import NatsServer, start_nats_server
from bus.runtime import RuntimeConfig, Worker
from bus.state import BucketMirror
from bus.subjects import Subjects
from bus.trust_client import TrustClient
from schemas.errors import AgenticPaymentsError
from schemas.identity import AgentIdentity
from schemas.messages import MetricsSnapshot
from tests.helpers import free_ports

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
IDENTITY = AgentIdentity.from_seed(bytes(range(32)))
TIMEOUT = 0.5
NOT_CONNECTED = "NOT_CONNECTED"
NO_RESPONDERS = "NO_RESPONDERS"


@dataclass
class Bus:
    """What an entry point is called with: a connection, its subjects, a server URL."""

    nc: Client
    subjects: Subjects
    url: str
    data_dir: Path

    @property
    def prefix(self) -> str:
        return self.subjects.prefix


class StateWorker(Worker):
    """A worker whose setup opens the verdict state bucket (needs JetStream)."""

    kind = "probe"

    async def setup(self) -> None:
        await state.state_bucket(self.client, self.subjects)


def _decode_any(_key: str, value: bytes) -> bytes:
    return value


def _ignore(_request_id: str, _exc: BaseException, _stored: bool) -> None:
    return None


async def _worker_start(bus: Bus) -> None:
    worker = StateWorker(
        RuntimeConfig(
            worker_id="w1",
            nats=NatsConfig(url=bus.url, prefix=bus.prefix),
            data_dir=bus.data_dir,
        )
    )
    try:
        await worker.start()
    finally:
        await worker.stop()


async def _worker_subscribe(bus: Bus) -> None:
    worker = StateWorker(RuntimeConfig(worker_id="w1", data_dir=bus.data_dir))
    worker.nc = bus.nc

    async def cb(_msg: Any) -> None:
        return None

    await worker.subscribe(bus.subjects.request, cb)


async def _verify(bus: Bus) -> None:
    client = VerifyClient(bus.nc, prefix=bus.prefix, timeout=TIMEOUT, retries=0)
    await client.verify_with_consensus(signed_request(AgentIdentity.generate(), b"hi"))


#: (name, call, code on a closed connection, code on a server without JetStream)
EntryPoint = tuple[str, Callable[[Bus], Awaitable[object]], str, str]
ENTRY_POINTS: list[EntryPoint] = [
    (
        "membership.members_bucket",
        lambda b: membership.members_bucket(b.nc, b.subjects),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.register",
        lambda b: membership.register(b.nc, b.subjects, "v1", IDENTITY),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.admit",
        lambda b: membership.admit(b.nc, b.subjects, "v1", KEY),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.remove",
        lambda b: membership.remove(b.nc, b.subjects, "v1"),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.quarantine",
        lambda b: membership.quarantine(b.nc, b.subjects, "v1", KEY),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.read_pool",
        lambda b: membership.read_pool(b.nc, b.subjects),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.pool_at",
        lambda b: membership.pool_at(b.nc, b.subjects, 1),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "membership.superseded_at",
        lambda b: membership.superseded_at(b.nc, b.subjects, 1),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "PoolWatcher.start",
        lambda b: PoolWatcher(b.nc, b.subjects).start(TIMEOUT),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "state.ensure_bucket",
        lambda b: state.ensure_bucket(b.nc, f"{b.prefix}_probe"),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "state.state_bucket",
        lambda b: state.state_bucket(b.nc, b.subjects),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "BucketMirror.start",
        lambda b: BucketMirror(b.nc, b.subjects.state_bucket, _decode_any).start(TIMEOUT),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "decisions.ensure_audit_stream",
        lambda b: ensure_audit_stream(b.nc, b.subjects, 1.0),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "DecisionStore.start",
        lambda b: DecisionStore(b.nc, b.subjects, _ignore).start(),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "streams.ensure_stream",
        lambda b: streams.ensure_stream(
            b.nc, f"{b.prefix}_probe", [f"{b.prefix}.probe.>"], max_age_s=60, description=""
        ),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "streams.ensure_telemetry_streams",
        lambda b: streams.ensure_telemetry_streams(b.nc, b.subjects),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    (
        "call.send_request",
        lambda b: send_request(b.nc, b.subjects.request, b"", timeout=TIMEOUT, service="tally"),
        NOT_CONNECTED,
        NO_RESPONDERS,
    ),
    (
        "call.call",
        lambda b: call(
            b.nc,
            b.subjects.status("probe", "w1"),
            b"",
            MetricsSnapshot,
            timeout=TIMEOUT,
            service="status",
        ),
        NOT_CONNECTED,
        NO_RESPONDERS,
    ),
    (
        "KeyClient.get",
        lambda b: KeyClient(b.nc, b.prefix, timeout=TIMEOUT).get("k"),
        NOT_CONNECTED,
        NO_RESPONDERS,
    ),
    (
        "TrustClient.list",
        lambda b: TrustClient(b.nc, b.prefix, timeout=TIMEOUT).list(),
        NOT_CONNECTED,
        NO_RESPONDERS,
    ),
    (
        "AuthorityClient.list",
        lambda b: AuthorityClient(b.nc, b.prefix, timeout=TIMEOUT).list(),
        NOT_CONNECTED,
        NO_RESPONDERS,
    ),
    ("VerifyClient.verify_with_consensus", _verify, NOT_CONNECTED, NO_RESPONDERS),
    (
        "VerifyClient.pool_keys",
        lambda b: VerifyClient(b.nc, prefix=b.prefix).pool_keys(1),
        NOT_CONNECTED,
        NOT_CONNECTED,
    ),
    ("Worker.subscribe", _worker_subscribe, NOT_CONNECTED, "-"),
    # closed: the worker's URL has no server behind it; no JetStream: its setup needs it
    ("Worker.start", _worker_start, NOT_CONNECTED, NOT_CONNECTED),
]


async def _expect_project_error(
    name: str, factory: Callable[[Bus], Awaitable[object]], bus: Bus, code: str
) -> None:
    try:
        await factory(bus)
    except AgenticPaymentsError as exc:
        assert exc.code == code, f"{name}: [{exc.code}] {exc}"
    except Exception as exc:  # the failure this test exists for: a foreign class escaped
        pytest.fail(f"{name} let {type(exc).__module__}.{type(exc).__qualname__} escape: {exc!r}")
    else:
        pytest.fail(f"{name} did not fail")


# -------------------------------------------------------------- a closed connection
@pytest.fixture
async def closed(nats_config: NatsConfig, tmp_path: Path) -> AsyncIterator[Bus]:
    client = await connect(nats_config, name="bus-errors-closed")
    await client.close()
    (port,) = free_ports(1)  # nothing listens there: what Worker.start connects to
    yield Bus(client, Subjects(nats_config.prefix), f"nats://127.0.0.1:{port}", tmp_path)


@pytest.mark.parametrize(
    ("name", "factory", "code"),
    [(n, f, c) for n, f, c, _ in ENTRY_POINTS],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_closed_connection_raises_project_errors(
    closed: Bus, name: str, factory: Callable[[Bus], Awaitable[object]], code: str
) -> None:
    await _expect_project_error(name, factory, closed, code)


# -------------------------------------------------------------- a server without JetStream
@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path_factory.mktemp("plain"), jetstream=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def no_jetstream(plain_server: NatsServer, prefix: str, tmp_path: Path) -> AsyncIterator[Bus]:
    client = await connect(NatsConfig(url=plain_server.url, prefix=prefix), name="bus-errors-plain")
    try:
        yield Bus(client, Subjects(prefix), plain_server.url, tmp_path)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("name", "factory", "code"),
    [(n, f, c) for n, f, _, c in ENTRY_POINTS if c != "-"],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_no_jetstream_raises_project_errors(
    no_jetstream: Bus, name: str, factory: Callable[[Bus], Awaitable[object]], code: str
) -> None:
    await _expect_project_error(name, factory, no_jetstream, code)


async def test_no_jetstream_says_so(no_jetstream: Bus) -> None:
    """The message names the cause, so `up` and the worker log tell the operator what to do."""
    with pytest.raises(AgenticPaymentsError, match="JetStream is not available"):
        await membership.read_pool(no_jetstream.nc, no_jetstream.subjects)


# -------------------------------------------------------------- started, then the connection closes
async def _store_get_many(store: DecisionStore, _kv: KeyValue[MemberRecord]) -> object:
    return await store.get_many(["r1"])


async def _kv_get(_store: DecisionStore, kv: KeyValue[MemberRecord]) -> object:
    return await kv.get("v1")


async def _kv_keys(_store: DecisionStore, kv: KeyValue[MemberRecord]) -> object:
    return await kv.keys()


async def _kv_create(_store: DecisionStore, kv: KeyValue[MemberRecord]) -> object:
    return await kv.create("v1", MemberRecord("v1", KEY))


async def _kv_delete(_store: DecisionStore, kv: KeyValue[MemberRecord]) -> object:
    return await kv.delete("v1")


async def _kv_last_revision(_store: DecisionStore, kv: KeyValue[MemberRecord]) -> object:
    return await kv.last_revision()


AFTER_START: list[
    tuple[str, Callable[[DecisionStore, KeyValue[MemberRecord]], Awaitable[object]]]
] = [
    ("DecisionStore.get_many", _store_get_many),
    ("KeyValue.get", _kv_get),
    ("KeyValue.keys", _kv_keys),
    ("KeyValue.create", _kv_create),
    ("KeyValue.delete", _kv_delete),
    ("KeyValue.last_revision", _kv_last_revision),
]


@pytest.fixture
async def started(
    nats_config: NatsConfig,
) -> AsyncIterator[tuple[Client, DecisionStore, KeyValue[MemberRecord]]]:
    """A decision store and a KV handle opened on a working connection, which is then closed."""
    subjects = Subjects(nats_config.prefix)
    client = await connect(nats_config, name="bus-errors-started")
    errors: list[BaseException] = []
    store = DecisionStore(client, subjects, lambda _rid, exc, _stored: errors.append(exc))
    await store.start()
    kv = KeyValue.of(await membership.members_bucket(client, subjects), MemberRecord)
    await kv.create("v1", MemberRecord("v1", KEY))
    await client.close()
    yield client, store, kv
    await store.stop()


@pytest.mark.parametrize(("name", "action"), AFTER_START, ids=[n for n, _ in AFTER_START])
async def test_after_the_connection_closes(
    started: tuple[Client, DecisionStore, KeyValue[MemberRecord]],
    name: str,
    action: Callable[[DecisionStore, KeyValue[MemberRecord]], Awaitable[object]],
) -> None:
    _, store, kv = started
    try:
        await action(store, kv)
    except AgenticPaymentsError as exc:
        assert exc.code == NOT_CONNECTED, f"{name}: [{exc.code}] {exc}"
    except Exception as exc:
        pytest.fail(f"{name} let {type(exc).__module__}.{type(exc).__qualname__} escape: {exc!r}")
    else:
        pytest.fail(f"{name} did not fail")


async def test_store_reports_project_errors(nats_config: NatsConfig) -> None:
    """``DecisionStore.store`` hands its failures to ``on_error``: project errors too."""
    subjects = Subjects(nats_config.prefix)
    client = await connect(nats_config, name="bus-errors-store")
    errors: list[BaseException] = []
    store = DecisionStore(client, subjects, lambda _rid, exc, _stored: errors.append(exc))
    await store.start()
    await client.close()
    await store.store("r1", b"certificate")
    await store.stop()
    assert len(errors) == 1
    assert isinstance(errors[0], AgenticPaymentsError), repr(errors[0])
    assert errors[0].code == NOT_CONNECTED
