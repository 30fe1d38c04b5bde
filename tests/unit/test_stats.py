from __future__ import annotations

import pytest

from bus.stats import ProcessingStats, health_for, percentile
from schemas.messages import Health


@pytest.mark.parametrize(
    ("failures", "total", "health"),
    [
        (0, 0, Health.HEALTHY),
        (0, 200, Health.HEALTHY),
        (1, 200, Health.HEALTHY),
        (2, 200, Health.HEALTHY),
        (3, 200, Health.DEGRADED),
        (10, 200, Health.DEGRADED),
        (1, 10, Health.DEGRADED),
        (99, 200, Health.DEGRADED),
        (100, 200, Health.UNHEALTHY),
        (2, 2, Health.DEGRADED),
        (3, 3, Health.UNHEALTHY),
    ],
)
def test_health_table(failures: int, total: int, health: Health) -> None:
    assert health_for(failures, total) is health


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 99, 0.0),
        ([5.0], 99, 5.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 50, 50.0),
        ([1.0, 2.0], 50, 1.0),
    ],
)
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


def test_invalid_signatures_are_not_failures() -> None:
    stats = ProcessingStats()
    for _ in range(50):
        stats.record(1.0, ok=True)
    assert stats.health() is Health.HEALTHY
    for _ in range(3):
        stats.record(2.0, ok=False)
    assert stats.health() is Health.DEGRADED
    assert (stats.tasks, stats.successes, stats.failures) == (53, 50, 3)
    assert stats.avg_ms == pytest.approx((50 + 6) / 53)
