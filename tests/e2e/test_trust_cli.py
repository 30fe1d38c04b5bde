"""The ``trust`` CLI with --json against a real trust worker process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bus.config import NatsConfig
from bus.connection import connect
from bus.trust_client import TrustClient
from tests.helpers import ROOT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def cli(
    cluster: Cluster, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=env or cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok_json(cluster: Cluster, *args: str, code: int = 0) -> Any:
    proc = cli(cluster, *args, "--json")
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


async def start_trust(cluster: Cluster, worker_id: str = "trust1") -> subprocess.Popen[bytes]:
    proc = cluster._spawn(
        f"trust-{worker_id}",
        ["-m", "workers.cli", "worker", "trust", "--id", worker_id, "--heartbeat-s", "1"],
    )
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="wait")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"trust exited {proc.returncode}:\n{cluster.log(f'trust-{worker_id}')}"
                )
            try:
                await TrustClient(nc, cluster.prefix, timeout=0.5).list()
                return proc
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError("trust worker never answered") from None
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def test_trust_cli_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    keys = {}
    for name in ("root", "inter", "agent"):
        keys[name] = str(tmp_path / f"{name}.key")
        assert cli(cluster, "keygen", "--out", keys[name]).returncode == 0
    proc = await start_trust(cluster)

    added = ok_json(
        cluster, "trust", "add-anchor", "--public-key-file", keys["root"], "--label", "root"
    )
    assert added["changed"] is True and added["key"].startswith("anchor.")
    inter = ok_json(
        cluster,
        "trust",
        "issue",
        "--issuer-key",
        keys["root"],
        "--subject-key-file",
        keys["inter"],
        "--serial",
        "inter",
        "--purpose",
        "ca",
        "--purpose",
        "payment",
        "--path-len",
        "0",
    )
    assert inter["certificate"]["purposes"] == ["ca", "payment"]
    assert inter["stored"]["key"] == "cert.inter"
    cert_file = tmp_path / "agent.cert"
    agent = ok_json(
        cluster,
        "trust",
        "issue",
        "--issuer-key",
        keys["inter"],
        "--subject-key-file",
        keys["agent"],
        "--serial",
        "agent",
        "--out",
        str(cert_file),
    )
    assert cert_file.read_bytes().hex() == agent["hex"]

    valid = ok_json(cluster, "trust", "validate", "--leaf-key-file", keys["agent"])
    assert valid["ok"] is True and [c["serial"] for c in valid["path"]] == ["agent", "inter"]
    assert valid["expires_ms"] == min(c["not_after_ms"] for c in valid["path"])
    human = cli(cluster, "trust", "validate", "--leaf-key-file", keys["agent"])
    assert human.returncode == 0 and human.stdout.startswith("VALID")

    wrong = ok_json(
        cluster,
        "trust",
        "validate",
        "--leaf-key-file",
        keys["agent"],
        "--purpose",
        "verifier",
        code=1,
    )
    assert (wrong["code"], wrong["failed_link"]) == ("CHAIN_PURPOSE", 0)

    assert ok_json(cluster, "trust", "revoke", "inter", "--reason", "test")["changed"] is True
    revoked = ok_json(cluster, "trust", "validate", "--leaf-key-file", keys["agent"], code=1)
    assert (revoked["code"], revoked["failed_link"]) == ("CHAIN_REVOKED", 1)

    listing = ok_json(cluster, "trust", "list")
    assert {c["serial"]: c["revoked"] for c in listing["certs"]} == {"agent": False, "inter": True}
    assert [a["label"] for a in listing["anchors"]] == ["root"]

    again = cli(cluster, "trust", "add-cert", str(cert_file), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    assert (
        ok_json(cluster, "trust", "remove-anchor", "--public-key-file", keys["root"])["changed"]
        is True
    )
    gone = cli(cluster, "trust", "remove-anchor", "--public-key-file", keys["root"])
    assert gone.returncode == 1 and "TRUST_NOT_FOUND" in gone.stderr

    # bad arguments: 78, with the code; the worker keeps serving
    short = cli(cluster, "trust", "validate", "--leaf-key", "abcd")
    assert short.returncode == 78 and "CONFIG_INVALID" in short.stderr
    serial = cli(
        cluster,
        "trust",
        "issue",
        "--issuer-key",
        keys["root"],
        "--subject-key-file",
        keys["agent"],
        "--serial",
        "no/slashes",
    )
    assert serial.returncode == 78, serial.stderr
    nokey = cli(
        cluster,
        "trust",
        "issue",
        "--issuer-key",
        str(tmp_path / "missing.key"),
        "--subject-key-file",
        keys["agent"],
        "--serial",
        "s",
    )
    assert nokey.returncode == 78 and "IDENTITY_ERROR" in nokey.stderr
    assert ok_json(cluster, "trust", "list")["revision"] >= listing["revision"]

    # no trust worker under another prefix: 69
    silent = cli(
        cluster,
        "trust",
        "list",
        "--timeout",
        "1",
        env={**cluster.env(), "AP_PREFIX": cluster.prefix + "x"},
    )
    assert silent.returncode == 69 and "NO_RESPONDERS" in silent.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.mark.parametrize(
    "action", ["add-anchor", "remove-anchor", "issue", "add-cert", "revoke", "validate", "list"]
)
def test_every_trust_action_has_help(cluster: Cluster, action: str) -> None:
    proc = cli(cluster, "trust", action, "--help")
    assert proc.returncode == 0 and "--json" in proc.stdout


def test_worker_trust_help(cluster: Cluster) -> None:
    proc = cli(cluster, "worker", "trust", "--help")
    assert proc.returncode == 0 and "--max-signature-checks" in proc.stdout


async def test_a_killed_instance_leaves_the_others_serving(
    cluster: Cluster, tmp_path: Path
) -> None:
    root, agent = str(tmp_path / "root.key"), str(tmp_path / "agent.key")
    for key in (root, agent):
        assert cli(cluster, "keygen", "--out", key).returncode == 0
    first = await start_trust(cluster, "trust1")
    await start_trust(cluster, "trust2")
    ok_json(cluster, "trust", "add-anchor", "--public-key-file", root)
    stored = ok_json(
        cluster,
        "trust",
        "issue",
        "--issuer-key",
        root,
        "--subject-key-file",
        agent,
        "--serial",
        "a1",
    )["stored"]
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    for _ in range(5):  # every request now lands on trust2, which shares the state
        valid = ok_json(
            cluster,
            "trust",
            "validate",
            "--leaf-key-file",
            agent,
            "--min-revision",
            str(stored["revision"]),
        )
        assert valid["ok"] is True and valid["revision"] >= stored["revision"]
    assert ok_json(cluster, "trust", "revoke", "a1")["changed"] is True
    assert (
        ok_json(cluster, "trust", "validate", "--leaf-key-file", agent, code=1)["code"]
        == "CHAIN_REVOKED"
    )
