"""The sample cluster config authenticates routes: a rogue server cannot join.

Messages that arrive over a route are not checked against user permissions, so
an open route port would bypass the whole per-role model. deploy/nats/cluster.conf
requires mutual TLS with the cluster CA on routes; here two nodes built from its
``cluster`` block route to each other, and a server without a certificate is
refused (its publishes never reach a subscriber on the cluster).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.aio.msg
import pytest

from bus.connection import barrier
from bus.natsserver import NatsServer, start_nats_server
from tests.helpers import ROOT, free_ports
from tests.integration.test_client_config import _openssl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI"),
]


def route_pki(d: Path) -> None:
    """certs/ca.pem and a route certificate for both ends of a route."""
    certs = d / "certs"
    certs.mkdir(parents=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(certs / "ca-key.pem"),
        "-out",
        str(certs / "ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=cluster CA",
    )
    ext = certs / "route.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:nats-1,DNS:nats-2,"
        "DNS:nats-3\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(certs / "route-key.pem"),
        "-out",
        str(certs / "route.csr"),
        "-subj",
        "/CN=route",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(certs / "route.csr"),
        "-CA",
        str(certs / "ca.pem"),
        "-CAkey",
        str(certs / "ca-key.pem"),
        "-CAcreateserial",
        "-out",
        str(certs / "route.pem"),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )


def node_conf(name: str, client: int, route: int, routes: list[int], certs: Path) -> str:
    """deploy/nats/cluster.conf's cluster block (TLS included) on loopback ports."""
    text = (ROOT / "deploy/nats/cluster.conf").read_text()
    block = text[text.index("cluster {") : text.index("include ./auth.conf")]
    block = block.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route}")
    urls = "\n".join(f"    nats-route://127.0.0.1:{p}" for p in routes)
    block = re.sub(r"routes: \[.*?\]", f"routes: [\n{urls}\n  ]", block, flags=re.S)
    assert "verify: true" in block
    block = block.replace('"./certs/', f'"{certs}/')
    return f"server_name: {name}\nlisten: 127.0.0.1:{client}\n{block}"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NatsServer]]:
    route_pki(tmp_path)
    c1, c2, c3, r1, r2, r3 = free_ports(6)
    servers: list[NatsServer] = []
    try:
        for name, client, route in (("a", c1, r1), ("b", c2, r2)):
            conf = tmp_path / f"{name}.conf"
            conf.write_text(node_conf(name, client, route, [r1, r2], tmp_path / "certs"))
            servers.append(
                start_nats_server(
                    tmp_path / name,
                    port=client,
                    jetstream=False,
                    extra_args=["-c", str(conf), "-n", name],
                )
            )
        rogue = start_nats_server(
            tmp_path / "rogue",
            port=c3,
            jetstream=False,
            extra_args=[
                "-n",
                "rogue",
                "--cluster_name",
                "agentic-payments",
                "--cluster",
                f"nats://127.0.0.1:{r3}",
                "--routes",
                f"nats-route://127.0.0.1:{r1}",
            ],
        )
        servers.append(rogue)
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_rogue_route_is_refused_and_real_nodes_route(nodes: list[NatsServer]) -> None:
    a, b, rogue = nodes
    on_a = await nats.connect(a.url)
    on_b = await nats.connect(b.url)
    on_rogue = await nats.connect(rogue.url)
    try:
        got: list[bytes] = []

        async def collect(msg: nats.aio.msg.Msg) -> None:
            got.append(msg.data)

        sub = await on_a.subscribe("ap.ballot", cb=collect)
        await barrier(on_a)
        for _ in range(100):  # b's route to a carries the publish: the cluster works
            await on_b.publish("ap.ballot", b"from b")
            await barrier(on_b)
            await asyncio.sleep(0.05)
            if b"from b" in got:
                break
        assert b"from b" in got
        for _ in range(20):
            await on_rogue.publish("ap.ballot", b"from rogue")
            await barrier(on_rogue)
            await asyncio.sleep(0.05)  # time is the subject: the rogue's publishes never arrive
        assert b"from rogue" not in got
        await sub.unsubscribe()
    finally:
        for nc in (on_a, on_b, on_rogue):
            await nc.close()
