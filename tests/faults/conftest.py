"""Fault tests print one JSON line each (outage, lost, wrong) in the terminal summary,
so a CI log shows the measured numbers even when every test passes."""

from __future__ import annotations

import pytest

from tests.faults.load import REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault reports")
        for line in REPORTS:
            terminalreporter.write_line(line)
