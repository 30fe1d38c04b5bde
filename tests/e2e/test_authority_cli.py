"""`agentic-payments authority ...` with --json against a real authority worker process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from schemas.identity import AgentIdentity
from tests.helpers import ROOT, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cli(cluster: Cluster, *args: str) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    data = None
    if "--json" in args and proc.stdout.strip():
        data = json.loads(proc.stdout)
    return proc.returncode, data, proc.stderr


def start_authority(cluster: Cluster, worker_id: str = "a1") -> subprocess.Popen[bytes]:
    proc = cluster._spawn(
        f"authority-{worker_id}",
        ["-m", "workers.cli", "worker", "authority", "--id", worker_id, "--heartbeat-s", "1"],
    )
    deadline = time.monotonic() + 60
    while True:
        code, _, _ = cli(cluster, "authority", "list", "--json", "--timeout", "2")
        if code == 0:
            return proc
        if proc.poll() is not None:
            raise AssertionError(
                f"authority exited {proc.returncode}: {cluster.log(f'authority-{worker_id}')}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("authority worker did not answer")
        time.sleep(0.2)


@pytest.mark.timeout(300)  # many CLI runs, each a fresh interpreter: 276 s at load 20
def test_authority_cli_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    keys = {}
    for name in ("root", "high", "med"):
        keys[name] = tmp_path / f"{name}.key"
        AgentIdentity.generate().save(keys[name])
    proc = start_authority(cluster)

    for name, level in (("root", "Root"), ("high", "High"), ("med", "Medium")):
        code, data, err = cli(
            cluster,
            "authority",
            "add",
            "--key-file",
            str(keys[name]),
            "--name",
            name,
            "--level",
            level,
            "--json",
        )
        assert code == 0, err
        assert data["record"]["trust_level"] == level and data["record"]["active"] is True

    payments = [
        "authority",
        "set-policy",
        "payments",
        "--min-authorities",
        "2",
        "--min-level",
        "Medium",
        "--threshold",
        "1/2",
        "--group",
        "1:High",
        "--json",
    ]
    code, data, _ = cli(cluster, *payments)
    assert (code, data["code"]) == (1, "POLICY_MISSING")  # policy-admin first
    code, data, err = cli(
        cluster,
        "authority",
        "set-policy",
        "policy-admin",
        "--min-authorities",
        "1",
        "--min-level",
        "Root",
        "--threshold",
        "1/1",
        "--json",
    )
    assert code == 0, err
    assert data["policy"]["threshold"] == "1/1"
    code, data, _ = cli(cluster, *payments)
    assert (code, data["code"]) == (1, "POLICY_NOT_MET")  # unendorsed change refused

    code, data, _ = cli(cluster, *payments, "--digest-only")
    assert code == 0 and data["category"] == "policy-admin"
    code, endorsement, _ = cli(
        cluster,
        "authority",
        "endorse",
        "--key",
        str(keys["root"]),
        "--category",
        "policy-admin",
        "--digest",
        data["digest"],
        "--json",
    )
    assert code == 0
    code, data, err = cli(cluster, *payments, "--endorsement", endorsement["endorsement"])
    assert code == 0, err
    assert data["policy"]["groups"][0]["min_trust_level"] == "High"

    votes = {}
    for name in ("med", "high"):
        code, data, _ = cli(
            cluster,
            "authority",
            "endorse",
            "--key",
            str(keys[name]),
            "--category",
            "payments",
            "--message",
            "pay 10 EUR",
            "--json",
        )
        votes[name] = data["endorsement"]
    both = ["--endorsement", votes["med"], "--endorsement", votes["high"]]
    code, data, _ = cli(
        cluster, "authority", "evaluate", "payments", "--message", "pay 10 EUR", *both, "--json"
    )
    assert code == 0 and data["ok"] is True and data["policy_category"] == "payments"
    code, data, _ = cli(
        cluster, "authority", "evaluate", "payments", "--message", "pay 10000 EUR", *both, "--json"
    )
    assert code == 1 and data["code"] == "POLICY_NOT_MET"
    assert [i["reason"] for i in data["ignored"]] == ["BAD_SIGNATURE", "BAD_SIGNATURE"]
    code, data, _ = cli(
        cluster,
        "authority",
        "evaluate",
        "payments",
        "--message",
        "pay 10 EUR",
        "--endorsement",
        votes["med"],
        "--endorsement",
        votes["med"],
        "--json",
    )
    assert code == 1 and data["counted"] == [data["counted"][0]] and data["required"] == 2

    code, data, err = cli(
        cluster,
        "authority",
        "deactivate",
        "--key-file",
        str(keys["high"]),
        "--sign-with",
        str(keys["root"]),
        "--json",
    )
    assert code == 0, err
    assert data["record"]["active"] is False and data["record"]["serial"] == 2
    code, data, _ = cli(
        cluster, "authority", "evaluate", "payments", "--message", "pay 10 EUR", *both, "--json"
    )
    assert code == 1 and [i["reason"] for i in data["ignored"]] == ["INACTIVE"]
    code, data, _ = cli(cluster, "authority", "activate", "--key-file", str(keys["high"]), "--json")
    assert (code, data["code"]) == (1, "POLICY_NOT_MET")

    code, data, _ = cli(cluster, "authority", "list", "--json")
    assert code == 0
    assert sorted(a["name"] for a in data["authorities"]) == ["high", "med", "root"]
    assert [p["category"] for p in data["policies"]] == ["payments", "policy-admin"]
    code, data, _ = cli(cluster, "authority", "get-policy", "refunds", "--json")
    assert (code, data["code"]) == (1, "POLICY_MISSING")

    code, _, err = cli(cluster, "authority", "evaluate", "payments", "--digest", "zz")
    assert code == 78 and "CONFIG_INVALID" in err
    code, _, err = cli(cluster, "authority", "list", "--prefix", "nobody", "--timeout", "1")
    assert code == 69, err

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.mark.timeout(120)  # every --help is a fresh interpreter; 46 s under load
def test_help_teaches() -> None:
    for args in (
        ["authority", "--help"],
        ["authority", "set-policy", "--help"],
        ["authority", "evaluate", "--help"],
        ["worker", "authority", "--help"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "workers.cli", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and "usage:" in proc.stdout
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "authority", "set-policy", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert "policy-admin" in out and "n/d" in out
