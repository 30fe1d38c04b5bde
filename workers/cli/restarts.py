"""When ``up`` restarts the nats-server it started, and when it gives up — pure logic.

Why a budget: a server that dies once (kill -9, the OOM killer, a crash) should
be back at once, since every client and worker is waiting on it; a server that
cannot stay up (its port taken by someone else, a corrupt store, a full disk)
must not be restarted in a tight loop for ever while ``up`` looks healthy.

The rule, over "quick failures" (the server died, or never became ready, less
than ``reset_after_s`` after it was ready; a server that ran longer gets the full
budget back):

* the first quick failure is restarted at once;
* failure n (2..``max_retries``) after ``RetryPolicy.backoff(n - 1)``:
  ``base_s`` doubling up to ``max_backoff_s`` (no jitter: there is one server);
* failure ``max_retries + 1``: give up (``None``); ``up`` stops everything and
  exits non-zero.
"""

from __future__ import annotations

from workers.recovery.staleness import RetryPolicy

#: under ``up``: restart at once, then after 0.5, 1, 2, 4 s; the 6th quick failure
#: in a row (each within 30 s of the last start) stops ``up``.
SERVER_RESTARTS = RetryPolicy(
    max_retries=5, base_s=0.5, factor=2.0, max_backoff_s=4.0, jitter=0.0, reset_after_s=30.0
)


def quick_failures(previous: int, lived_s: float | None, policy: RetryPolicy) -> int:
    """The count after a death: ``lived_s`` is how long the server had been ready
    (``None``: it never became ready), ``previous`` the count before."""
    if lived_s is not None and lived_s >= policy.reset_after_s:
        return 1
    return previous + 1


def restart_delay(failures: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before the next start after ``failures`` (>= 1) quick failures;
    ``None``: give up."""
    if failures > policy.max_retries:
        return None
    return policy.backoff(failures - 1, 0.5)  # rand 0.5: no jitter; backoff(0) is 0
