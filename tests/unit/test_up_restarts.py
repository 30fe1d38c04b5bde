"""The restart budget of ``up``'s own nats-server (workers/cli/restarts.py): restart at
once, then back off, and give up after too many quick failures in a row."""

from __future__ import annotations

import pytest

from workers.cli.restarts import SERVER_RESTARTS, quick_failures, restart_delay
from workers.recovery.staleness import RetryPolicy

P = SERVER_RESTARTS


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (1, 0.0),  # the first death: back at once, everyone is waiting on it
        (2, 0.5),
        (3, 1.0),
        (4, 2.0),
        (5, 4.0),
        (6, None),  # max_retries + 1 quick failures: give up
        (7, None),
    ],
)
def test_restart_delay(failures: int, delay: float | None) -> None:
    assert restart_delay(failures, P) == delay


@pytest.mark.parametrize(
    ("previous", "lived_s", "expected"),
    [
        (0, 0.5, 1),  # first death
        (0, 3600.0, 1),
        (3, 29.9, 4),  # died soon after its restart: one more quick failure
        (3, 30.0, 1),  # ran reset_after_s: the full budget back
        (5, 1000.0, 1),
        (2, None, 3),  # never became ready: always quick
    ],
)
def test_quick_failures(previous: int, lived_s: float | None, expected: int) -> None:
    assert quick_failures(previous, lived_s, P) == expected


def test_a_crash_loop_gives_up_after_max_retries_restarts() -> None:
    """A server that dies right after every start is restarted max_retries times."""
    failures, restarts = 0, 0
    while True:
        failures = quick_failures(failures, 0.1, P)
        if restart_delay(failures, P) is None:
            break
        restarts += 1
    assert restarts == P.max_retries == 5


def test_the_delay_has_no_jitter() -> None:
    jittery = RetryPolicy(max_retries=3, base_s=1.0, jitter=0.5, max_backoff_s=8.0)
    assert restart_delay(2, jittery) == 1.0
