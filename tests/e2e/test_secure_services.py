"""Every worker kind under its role's NATS permissions (not too tight, not silent).

Tally, 4 verifiers and the key manager, trust, authority, anomaly and recovery
workers run as real processes, each with its own nkey user. An operator (admin
user) creates and uses a managed key, adds a trust anchor and an authority; a
client gets decisions for requests signed through the key manager. No process
may hit a permissions violation, and every worker answers $SRV.PING.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.authority_client import AuthorityClient
from bus.client import VerifyClient
from bus.connection import connect
from bus.key_client import KeyClient
from bus.trust_client import TrustClient
from schemas.authority import AuthorityRecord
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from tests.secure import USERS, SecureCluster, SecureServer, start_secure_server
from workers.cli.operator import discover

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = [
    ("keys", "keys1"),
    ("trust", "trust1"),
    ("authority", "authority1"),
    ("anomaly", "anomaly1"),
    ("recovery", "recovery1"),
]


@pytest.fixture
def secure_cluster(tmp_path: Path) -> Iterator[SecureCluster]:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    specs = USERS + [f"{kind}:{wid}" for kind, wid in SERVICES]
    server: SecureServer = start_secure_server(tmp_path / "nats", prefix, specs)
    c = SecureCluster(nats_url=server.url, prefix=prefix, data_dir=tmp_path, secure=server)
    try:
        yield c
    finally:
        c.stop_all()
        server.server.stop()


@pytest.mark.timeout(120)  # every service kind under its role; 31 s under load
async def test_every_service_works_under_its_role(secure_cluster: SecureCluster) -> None:
    c = secure_cluster
    assert c.secure is not None
    await c.start_system(4)
    for kind, wid in SERVICES:
        c._spawn(
            f"{kind}-{wid}",
            ["-m", "workers.cli", "worker", kind, "--id", wid, "--heartbeat-s", "1"],
        )
    admin = await connect(c.admin(), name="test-operator")
    try:
        keys = KeyClient(admin, c.prefix, timeout=30)
        await keys.create("agent-s", "agent_identity")
        signed = [await keys.sign("agent-s", f"pay {i}".encode()) for i in range(3)]
        trust = TrustClient(admin, c.prefix, timeout=30)
        for _ in range(300):
            try:
                await trust.add_anchor(AgentIdentity.generate().public_key, "root")
                break
            except Exception:
                await asyncio.sleep(0.1)
        authority = AuthorityClient(admin, c.prefix, timeout=30)
        await authority.change(
            "add", AuthorityRecord(AgentIdentity.generate().public_key, "bank", "High", True)
        )
        async with await VerifyClient.connect(c.secure.config("alice"), timeout=15) as client:
            for i, s in enumerate(signed):
                cert = await client.verify_with_consensus(
                    VerificationRequest(
                        request_id=f"s-{i}",
                        message=f"pay {i}".encode(),
                        signature=s.signature,
                        public_key=s.public_key,
                    )
                )
                assert cert.decision == "VALID"
            await keys.revoke("agent-s", "test")
            cert = await client.verify_with_consensus(
                VerificationRequest(
                    request_id="s-after",
                    message=b"pay 0",
                    signature=signed[0].signature,
                    public_key=signed[0].public_key,
                )
            )
            assert cert.decision == "INVALID"
        await asyncio.sleep(3)  # heartbeats, metrics, stream consumers, sweeps run a while
        found = await discover(admin, c.prefix, wait=1.5)
    finally:
        await admin.close()
    kinds = sorted(str(f.get("metadata", {}).get("kind")) for f in found)
    assert kinds == sorted(["tally", *["verifier"] * 4, *[k for k, _ in SERVICES]]), kinds
    for name, proc in c.processes.items():
        assert proc.poll() is None, f"{name} exited:\n{c.log(name)}"
        assert "permissions violation" not in c.log(name).lower(), f"{name}:\n{c.log(name)}"
