"""Table-driven tests of the rolling baseline (workers/anomaly/baseline.py)."""

from __future__ import annotations

import math
import random

import pytest

from schemas.alerts import Severity
from schemas.errors import ConfigError
from schemas.messages import MetricsSnapshot
from workers.anomaly.baseline import (
    BaselineConfig,
    EventKind,
    Method,
    SeriesDetector,
    interval_samples,
    score,
    severity_for,
)

BOTH = [Method.SIGMA, Method.MAD]


def noisy(n: int, centre: float = 10.0, sd: float = 1.0, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(centre, sd) for _ in range(n)]


def run(det: SeriesDetector, xs: list[float]) -> list[tuple[int, EventKind, Severity]]:
    out = []
    for i, x in enumerate(xs):
        ev = det.observe(x)
        if ev is not None:
            out.append((i, ev.kind, ev.severity))
    return out


@pytest.mark.parametrize(
    ("score_value", "severity"),
    [
        (3.0, Severity.LOW),
        (4.99, Severity.LOW),
        (5.0, Severity.MEDIUM),
        (7.9, Severity.MEDIUM),
        (8.0, Severity.HIGH),
        (1e9, Severity.HIGH),
        (math.inf, Severity.HIGH),
    ],
)
def test_severity_bands(score_value: float, severity: Severity) -> None:
    assert severity_for(score_value) is severity


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize(
    ("warmup", "samples", "scored"), [(20, 19, False), (20, 20, True), (5, 4, False), (5, 5, True)]
)
def test_warmup(method: Method, warmup: int, samples: int, scored: bool) -> None:
    cfg = BaselineConfig(method=method, warmup=warmup)
    assert (score(noisy(samples), 100.0, cfg) is not None) is scored


@pytest.mark.parametrize("method", BOTH)
def test_no_alert_during_warmup_even_for_huge_values(method: Method) -> None:
    det = SeriesDetector(BaselineConfig(method=method, warmup=20, raise_after=1))
    assert run(det, [1.0, 1e6, 1.0, 1e6, 1.0] * 3) == []


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize(
    ("flat", "x", "min_spread", "rel", "anomalous"),
    [
        (0.0, 0.0, 0.02, 0.05, False),  # flat zero, same value: score 0, not 0/0
        (0.0, 0.01, 0.02, 0.05, False),  # tiny absolute change under the floor
        (0.0, 0.2, 0.02, 0.05, True),  # 10 floors away
        (100.0, 104.0, 1e-9, 0.05, False),  # 4 % of the level: within rel floor x 3
        (100.0, 120.0, 1e-9, 0.05, True),  # 20 % of the level: score 4
    ],
)
def test_zero_variance_guard(
    method: Method, flat: float, x: float, min_spread: float, rel: float, anomalous: bool
) -> None:
    cfg = BaselineConfig(method=method, min_spread=min_spread, rel_spread=rel)
    s = score([flat] * 50, x, cfg)
    assert s is not None and math.isfinite(s.score)
    assert s.spread >= min_spread
    assert (s.score >= cfg.threshold) is anomalous


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize(
    ("spike_len", "raise_after", "expect_raised"),
    [(1, 3, False), (2, 3, False), (3, 3, True), (5, 3, True), (1, 1, True)],
)
def test_spike_and_hysteresis_raise(
    method: Method, spike_len: int, raise_after: int, expect_raised: bool
) -> None:
    det = SeriesDetector(BaselineConfig(method=method, raise_after=raise_after, clear_after=3))
    events = run(det, noisy(60) + [40.0] * spike_len + noisy(10, seed=3))
    raised = [e for e in events if e[1] is EventKind.RAISED]
    assert bool(raised) is expect_raised
    if raised:
        assert raised[0][0] == 60 + raise_after - 1
        # 30 sigma away; with sigma the spike samples already in the window inflate the
        # stddev, so the raising (third) sample scores lower — the robust MAD does not care
        assert raised[0][2] is (
            Severity.HIGH if method is Method.MAD or raise_after == 1 else Severity.MEDIUM
        )
        assert events[-1][1] is EventKind.CLEARED  # back to normal afterwards


@pytest.mark.parametrize("method", BOTH)
def test_hysteresis_does_not_flap(method: Method) -> None:
    """Alternating spikes and normal samples never raise; once raised, one normal
    sample among anomalous ones does not clear."""
    det = SeriesDetector(BaselineConfig(method=method, raise_after=3, clear_after=3))
    base = noisy(60)
    alternating = [40.0 if i % 2 else 10.0 for i in range(20)]
    assert run(det, base + alternating) == []
    det2 = SeriesDetector(BaselineConfig(method=method, window=100, raise_after=3, clear_after=3))
    events = run(det2, [*base, 40.0, 40.0, 40.0, 10.0, 40.0, 10.0, 10.0, 10.0])
    kinds = [k for _, k, _ in events]
    assert kinds.count(EventKind.RAISED) == 1
    assert kinds == [EventKind.RAISED, EventKind.CLEARED]
    assert events[1][0] == 60 + 7  # cleared only after the third normal in a row


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize("step", [0.002, 0.01])
def test_slow_drift_adapts_without_alerting(method: Method, step: float) -> None:
    """A level creeping up by a small fraction of sigma per sample is followed, not alerted
    — even after it has moved far beyond 3 sigma of where it started."""
    rng = random.Random(11)
    xs = [10.0 + i * step + rng.gauss(0, 0.2) for i in range(3000)]
    det = SeriesDetector(BaselineConfig(method=method, rel_spread=0.0, min_spread=1e-9))
    assert run(det, xs) == []
    assert xs[-1] - xs[0] > 3 * 0.2 * 5


@pytest.mark.parametrize("method", BOTH)
def test_step_alerts_then_clears_as_baseline_adapts(method: Method) -> None:
    det = SeriesDetector(BaselineConfig(method=method, window=100))
    events = run(det, noisy(100) + noisy(200, centre=30.0, seed=5))
    kinds = [k for _, k, _ in events]
    assert kinds[0] is EventKind.RAISED and events[0][0] == 102
    assert kinds[-1] is EventKind.CLEARED


def test_mad_resists_an_earlier_outlier_that_masks_sigma() -> None:
    """One huge outlier in the window inflates the stddev so much that a real anomaly
    scores under 3 with sigma; the median/MAD baseline still sees it."""
    window = [*noisy(60), 10000.0]
    for method, expect in [(Method.SIGMA, False), (Method.MAD, True)]:
        s = score(window, 25.0, BaselineConfig(method=method))
        assert s is not None and (s.score >= 3.0) is expect, method


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_samples_are_ignored(bad: float) -> None:
    det = SeriesDetector(BaselineConfig(warmup=2, raise_after=1))
    for x in [1.0, 1.1, 0.9]:
        det.observe(x)
    assert det.observe(bad) is None
    assert len(det.samples) == 3


def test_window_is_bounded() -> None:
    det = SeriesDetector(BaselineConfig(window=10, warmup=5))
    run(det, noisy(50))
    assert len(det.samples) == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 1},
        {"warmup": 1},
        {"warmup": 101},
        {"threshold": 0},
        {"threshold": math.nan},
        {"raise_after": 0},
        {"clear_after": 0},
        {"min_spread": 0},
        {"rel_spread": -0.1},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BaselineConfig(**kwargs)  # type: ignore[arg-type]


def snap(instance: str, tasks: int, failures: int, avg_ms: float) -> MetricsSnapshot:
    return MetricsSnapshot(
        kind="tally",
        worker_id="t1",
        instance=instance,
        ts_ms=0,
        tasks=tasks,
        successes=tasks - failures,
        failures=failures,
        avg_ms=avg_ms,
        p99_ms=0.0,
        health="Healthy",
    )


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        (None, snap("a", 10, 0, 2.0), {}),
        (snap("a", 10, 0, 2.0), snap("b", 20, 0, 2.0), {}),  # another instance: counters reset
        (snap("a", 10, 0, 2.0), snap("a", 10, 0, 2.0), {}),  # no task in the interval
        (snap("a", 10, 0, 2.0), snap("a", 20, 0, 3.0), {"processing_ms": 4.0, "failure_rate": 0.0}),
        (
            snap("a", 10, 1, 2.0),
            snap("a", 30, 6, 2.0),
            {"processing_ms": 2.0, "failure_rate": 0.25},
        ),
    ],
)
def test_interval_samples(
    prev: MetricsSnapshot | None, cur: MetricsSnapshot, expected: dict[str, float]
) -> None:
    got = interval_samples(prev, cur)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)
