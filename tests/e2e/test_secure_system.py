"""The whole system under the per-role permissions: not too tight.

A tally and four verifiers run as real processes, each with its own nkey
user; a client with its own user submits requests and checks certificates
against the pool it reads from the membership bucket. Every request must be
decided VALID (or INVALID for a bad signature), the operator must discover
every worker through $SRV.PING, and no worker may have hit a permissions
violation (a missing allow rule shows up there first).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.client import VerifyClient, signed_request
from bus.connection import connect
from schemas.identity import AgentIdentity
from tests.secure import SecureCluster, SecureServer, start_secure_server
from workers.cli.operator import discover

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["nkey", "jwt"])
def secure_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SecureCluster]:
    """Workers with nkey users in the server config, or with NATS_CREDS (operator mode)."""
    prefix = f"s{uuid.uuid4().hex[:10]}"
    server: SecureServer = start_secure_server(tmp_path / "nats", prefix, auth=request.param)
    c = SecureCluster(nats_url=server.url, prefix=prefix, data_dir=tmp_path, secure=server)
    try:
        yield c
    finally:
        c.stop_all()
        server.server.stop()


@pytest.mark.timeout(120)  # a secure cluster per parameter; 32 s under load
async def test_system_decides_under_role_permissions(secure_cluster: SecureCluster) -> None:
    c = secure_cluster
    assert c.secure is not None
    pool = await c.start_system(4)
    assert len(pool.keys) == 4
    agent = AgentIdentity.generate()
    async with await VerifyClient.connect(c.secure.config("alice"), timeout=15) as client:
        good = [signed_request(agent, f"pay {i}") for i in range(20)]
        results = await client.verify_many(good)
        assert [getattr(r, "decision", r) for r in results] == ["VALID"] * 20
        bad = signed_request(agent, "pay 1")
        forged = type(bad)(
            request_id=bad.request_id,
            message=b"pay 1000000",
            signature=bad.signature,
            public_key=bad.public_key,
        )
        result = await client.verify_with_consensus(forged)
        assert result.decision == "INVALID"
        # a retry with the same id is answered from the decisions bucket
        again = await client.verify_with_consensus(good[0])
        assert again.decision == "VALID" and again.ballot_id == results[0].ballot_id  # type: ignore[union-attr]
    admin = await connect(c.admin(), name="test-admin")
    try:
        found = await discover(admin, c.prefix, wait=1.0)
    finally:
        await admin.close()
    kinds = sorted(str(f.get("metadata", {}).get("kind")) for f in found)
    assert kinds == ["tally"] + ["verifier"] * 4, found
    for name in c.processes:
        log = c.log(name).lower()
        assert "permissions violation" not in log, f"{name}:\n{c.log(name)}"
