"""Processing statistics and the health they imply: pure, no clock, no I/O.

Health comes from the recent failure ratio (a processing failure is an
exception in our code, never an invalid signature — that is a verdict):

  Healthy    fewer than DEGRADED_AT of the last WINDOW tasks failed
  Degraded   at least DEGRADED_AT (5 %) failed, or at least 3 failures
  Unhealthy  at least UNHEALTHY_AT (50 %) failed
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.messages import Health

WINDOW = 200
DEGRADED_AT = 0.05
UNHEALTHY_AT = 0.5
_DURATIONS = 2048


def health_for(failures: int, total: int) -> Health:
    """Health for ``failures`` out of the last ``total`` tasks."""
    if total <= 0 or failures <= 0:
        return Health.HEALTHY
    ratio = failures / total
    if ratio >= UNHEALTHY_AT and failures >= 3:
        return Health.UNHEALTHY
    if ratio >= DEGRADED_AT or failures >= 3:
        return Health.DEGRADED
    return Health.HEALTHY


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class ProcessingStats:
    tasks: int = 0
    successes: int = 0
    failures: int = 0
    total_ms: float = 0.0
    counters: Counter[str] = field(default_factory=Counter)
    _recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _durations: deque[float] = field(default_factory=lambda: deque(maxlen=_DURATIONS))
    #: Called with (duration_ms, ok) on every record, e.g. an OTel histogram (bus/otelmetrics).
    on_record: Callable[[float, bool], None] | None = None

    def record(self, duration_ms: float, ok: bool = True) -> None:
        self.tasks += 1
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        self.total_ms += duration_ms
        self._recent.append(ok)
        self._durations.append(duration_ms)
        if self.on_record is not None:
            self.on_record(duration_ms, ok)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    @property
    def avg_ms(self) -> float:
        return self.total_ms / self.tasks if self.tasks else 0.0

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self._durations), 99)

    def health(self) -> Health:
        recent_failures = sum(1 for ok in self._recent if not ok)
        return health_for(recent_failures, len(self._recent))
