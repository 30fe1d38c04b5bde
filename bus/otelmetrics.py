"""Worker metrics through the OpenTelemetry SDK, beside the NATS MetricsSnapshot.

The snapshot published on ``{prefix}.metrics.…`` stays the source for the
anomaly worker; these instruments export the same numbers to any OTLP backend
(``OTEL_METRICS_EXPORTER`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, see bus/tracing.py).
Everything but the duration histogram is *observed* at collection time from
the worker's ProcessingStats, so the hot path pays only one histogram record
per task — and nothing at all when metrics export is off (no instruments are
created then).

Instruments (attributes in brackets):

- ``ap.worker.tasks`` counter {task} [``outcome`` = success | failure]
- ``ap.worker.processing.duration`` histogram ms [``outcome``]
- ``ap.worker.events`` counter {event} [``event`` = a ProcessingStats counter name,
  e.g. ``requests_judged``, ``decision_VALID``, ``vote_rejected_VOTE_NOT_MEMBER``]
- ``ap.worker.health`` gauge (0 healthy, 1 degraded, 2 unhealthy, 3 shutting down)
- one gauge per ``Worker.gauges()`` entry, e.g. ``ap.tally.pending``,
  ``ap.tally.open_ballots``, ``ap.tally.pool_size``, ``ap.verifier.remembered_votes``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from bus.stats import ProcessingStats
from schemas.messages import Health

METER_NAME = "agentic-payments"
HEALTH_VALUE = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.UNHEALTHY: 2, Health.SHUTTING_DOWN: 3}
_SUCCESS = {"outcome": "success"}
_FAILURE = {"outcome": "failure"}


class WorkerInstruments:
    """OTel instruments for one worker; create after ``setup_metrics`` returned True."""

    def __init__(
        self,
        kind: str,
        stats: ProcessingStats,
        health: Callable[[], Health],
        gauges: Callable[[], Mapping[str, float]],
        meter: metrics.Meter | None = None,
    ) -> None:
        self.kind = kind
        self.stats = stats
        self._health = health
        self._gauges = gauges
        meter = meter or metrics.get_meter(METER_NAME)
        self.duration = meter.create_histogram(
            "ap.worker.processing.duration",
            unit="ms",
            description="time to process one task (a request decided, a ballot voted)",
        )
        meter.create_observable_counter(
            "ap.worker.tasks",
            callbacks=[self._observe_tasks],
            unit="{task}",
            description="tasks processed, by outcome (a failure is an error in our code)",
        )
        meter.create_observable_counter(
            "ap.worker.events",
            callbacks=[self._observe_events],
            unit="{event}",
            description="named worker counters (rejections by code, decisions, ...)",
        )
        meter.create_observable_gauge(
            "ap.worker.health",
            callbacks=[self._observe_health],
            description="0 healthy, 1 degraded, 2 unhealthy, 3 shutting down",
        )
        for name in gauges():
            meter.create_observable_gauge(
                f"ap.{kind}.{name}", callbacks=[self._gauge_callback(name)]
            )
        stats.on_record = self.record

    def record(self, duration_ms: float, ok: bool) -> None:
        self.duration.record(duration_ms, _SUCCESS if ok else _FAILURE)

    def _observe_tasks(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(self.stats.successes, _SUCCESS),
            Observation(self.stats.failures, _FAILURE),
        ]

    def _observe_events(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"event": name}) for name, n in list(self.stats.counters.items())]

    def _observe_health(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(HEALTH_VALUE.get(self._health(), 2))]

    def _gauge_callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            value = self._gauges().get(name)
            return [] if value is None else [Observation(value)]

        return observe
