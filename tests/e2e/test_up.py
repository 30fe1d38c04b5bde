"""The README's start command: `agentic-payments up` brings up everything, demo works,
Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_demo_and_ctrl_c(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = {**os.environ, "NATS_URL": url, "AP_PREFIX": "ap", "PYTHONPATH": str(ROOT)}
    env.pop("AP_DATA_DIR", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--heartbeat-s", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        demo = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            demo = subprocess.run(
                [sys.executable, "-m", "workers.cli", "demo", "--timeout", "3"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if demo.returncode == 0:
                break
            time.sleep(1)
        assert demo is not None and demo.returncode == 0, (
            demo.stdout if demo else "",
            demo.stderr if demo else "",
        )
        assert "Consensus: " in demo.stdout and "agents approved (VALID" in demo.stdout
        assert "re-checked offline" in demo.stdout
        assert "INVALID" in demo.stdout
        status = subprocess.run(
            [sys.executable, "-m", "workers.cli", "status"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.stdout.count("verifier ") >= 4 and "tally" in status.stdout
        assert status.returncode == 0 and "PROBLEM" not in status.stdout, status.stdout
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "nats-server stopped" in out
    assert (tmp_path / ".agentic-payments" / "nats").is_dir()
    logs = (tmp_path / ".agentic-payments" / "logs" / "verifier-v1.log").read_text()
    assert "verifier v1 stopped" in logs
