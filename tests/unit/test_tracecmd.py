"""``agentic-payments trace``: argument and configuration errors, exit codes.

The full path (real processes, spans collected over OTLP) is tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import workers.cli.main as cli
from bus.runtime import EXIT_CONFIG, EXIT_CONNECT
from tests.helpers import ROOT

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in OTEL_VARS:
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["trace", "--count", "0"],
        ["trace", "--count", "-1"],
        ["trace", "--count", "20000"],
        ["trace", "--count", "2", "--invalid", "3"],
        ["trace", "--invalid", "-1"],
    ],
)
def test_bad_counts_are_config_errors(
    no_otel: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == EXIT_CONFIG
    assert "CONFIG" in capsys.readouterr().err


def test_without_otel_configuration_it_says_how(
    no_otel: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["trace"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in err


def test_trace_is_registered() -> None:
    assert "workers.cli.trace" in cli.EXTENSIONS
    with pytest.raises(SystemExit) as exc:
        cli.main(["trace", "--help"])
    assert exc.value.code == 0


@pytest.mark.slow
def test_unreachable_nats_exits_69() -> None:
    # a subprocess: setting up tracing installs a process-global tracer provider
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "trace", "--nats-url", "nats://127.0.0.1:1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CONNECT, proc.stderr
