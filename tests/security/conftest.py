"""Attack tests: a real nats-server with the per-role configuration that
``agentic-payments nats-config`` renders (bus/permissions.py), real worker
processes each connected as its own user, and the adversary connected as *its*
role's user (``attacker(name)``).

Every test in this folder is an attack that succeeded against the code before
its fix (the PR note records that), and asserts the defence that now stops it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from bus.connection import connect
from tests.secure import SECURITY_USERS, SecureCluster, SecureServer, start_secure_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/security/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.security)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def secure_server(tmp_path: Path) -> Iterator[SecureServer]:
    """nats-server with JetStream and an nkey user per entry of SECURITY_USERS."""
    prefix = f"x{uuid.uuid4().hex[:10]}"
    server = start_secure_server(tmp_path / "nats", prefix, SECURITY_USERS)
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture
def other_deployment(tmp_path: Path) -> Iterator[SecureCluster]:
    """A second deployment beside ``secure_server``/``secure_cluster``: its own
    nats-server, prefix and user credentials, workers with their data under
    ``tmp_path / "other"`` (copy identity files there to share keys)."""
    prefix = f"y{uuid.uuid4().hex[:10]}"
    server = start_secure_server(tmp_path / "other-nats", prefix, SECURITY_USERS)
    (tmp_path / "other").mkdir()
    c = SecureCluster(
        nats_url=server.url, prefix=prefix, data_dir=tmp_path / "other", secure=server
    )
    try:
        yield c
    finally:
        c.stop_all()
        server.server.stop()


@pytest.fixture
def secure_cluster(tmp_path: Path, secure_server: SecureServer) -> Iterator[SecureCluster]:
    """Worker processes under ``secure_server``, each as its own user
    (``start_verifier("v1")`` connects as user v1, ``start_tally("t1")`` as t1)."""
    c = SecureCluster(
        nats_url=secure_server.url,
        prefix=secure_server.prefix,
        data_dir=tmp_path,
        secure=secure_server,
    )
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
async def attacker(secure_server: SecureServer) -> AsyncIterator[object]:
    """``await attacker("alice")``: a connection authenticated as that user (its role's
    grants only, its own inbox prefix). Closed at the end of the test."""
    opened: list[Client] = []

    async def open_as(name: str) -> Client:
        nc = await connect(secure_server.config(name), name=f"attacker-{name}")
        opened.append(nc)
        return nc

    yield open_as
    for nc in opened:
        if not nc.is_closed:
            await nc.close()
