"""`agentic-payments up` starts the key manager with no operator action."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_up import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_up_starts_the_key_manager_with_a_development_master_key(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = {**os.environ, "NATS_URL": url, "AP_PREFIX": "ap", "PYTHONPATH": str(ROOT)}
    for name in ("AP_DATA_DIR", "AP_MASTER_KEY", "AP_MASTER_KEY_FILE"):
        env.pop(name, None)
    up = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--verifiers", "3", "--heartbeat-s", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        created = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            created = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "workers.cli",
                    "keys",
                    "create",
                    "up-key",
                    "--purpose",
                    "authentication",
                    "--json",
                    "--timeout",
                    "3",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode == 0:
                break
            time.sleep(1)
        assert created is not None and created.returncode == 0, created.stderr if created else ""
        assert json.loads(created.stdout)["name"] == "up-key"
        master = tmp_path / ".agentic-payments" / "keys" / "master.key"
        assert master.stat().st_mode & 0o777 == 0o600
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    log = (tmp_path / ".agentic-payments" / "logs" / "keys.log").read_text()
    assert "development master key" in log and "keys keys1 stopped" in log
