"""The whole verdict under consensus with real processes: verifiers consult the trust
and authority services' state (chains to an anchor, category quorum policies) and the
CLI sends requests carrying a chain, a category and endorsements."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from bus.authority_client import AuthorityClient
from bus.client import VerifyClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.runtime import now_ms
from bus.trust_client import TrustClient
from schemas.authority import AuthorityRecord, QuorumPolicy, sign_endorsement
from schemas.errors import NoResponders
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest
from schemas.trust import PURPOSE_CA, PURPOSE_PAYMENT, issue
from tests.helpers import ROOT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DAY = 86_400_000


async def test_chain_and_policy_are_under_consensus(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_system(4)
    cluster._spawn("trust", ["-m", "workers.cli", "worker", "trust", "--id", "trust1"])
    cluster._spawn("authority", ["-m", "workers.cli", "worker", "authority", "--id", "auth1"])
    config = NatsConfig(url=cluster.nats_url, prefix=cluster.prefix)
    root, ca = AgentIdentity.generate(), AgentIdentity.generate()
    agent_file = tmp_path / "agent.key"
    agent = AgentIdentity.load_or_create(agent_file)
    bank, auditor = AgentIdentity.generate(), AgentIdentity.generate()
    now = now_ms()
    ca_cert = issue(
        root,
        serial="ca-e2e",
        subject_key=ca.public_key,
        not_before_ms=now - DAY,
        not_after_ms=now + DAY,
        purposes=(PURPOSE_CA, PURPOSE_PAYMENT),
        path_len=0,
    )
    leaf = issue(
        ca,
        serial="leaf-e2e",
        subject_key=agent.public_key,
        not_before_ms=now - DAY,
        not_after_ms=now + DAY,
        purposes=(PURPOSE_PAYMENT,),
    )
    nc = await connect(config, name="test-setup")
    try:
        trust = TrustClient(nc, cluster.prefix, timeout=20)
        for _ in range(300):  # the trust worker process may still be starting
            try:
                await trust.list()
                break
            except NoResponders:
                await asyncio.sleep(0.1)
        await trust.add_anchor(root.public_key, "root")
        await trust.add_cert(ca_cert)
        authority = AuthorityClient(nc, cluster.prefix, timeout=20)
        await authority.change("add", AuthorityRecord(bank.public_key, "bank", "High", True))
        await authority.change(
            "add", AuthorityRecord(auditor.public_key, "auditor", "Medium", True)
        )
        await authority.set_policy(QuorumPolicy("policy-admin", 1, "High", Fraction(1)))
        default = QuorumPolicy("default", 2, "Medium", Fraction(1, 2))
        admin = sign_endorsement(bank, "policy-admin", hashlib.sha256(default.encode()).digest())
        await authority.set_policy(default, (admin,))
    finally:
        await nc.close()

    message = b"pay 42 EUR to merchant-9"
    digest = hashlib.sha256(message).digest()
    endorsements = tuple(
        (e.authority_key, e.signature)
        for e in (
            sign_endorsement(bank, "travel", digest),
            sign_endorsement(auditor, "travel", digest),
        )
    )

    def req(rid: str, **kw: object) -> VerificationRequest:
        return VerificationRequest(
            request_id=rid,
            message=message,
            signature=agent.sign(message),
            public_key=agent.public_key,
            **kw,
        )  # type: ignore[arg-type]

    cases = {
        "chain-ok": (req("c1", chain=(leaf.encode(),)), "VALID", "OK"),
        "chain-missing-ca": (
            req(
                "c2",
                chain=(
                    issue(
                        AgentIdentity.generate(),
                        serial="stray",
                        subject_key=agent.public_key,
                        not_before_ms=now - DAY,
                        not_after_ms=now + DAY,
                        purposes=(PURPOSE_PAYMENT,),
                    ).encode(),
                ),
            ),
            "INVALID",
            "CHAIN_NO_ANCHOR:1",
        ),
        "policy-met": (req("p1", category="travel", endorsements=endorsements), "VALID", "OK"),
        "policy-one-short": (
            req("p2", category="travel", endorsements=endorsements[:1]),
            "INVALID",
            "POLICY_NOT_MET",
        ),
        "both": (
            req("b1", chain=(leaf.encode(),), category="travel", endorsements=endorsements),
            "VALID",
            "OK",
        ),
    }
    async with await VerifyClient.connect(config, timeout=15) as client:
        for name, (request, decision, reason) in cases.items():
            cert = await client.verify_with_consensus(request)
            assert (cert.decision, {v.reason for v in cert.votes}) == (decision, {reason}), name

    # the same through the CLI: verify --chain-file --category --endorsement
    leaf_file = tmp_path / "leaf.cert"
    leaf_file.write_bytes(leaf.encode())
    args = [
        sys.executable,
        "-m",
        "workers.cli",
        "verify",
        "--key",
        str(agent_file),
        "--message",
        message.decode(),
        "--chain-file",
        str(leaf_file),
        "--category",
        "travel",
        "--json",
        "--timeout",
        "15",
    ]
    for key, sig in endorsements:
        args += ["--endorsement", f"{key.hex()}:{sig.hex()}"]
    run = await asyncio.to_thread(
        subprocess.run,
        args,
        env=cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["decision"] == "VALID"
    short = await asyncio.to_thread(
        subprocess.run,
        args[:-2],
        env=cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 1
    assert json.loads(short.stdout)["decision"] == "INVALID"
