"""Beyond one machine: a 3-node NATS cluster on loopback, JetStream replicas 3.

Three nats-server processes with cluster routes; the workers (a tally and
four verifiers, real processes) and the client get all three URLs and
AP_JS_REPLICAS=3, so the membership and decisions buckets and the audit
stream are replicated on every node. While the client streams requests at a
steady rate, the server leading the decisions bucket is killed with SIGKILL.
Every request must still end with a VALID certificate that verifies (the
client re-checks each one against the pool), none may be decided INVALID,
and asking again afterwards must return the very same certificate (the
decision was not lost with the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import connect
from bus.natsserver import NatsServer, start_nats_server
from bus.subjects import Subjects
from schemas.errors import AgenticPaymentsError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, VerificationRequest
from tests.helpers import Cluster, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 2000
RATE_PER_S = 160.0
KILL_AFTER_S = 4.0


def cluster_conf(
    name: str, client_port: int, route_port: int, routes: list[int], store: Path, http_port: int
) -> str:
    route_urls = "\n".join(f"    nats-route://127.0.0.1:{p}" for p in routes)
    return (
        f"server_name: {name}\nlisten: 127.0.0.1:{client_port}\n"
        f"http: 127.0.0.1:{http_port}\n"
        f'jetstream {{ store_dir: "{store}" }}\n'
        f"cluster {{\n  name: ap-test\n  listen: 127.0.0.1:{route_port}\n"
        f"  routes: [\n{route_urls}\n  ]\n}}\n"
    )


@dataclass
class Node:
    server: NatsServer
    http_port: int


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    ports = free_ports(9)
    client_ports, route_ports, http_ports = ports[:3], ports[3:6], ports[6:]
    servers: dict[str, Node] = {}
    try:
        for i in range(3):
            name = f"n{i + 1}"
            d = tmp_path / name
            d.mkdir()
            conf = d / "server.conf"
            conf.write_text(
                cluster_conf(
                    name, client_ports[i], route_ports[i], route_ports, d / "js", http_ports[i]
                )
            )
            servers[name] = Node(
                start_nats_server(
                    d,
                    port=client_ports[i],
                    jetstream=False,
                    extra_args=["-c", str(conf), "-n", name],
                    timeout=30,
                ),
                http_ports[i],
            )
        yield servers
    finally:
        for node in servers.values():
            node.server.stop()


async def wait_jetstream(config: NatsConfig, timeout: float = 40.0) -> None:
    """Until the cluster has a JetStream meta leader (account info answers)."""
    nc = await connect(config, name="test-wait-js")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError("JetStream cluster never became ready") from None
                await asyncio.sleep(0.25)
    finally:
        await nc.close()


async def stream_leader(config: NatsConfig, stream: str) -> tuple[str, int]:
    nc = await connect(config, name="test-leader")
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        return str(info.cluster.leader), len(info.cluster.replicas or []) + 1
    finally:
        await nc.close()


def connection_names(node: Node) -> set[str]:
    """Names of the client connections a server holds (its /connz monitoring page)."""
    url = f"http://127.0.0.1:{node.http_port}/connz?limit=1024"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    return {str(c.get("name", "")) for c in data.get("connections") or []}


async def decide(
    client: VerifyClient,
    req: VerificationRequest,
    attempts: int = 8,
    extra: list[str] | None = None,
) -> ConsensusResult | AgenticPaymentsError:
    """Ask until a final decision: a TIMEOUT is not final, so ask again (same id).
    ``extra`` collects why a first answer was not final (for the summary)."""
    last: ConsensusResult | AgenticPaymentsError = AgenticPaymentsError("never asked")
    for _ in range(attempts):
        try:
            last = await client.verify_with_consensus(req)
        except AgenticPaymentsError as exc:
            last = exc
            if extra is not None:
                extra.append(exc.code)
            await asyncio.sleep(0.5)
            continue
        if last.decision != "TIMEOUT":
            return last
        if extra is not None:
            extra.append("TIMEOUT")
    return last


async def test_kill_one_of_three_servers_under_load(
    nats_cluster: dict[str, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = ",".join(n.server.url for n in nats_cluster.values())
    prefix = f"c{uuid.uuid4().hex[:10]}"
    config = NatsConfig(url=urls, prefix=prefix)
    await wait_jetstream(config)
    monkeypatch.setenv("AP_JS_REPLICAS", "3")
    workers = Cluster(nats_url=urls, prefix=prefix, data_dir=tmp_path)
    try:
        await workers.start_system(4)
        subjects = Subjects(prefix)
        for stream in (
            f"KV_{subjects.members_bucket}",
            f"KV_{subjects.decisions_bucket}",
            subjects.audit_stream,
        ):
            _, replicas = await stream_leader(config, stream)
            assert replicas == 3, stream
        leader, _ = await stream_leader(config, f"KV_{subjects.decisions_bucket}")
        # the victim: the server the tally is connected to (its in-flight requests
        # and ballots die with it), else the decisions bucket's leader
        held = {
            n: await asyncio.to_thread(connection_names, srv) for n, srv in nats_cluster.items()
        }
        victim_name = next((n for n, names in held.items() if "tally-t1" in names), leader)
        victim = nats_cluster[victim_name].server
        on_victim = sorted(held[victim_name])

        agent = AgentIdentity.generate()
        requests = [signed_request(agent, f"pay {i}") for i in range(REQUESTS)]
        results: list[ConsensusResult | AgenticPaymentsError | None] = [None] * REQUESTS
        client = await VerifyClient.connect(config, timeout=5, retries=4)
        killed_at: float | None = None
        try:
            reasks: list[str] = []
            latency: list[float] = []

            async def one(i: int) -> None:
                t0 = time.monotonic()
                results[i] = await decide(client, requests[i], extra=reasks)
                latency.append(time.monotonic() - t0)

            started = time.monotonic()
            tasks = []
            for i in range(REQUESTS):
                due = started + i / RATE_PER_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))  # time is the subject: rate
                if killed_at is None and time.monotonic() - started >= KILL_AFTER_S:
                    os.killpg(victim.process.pid, signal.SIGKILL)
                    killed_at = time.monotonic() - started
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            assert killed_at is not None
            assert victim.process.wait(5) == -signal.SIGKILL
            latency.sort()
            print(
                f"\nkilled {victim_name} (decisions leader {leader}, holding {on_victim}) "
                f"at {killed_at:.1f}s; {REQUESTS} requests in "
                f"{time.monotonic() - started:.1f}s; re-asked {len(reasks)} times "
                f"({sorted(set(reasks))}); latency median {latency[len(latency) // 2]:.3f}s "
                f"p99 {latency[int(len(latency) * 0.99)]:.3f}s max {latency[-1]:.3f}s"
            )
            failed = [
                (i, r)
                for i, r in enumerate(results)
                if not isinstance(r, ConsensusResult) or r.decision != "VALID"
            ]
            assert not failed, f"{len(failed)} not VALID, e.g. {failed[:5]}"
            # the decisions survived the server: a repeat gets the same certificate
            sample = list(range(0, REQUESTS, 7))
            again = await asyncio.gather(*(decide(client, requests[i]) for i in sample))
            for i, cert in zip(sample, again, strict=True):
                first = results[i]
                assert isinstance(cert, ConsensusResult) and isinstance(first, ConsensusResult)
                assert (cert.decision, cert.ballot_id, cert.epoch) == (
                    first.decision,
                    first.ballot_id,
                    first.epoch,
                ), i
        finally:
            await client.close()
        # every worker survived the server loss (reconnected, still running)
        for name, proc in workers.processes.items():
            assert proc.poll() is None, f"{name} died:\n{workers.log(name)}"
        new_leader, _ = await stream_leader(config, f"KV_{subjects.decisions_bucket}")
        assert new_leader != victim_name
    finally:
        with contextlib.suppress(Exception):
            workers.stop_all()
