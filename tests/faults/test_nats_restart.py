"""Fault: the single nats-server goes down (kill -9) and comes back on the same port
with the same file-backed JetStream store, while clients keep sending requests."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.natsserver import NatsServer, start_nats_server
from tests.faults.load import Load, report
from tests.helpers import Cluster, free_ports

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.mark.timeout(120)
async def test_nats_server_restart_under_load(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    store = tmp_path / "js"
    server: NatsServer = start_nats_server(store, port=port)
    (tmp_path / "workers").mkdir()
    cluster = Cluster(server.url, f"t{uuid.uuid4().hex[:12]}", tmp_path / "workers")
    config = NatsConfig(url=server.url, prefix=cluster.prefix)
    try:
        await cluster.start_system(4)
        client = await VerifyClient.connect(config, timeout=4.0, retries=0)
        async with client, Load(client, "restart") as load:
            await load.wait_decided(20, timeout=30)
            killed = time.monotonic()
            server.process.kill()
            server.process.wait(5)
            server = start_nats_server(store, port=port)
            restarted = time.monotonic()
            # after the restart: a reply read from the socket after the kill is not one
            first = await load.first_decision_after(restarted, timeout=40)
            # deciding has resumed, not just one late answer: 40 requests sent after it
            await load.wait_decided(40, sent_after=first, timeout=40)
            await load.stop(drain_s=30)
            nc = await connect(config, name="fault-audit")
            try:
                result = await load.audit(nc, cluster.prefix)
            finally:
                await nc.close()
        report(
            "nats_restart",
            outage_ms=round((first - killed) * 1000),
            server_down_ms=round((restarted - killed) * 1000),
            **result,
        )
        for name, proc in cluster.processes.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{cluster.log(name)}"
        assert result["lost"] == 0, result
        assert result["wrong"] == 0, result
    finally:
        cluster.stop_all()
        server.stop()
