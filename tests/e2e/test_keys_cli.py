"""``agentic-payments keys ...`` and ``worker keys`` as real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from schemas.identity import verify_signature
from schemas.keys import KeyRecord
from tests.helpers import ROOT, Cluster
from workers.keys.crypto import MasterKey

pytestmark = [pytest.mark.e2e]


def env_of(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = cluster.env()
    for name in ("AP_MASTER_KEY", "AP_MASTER_KEY_FILE"):
        env.pop(name, None)
    env.update(extra)
    return env


def cli(
    cluster: Cluster, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env=env or env_of(cluster),
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_json(cluster: Cluster, *args: str) -> Any:
    done = cli(cluster, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start_keys(
    cluster: Cluster, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = (cluster.data_dir / "keys-keys1.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "keys",
            "--id",
            "keys1",
            "--heartbeat-s",
            "1",
            *extra,
        ],
        env=env or env_of(cluster),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    log.close()
    cluster.processes["keys-keys1"] = proc
    return proc


def wait_serving(cluster: Cluster, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while True:
        proc = cluster.processes["keys-keys1"]
        assert proc.poll() is None, cluster.log("keys-keys1")
        if cli(cluster, "keys", "list", "--timeout", "2").returncode == 0:
            return
        assert time.monotonic() < end, "key manager never answered"
        time.sleep(0.2)


async def stored_record(cluster: Cluster, name: str) -> KeyRecord:
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="t")
    try:
        kv = await nc.jetstream().key_value(Subjects(cluster.prefix).keys_bucket)
        return KeyRecord.decode((await kv.get(name)).value)
    finally:
        await nc.close()


def test_keys_cli_with_json_against_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    master_file = tmp_path / "master.key"
    init = cli_json(cluster, "keys", "init-master", "--out", str(master_file))
    assert init["path"] == str(master_file)
    assert master_file.stat().st_mode & 0o777 == 0o600
    assert cli(cluster, "keys", "init-master", "--out", str(master_file)).returncode == 78
    start_keys(cluster, "--master-key-file", str(master_file))
    wait_serving(cluster)

    created = cli_json(
        cluster,
        "keys",
        "create",
        "payer",
        "--purpose",
        "agent_identity",
        "--auto-rotate-period-s",
        "86400",
    )
    assert (created["name"], created["state"], created["latest_version"]) == ("payer", "Enabled", 1)
    assert created["auto_rotate_period_ms"] == 86_400_000
    rotated = cli_json(cluster, "keys", "rotate", "payer")
    assert rotated["latest_version"] == 2
    v2_key = rotated["versions"][1]["public_key"]
    master = MasterKey.resolve(master_file, master_file, env={})[0]
    before = asyncio.run(stored_record(cluster, "payer"))
    seeds = [bytes(master.open(v.sealed_seed)).hex() for v in before.versions]
    assert len(seeds) == 2
    signed = cli_json(cluster, "keys", "sign", "payer", "--message", "pay 12.50 EUR")
    assert (signed["version"], signed["public_key"]) == (2, v2_key)
    assert verify_signature(
        bytes.fromhex(v2_key), b"pay 12.50 EUR", bytes.fromhex(signed["signature"])
    )
    revoked = cli_json(
        cluster, "keys", "revoke", "payer", "--reason", "compromised", "--version", "1"
    )
    assert revoked["versions"][0]["revoked_reason"] == "compromised"
    assert revoked["versions"][0]["revoked_at_ms"] > 0
    assert revoked["versions"][1]["revoked_at_ms"] == 0
    listed = cli_json(cluster, "keys", "list")
    assert [k["name"] for k in listed["keys"]] == ["payer"]

    human = cli(cluster, "keys", "get", "payer")
    assert human.returncode == 0 and "REVOKED (compromised)" in human.stdout

    missing = cli(cluster, "keys", "rotate", "nobody")
    assert missing.returncode == 1 and "KEY_NOT_FOUND" in missing.stderr
    refused = cli(cluster, "keys", "sign", "payer", "--message", "x", "--version", "1")
    assert refused.returncode == 1 and "KEY_VERSION_INVALID" in refused.stderr

    record = asyncio.run(stored_record(cluster, "payer"))
    assert record.versions[0].sealed_seed == b""  # v1 revoked: its seed is erased
    outputs = created, rotated, signed, revoked, listed
    codes = cluster.stop_all()
    assert codes["keys-keys1"] == 0
    log = cluster.log("keys-keys1")
    for seed in seeds:
        assert seed not in log and all(seed not in json.dumps(o) for o in outputs)
    assert master_file.read_text().strip() not in log


def test_worker_refuses_a_bad_master_key(cluster: Cluster, tmp_path: Path) -> None:
    missing = start_keys(cluster, "--master-key-file", str(tmp_path / "nope.key"))
    assert missing.wait(60) == 78
    garbage = start_keys(cluster, env=env_of(cluster, AP_MASTER_KEY="not-a-key"))
    assert garbage.wait(60) == 78
    assert "MASTER_KEY_INVALID" in cluster.log("keys-keys1")
    loose = tmp_path / "loose.key"
    loose.write_text("00" * 32)
    loose.chmod(0o644)
    assert start_keys(cluster, "--master-key-file", str(loose)).wait(60) == 78


def test_worker_without_master_key_creates_a_development_one(cluster: Cluster) -> None:
    start_keys(cluster)  # what 'up' does: no master key configured
    wait_serving(cluster)
    created = cluster.data_dir / "keys" / "master.key"
    assert created.stat().st_mode & 0o777 == 0o600
    assert "development master key" in cluster.log("keys-keys1")
    assert (
        cli_json(cluster, "keys", "create", "dev", "--purpose", "authentication")["name"] == "dev"
    )


def test_keys_cli_without_a_key_manager_exits_69(cluster: Cluster) -> None:
    done = cli(cluster, "keys", "list", "--timeout", "2")
    assert done.returncode == 69, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "rotate", "--help"],
        ["keys", "revoke", "--help"],
        ["keys", "list", "--help"],
        ["keys", "sign", "--help"],
        ["keys", "init-master", "--help"],
        ["worker", "keys", "--help"],
    ],
)
def test_help(cluster: Cluster, args: list[str]) -> None:
    done = cli(cluster, *args)
    assert done.returncode == 0 and "usage:" in done.stdout
    if args[0] == "keys" and len(args) == 3:
        assert "--json" in done.stdout
