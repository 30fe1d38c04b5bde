"""A client load for fault tests: requests go out continuously while a fault is injected.

Every request is either validly signed (must be decided VALID) or has its message
altered after signing (must be decided INVALID). A request is retried under its
same request id (same bytes) until it gets a final decision: transport errors,
retryable error replies and TIMEOUT certificates (a TIMEOUT is not the final word,
docs) are all retried; a request with no final decision when the load stops is
*lost*. The client checks every certificate itself (VerifyClient's default); a
certificate it rejects is recorded (``rejections``) and the request retried, and
``audit`` re-checks every certificate independently against the pool of its epoch
rebuilt from the membership history (``membership.pool_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.subjects import Subjects
from schemas.certificate import verify_certificate
from schemas.errors import AgenticPaymentsError, CertificateInvalid, TransportError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, MetricsSnapshot, VerificationRequest
from schemas.quorum import Decision


@dataclass
class Outcome:
    request: VerificationRequest
    good: bool
    sent_at: float
    cert: ConsensusResult | None = None
    decided_at: float | None = None
    attempts: int = 0
    #: error code (or "TIMEOUT_DECISION") of each failed attempt
    errors: list[str] = field(default_factory=list)
    #: messages of certificates the client rejected (CertificateInvalid)
    rejections: list[str] = field(default_factory=list)


class Load:
    """``rate`` requests per second, each in its own task, until :meth:`stop`."""

    def __init__(
        self,
        client: VerifyClient,
        tag: str,
        *,
        rate: float = 25.0,
        attempt_timeout: float = 4.0,
    ) -> None:
        self.client = client
        self.tag = tag
        self.rate = rate
        self.attempt_timeout = attempt_timeout
        self.agent = AgentIdentity.generate()
        self.outcomes: list[Outcome] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._decided = asyncio.Event()

    # ------------------------------------------------------------------ running
    async def __aenter__(self) -> Load:
        self._runner = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _request(self, i: int) -> tuple[VerificationRequest, bool]:
        req = signed_request(self.agent, f"pay {i} EUR to merchant-{i}", f"{self.tag}-{i}")
        if i % 2 == 0:
            return req, True
        bad = VerificationRequest(
            req.request_id, req.message + b" (altered)", req.signature, req.public_key
        )
        return bad, False

    async def _run(self) -> None:
        interval = 1.0 / self.rate
        start = time.monotonic()
        for i in itertools.count():
            if self._stopping:
                return
            req, good = self._request(i)
            outcome = Outcome(req, good, time.monotonic())
            self.outcomes.append(outcome)
            task = asyncio.create_task(self._one(outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # a fixed schedule, not a fixed pause: a slow tick does not lower the rate
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))

    async def _one(self, outcome: Outcome) -> None:
        while True:
            outcome.attempts += 1
            try:
                cert = await self.client.verify_with_consensus(
                    outcome.request, timeout=self.attempt_timeout
                )
            except CertificateInvalid as exc:
                outcome.rejections.append(str(exc))
                outcome.errors.append(exc.code)
            except AgenticPaymentsError as exc:
                outcome.errors.append(exc.code)
            else:
                if cert.decision != Decision.TIMEOUT:
                    outcome.cert = cert
                    outcome.decided_at = time.monotonic()
                    self._decided.set()
                    return
                outcome.errors.append("TIMEOUT_DECISION")
            await asyncio.sleep(0.2)

    async def stop(self, drain_s: float = 20.0) -> None:
        """Stop sending; give the requests already sent ``drain_s`` to be decided."""
        self._stopping = True
        if self._runner is not None:
            await self._runner
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=drain_s)

    # ------------------------------------------------------------------ waiting
    def decided(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.decided_at is not None]

    async def wait_decided(self, count: int, *, sent_after: float = 0.0, timeout: float) -> None:
        """Until ``count`` requests sent after ``sent_after`` have a final decision."""
        deadline = time.monotonic() + timeout
        while True:
            done = [o for o in self.decided() if o.sent_at >= sent_after]
            if len(done) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(done)} of {count} requests sent after t={sent_after:.1f} "
                    f"decided within {timeout}s: {self.summary()}"
                )
            self._decided.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), 0.5)

    async def first_decision_after(self, t: float, timeout: float) -> float:
        """The monotonic time of the first final decision received after ``t``."""
        deadline = time.monotonic() + timeout
        while True:
            after = [o.decided_at for o in self.outcomes if o.decided_at and o.decided_at > t]
            if after:
                return min(after)
            if time.monotonic() > deadline:
                raise AssertionError(f"no decision within {timeout}s after the fault")
            self._decided.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), 0.5)

    def max_gap_ms(self, since: float) -> float:
        """The longest time without a final decision from ``since`` to the last one."""
        times = sorted(o.decided_at for o in self.outcomes if o.decided_at and o.decided_at > since)
        points = [since, *times]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0) * 1000

    # ------------------------------------------------------------------ checking
    def summary(self) -> dict[str, Any]:
        errors: Counter[str] = Counter(e for o in self.outcomes for e in o.errors)
        return {
            "sent": len(self.outcomes),
            "decided": len(self.decided()),
            "lost": sum(o.decided_at is None for o in self.outcomes),
            "retried": sum(o.attempts > 1 for o in self.outcomes),
            "rejected_certificates": sum(len(o.rejections) for o in self.outcomes),
            "errors": dict(errors.most_common(8)),
        }

    async def audit(self, nc: Client, prefix: str) -> dict[str, Any]:
        """Check every outcome; return the summary with ``wrong`` (and its reasons)."""
        subjects = Subjects(prefix)
        pools: dict[int, frozenset[bytes]] = {}
        wrong: list[str] = []
        for o in self.outcomes:
            if o.rejections:
                wrong.append(f"{o.request.request_id}: client rejected {o.rejections[0]}")
            cert = o.cert
            if cert is None:
                continue
            expected = Decision.VALID if o.good else Decision.INVALID
            if cert.decision != expected:
                wrong.append(f"{o.request.request_id}: {cert.decision}, expected {expected}")
                continue
            if cert.epoch not in pools:
                pools[cert.epoch] = await _pool_keys(nc, subjects, cert.epoch)
            try:
                verify_certificate(cert, pools[cert.epoch], network=prefix)
            except CertificateInvalid as exc:
                wrong.append(f"{o.request.request_id}: {exc}")
        return {**self.summary(), "wrong": len(wrong), "wrong_examples": wrong[:5]}


async def _pool_keys(nc: Client, subjects: Subjects, epoch: int) -> frozenset[bytes]:
    """The keys of pool ``epoch``; a read that fails (TransportError: NATS busy, says
    nothing about the pool) is tried again a few times."""
    for attempt in range(5):
        try:
            return (await membership.pool_at(nc, subjects, epoch)).keys
        except TransportError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def counters(nc: Client, subject: str, within: float = 20.0) -> dict[str, int]:
    """A worker's counters from its status subject, asked until it answers: a worker
    just thawed or restarted works through a backlog first (one slow answer is not
    the fault under test; no answer within ``within`` is a failure)."""
    deadline = time.monotonic() + within
    while True:
        try:
            msg = await nc.request(subject, b"", timeout=2)
            return dict(MetricsSnapshot.decode(msg.data).counters)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise AssertionError(f"no status on {subject} within {within}s") from None
            await asyncio.sleep(0.2)


def report(fault: str, **fields: Any) -> str:
    """One JSON line per fault test (printed in the terminal summary by conftest)."""
    line = json.dumps({"fault": fault, **fields}, sort_keys=True, default=str)
    REPORTS.append(line)
    print(line)
    return line


REPORTS: list[str] = []
