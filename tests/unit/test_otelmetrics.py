"""Worker instruments through the OTel SDK (an in-memory reader, no network)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from bus.otelmetrics import WorkerInstruments
from bus.stats import ProcessingStats
from schemas.messages import Health


def collect(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = [
                    (
                        dict(p.attributes or {}),
                        getattr(p, "value", None) if hasattr(p, "value") else (p.count, p.sum),
                    )
                    for p in m.data.data_points
                ]
    return out


@pytest.mark.parametrize(
    ("records", "counters", "health", "expected_health"),
    [
        ([], {}, Health.HEALTHY, 0),
        ([(1.5, True), (2.5, True)], {"requests_judged": 64}, Health.HEALTHY, 0),
        ([(1.0, True), (3.0, False)], {"vote_rejected_VOTE_NOT_MEMBER": 2}, Health.DEGRADED, 1),
        ([(9.0, False)] * 3, {}, Health.UNHEALTHY, 2),
        ([(1.0, True)], {"a": 1, "b": 2}, Health.SHUTTING_DOWN, 3),
    ],
)
def test_instruments_mirror_the_stats(
    records: list[tuple[float, bool]],
    counters: dict[str, int],
    health: Health,
    expected_health: int,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    stats = ProcessingStats()
    levels = {"pending": 7.0, "open_ballots": 2.0}
    WorkerInstruments(
        "tally", stats, lambda: health, lambda: levels, meter=provider.get_meter("test")
    )
    for duration, ok in records:
        stats.record(duration, ok)
    for name, n in counters.items():
        stats.count(name, n)
    got = collect(reader)
    successes = sum(1 for _, ok in records if ok)
    tasks = dict((a["outcome"], v) for a, v in got["ap.worker.tasks"])
    assert tasks == {"success": successes, "failure": len(records) - successes}
    assert got["ap.worker.health"] == [({}, expected_health)]
    assert got["ap.tally.pending"] == [({}, 7.0)]
    assert got["ap.tally.open_ballots"] == [({}, 2.0)]
    assert dict((a["event"], v) for a, v in got.get("ap.worker.events", [])) == counters
    durations = {a["outcome"]: v for a, v in got.get("ap.worker.processing.duration", [])}
    for outcome, ok in (("success", True), ("failure", False)):
        values = [d for d, k in records if k is ok]
        if values:
            assert durations[outcome] == (len(values), pytest.approx(sum(values)))
        else:
            assert outcome not in durations
    provider.shutdown()


def test_no_instruments_no_hook() -> None:
    stats = ProcessingStats()
    stats.record(1.0)
    assert stats.on_record is None and stats.tasks == 1
