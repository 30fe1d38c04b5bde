"""Rolling baselines and anomaly scoring: pure statistics, no clock, no I/O.

One ``SeriesDetector`` watches one series (one worker, one metric). Each
sample is scored against the window of the samples *before* it, then added
to the window, so the baseline follows the data:

* **window** — the last ``window`` samples (default 100).
* **method** — ``sigma``: score = |x − mean| / stddev (the seed's 3-sigma
  rule, population stddev); ``mad``: score = |x − median| / (1.4826 · MAD),
  the robust alternative (1.4826 makes MAD estimate sigma for normal data, so
  the same thresholds mean the same thing; one earlier outlier cannot inflate
  the spread the way it inflates a stddev).
* **warm-up** — no score until ``warmup`` samples are in the window
  (default 20): a baseline of three samples says nothing.
* **zero-variance guard** — the spread used is at least
  ``max(min_spread, rel_spread · |centre|)``. A perfectly flat series (a
  metric that was always 0) would otherwise make any change an infinite
  score, or 0/0; with the floor, a change must also be large in absolute
  terms (``min_spread``, per metric) or relative to the level
  (``rel_spread``, default 5 %).
* **anomalous** — score ≥ ``threshold`` (default 3.0).
* **hysteresis** — an alert is *raised* after ``raise_after`` consecutive
  anomalous samples (default 3), so one spike never alerts, and *cleared*
  after ``clear_after`` consecutive normal samples (default 3), so a series
  hovering at the threshold does not flap. While raised, a higher severity
  is reported once as an escalation.
* **every sample enters the window**, anomalous or not. With ``sigma`` the
  first samples of a burst therefore inflate the stddev and lower the score
  of the next ones (a 30-sigma burst raises at "medium"); ``mad`` is not
  moved by a few outliers and reports it at "high".
* **slow drift** — intended to adapt, not alert: a level that moves by a
  small fraction of the spread per sample stays inside 3 sigma of a window
  that moves with it. A sustained *step* does alert (after ``raise_after``)
  and then clears by itself once the window has absorbed the new level.

Severity from the score of the sample that raised (or escalated) the alert:

  low       threshold ≤ score < 5   (just outside the normal band)
  medium    5 ≤ score < 8
  high      score ≥ 8
  critical  never from statistics: reserved for safety evidence (a Byzantine
            verifier), see workers/anomaly/byzantine_rules.py
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from schemas.alerts import SEVERITY_ORDER, Severity
from schemas.errors import ConfigError
from schemas.messages import MetricsSnapshot

MAD_TO_SIGMA = 1.4826
#: Score bands: the lowest score of each statistical severity.
SEVERITY_BANDS: tuple[tuple[float, Severity], ...] = (
    (8.0, Severity.HIGH),
    (5.0, Severity.MEDIUM),
    (0.0, Severity.LOW),
)


class Method(enum.StrEnum):
    SIGMA = "sigma"
    MAD = "mad"


@dataclass(frozen=True)
class BaselineConfig:
    window: int = 100
    method: Method = Method.SIGMA
    warmup: int = 20
    threshold: float = 3.0
    raise_after: int = 3
    clear_after: int = 3
    min_spread: float = 1e-9
    rel_spread: float = 0.05

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError("baseline window must hold at least 2 samples")
        if not 2 <= self.warmup <= self.window:
            raise ConfigError(f"warm-up must be between 2 and the window ({self.window})")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError("anomaly threshold must be a positive number")
        if self.raise_after < 1 or self.clear_after < 1:
            raise ConfigError("hysteresis counts must be at least 1")
        if not (self.min_spread > 0 and math.isfinite(self.min_spread)):
            raise ConfigError("min spread must be a positive number (the zero-variance guard)")
        if not (0 <= self.rel_spread < 10):
            raise ConfigError("relative spread floor must be in [0, 10)")


def severity_for(score: float) -> Severity:
    """Statistical severity of an anomalous score (never CRITICAL)."""
    for low, severity in SEVERITY_BANDS:
        if score >= low:
            return severity
    return Severity.LOW


@dataclass(frozen=True)
class Score:
    value: float
    centre: float
    spread: float
    score: float


def score(samples: list[float] | deque[float], x: float, config: BaselineConfig) -> Score | None:
    """Score ``x`` against ``samples``; None during warm-up."""
    if len(samples) < config.warmup:
        return None
    if config.method is Method.SIGMA:
        centre = statistics.fmean(samples)
        spread = statistics.pstdev(samples, centre)
    else:
        centre = statistics.median(samples)
        spread = MAD_TO_SIGMA * statistics.median(abs(s - centre) for s in samples)
    spread = max(spread, config.min_spread, config.rel_spread * abs(centre))
    return Score(x, centre, spread, abs(x - centre) / spread)


class EventKind(enum.StrEnum):
    RAISED = "raised"
    ESCALATED = "escalated"
    CLEARED = "cleared"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    severity: Severity
    score: Score


@dataclass
class SeriesDetector:
    """Baseline plus hysteresis state of one series."""

    config: BaselineConfig
    samples: deque[float] = field(init=False)
    raised: Severity | None = None
    anomalous_run: int = 0
    normal_run: int = 0
    last: Score | None = None

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.config.window)

    def observe(self, x: float) -> Event | None:
        """Add one sample; return the alert event it causes, if any.

        Non-finite samples are ignored (a broken metric is not an anomaly of
        the worker, and a NaN would poison the window).
        """
        if not math.isfinite(x):
            return None
        s = score(self.samples, x, self.config)
        self.samples.append(x)
        self.last = s
        if s is None:
            return None
        if s.score >= self.config.threshold:
            self.anomalous_run += 1
            self.normal_run = 0
            severity = severity_for(s.score)
            if self.raised is None and self.anomalous_run >= self.config.raise_after:
                self.raised = severity
                return Event(EventKind.RAISED, severity, s)
            if self.raised is not None and (
                SEVERITY_ORDER.index(severity) > SEVERITY_ORDER.index(self.raised)
            ):
                self.raised = severity
                return Event(EventKind.ESCALATED, severity, s)
            return None
        self.normal_run += 1
        self.anomalous_run = 0
        if self.raised is not None and self.normal_run >= self.config.clear_after:
            previous, self.raised = self.raised, None
            return Event(EventKind.CLEARED, previous, s)
        return None


def interval_samples(
    previous: MetricsSnapshot | None, current: MetricsSnapshot
) -> dict[str, float]:
    """Per-interval samples between two consecutive snapshots of one worker.

    ``processing_ms`` is the mean task time of the tasks finished in the
    interval (from the cumulative ``avg_ms × tasks``; ``avg_ms`` is rounded to
    µs, so the error is 0.0005 × tasks / interval tasks ms), ``failure_rate``
    the failed fraction of them. Nothing when there is no earlier snapshot of
    the same instance (a restart resets the counters) or no task finished.
    """
    if (
        previous is None
        or previous.instance != current.instance
        or current.tasks <= previous.tasks
        or current.failures < previous.failures
    ):
        return {}
    done = current.tasks - previous.tasks
    total_ms = current.avg_ms * current.tasks - previous.avg_ms * previous.tasks
    return {
        "processing_ms": max(0.0, total_ms / done),
        "failure_rate": min(1.0, (current.failures - previous.failures) / done),
    }
