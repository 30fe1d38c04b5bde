"""The anomaly worker: rolling baselines over metrics, Byzantine-verifier detection.

Inputs:

* ``{prefix}_METRICS`` (stream over ``{prefix}.metrics.>``), read with an
  ordered ephemeral consumer from the start of the stream: a restarted worker
  replays the recent history (the stream is bounded by age) and rebuilds its
  baselines before it sees live snapshots. From each pair of consecutive
  snapshots of one worker instance it derives per-interval samples
  (``processing_ms`` = mean task time in the interval, ``failure_rate`` =
  failed / tasks in the interval) and feeds them to workers/anomaly/baseline.py.
* ``{prefix}.vote.>`` and ``{prefix}.decision.>`` (core subscriptions):
  votes are kept if their signature verifies and their key was an active pool
  member at the vote's epoch; certificates if they verify against that pool.
  workers/anomaly/byzantine_rules.py correlates the two (the ``vote_disagreement``
  series gets 1/0 for each verifier whose vote was in when a request was
  decided) and yields signed evidence: a vote against the decided outcome or
  an equivocation.
* ``{prefix}.evidence.equivocation`` from the tallies, re-checked by the tally's
  own vote admission rules (schemas/votes.equivocation_refusal): two votes prove
  equivocation only if both are validly signed by one pool key for the same
  question (ballot id, tally id, epoch, state revision, requests) and their
  verdicts differ — so nobody can frame a verifier with two honest answers to
  two different questions.

Outputs: signed Alerts (schemas/alerts.py) on ``{prefix}.alert.{severity}``,
stored by the ``{prefix}_ALERTS`` stream (created here if missing, 30 days).
A Byzantine verifier is alerted at CRITICAL and — when the QuarantinePolicy
allows — quarantined: its membership record gets status ``quarantined``
(compare-and-set), which every PoolWatcher treats as out of the pool, with a
new epoch.

Alert ids are deterministic (metric alerts: from the metrics stream sequence
of the sample that caused them), and on start the worker reads the ids of its
own recent alerts from the alerts stream: replaying history after a restart
re-raises nothing that was already raised, but an anomaly that happened while
no anomaly worker ran is still reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.membership import ACTIVE, PoolWatcher
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.streams import ensure_stream, ensure_telemetry_streams
from bus.subjects import Subjects, telemetry_source
from bus.tail import StoredMsg, StreamFollower, read_until_caught_up, stream_info
from schemas.alerts import Alert, Severity, sign_alert
from schemas.certificate import verify_certificate
from schemas.codec import decode
from schemas.errors import CertificateInvalid, CodecError, ConfigError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, MetricsSnapshot, Vote
from schemas.votes import equivocation_refusal, vote_signature_ok
from workers.anomaly.baseline import (
    BaselineConfig,
    Event,
    EventKind,
    SeriesDetector,
    interval_samples,
)
from workers.anomaly.byzantine_rules import (
    Action,
    Disagreement,
    Equivocation,
    QuarantinePolicy,
    VoteLedger,
    decide_quarantine,
)

log = logging.getLogger("agentic_payments.anomaly")

#: Zero-variance guard per metric: the least spread a baseline is given, in the
#: metric's unit. A change smaller than 3x this never alerts, however flat the
#: history was.
METRIC_FLOORS: dict[str, float] = {
    "processing_ms": 0.5,
    "failure_rate": 0.02,
    "vote_disagreement": 0.05,
}
MAX_SERIES = 10_000
MAX_VIEWS = 32
#: Hashes (16 bytes) of recently handled vote and evidence bytes.
MAX_SEEN = 65_536
CODE_METRIC = "METRIC_ANOMALY"
CODE_METRIC_CLEARED = "METRIC_ANOMALY_CLEARED"
CODE_BYZANTINE_VOTE = "BYZANTINE_VOTE"
CODE_EQUIVOCATION = "EQUIVOCATION"


@dataclass(frozen=True)
class AnomalyOptions:
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    policy: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    #: signed votes against a certified outcome before a verifier is Byzantine
    byzantine_after: int = 1
    #: a Byzantine verifier not quarantined is alerted again after this long
    realert_s: float = 300.0
    #: max age of the heartbeat/metrics streams when this worker creates them
    history_s: float = 3600.0
    alerts_days: float = 30.0

    def __post_init__(self) -> None:
        if self.byzantine_after < 1:
            raise ConfigError("byzantine-after must be at least 1")
        if self.realert_s <= 0 or self.history_s <= 0 or self.alerts_days <= 0:
            raise ConfigError("re-alert interval, history and alert retention must be positive")


def alert_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


class AnomalyWorker(Worker):
    """Watches metrics and votes; raises signed alerts; quarantines Byzantine verifiers."""

    kind = "anomaly"

    def __init__(
        self,
        runtime: RuntimeConfig,
        options: AnomalyOptions | None = None,
        *,
        key_file: Path | None = None,
    ) -> None:
        super().__init__(runtime)
        self.options = options or AnomalyOptions()
        self.key_file = key_file or runtime.data_dir / "keys" / f"anomaly-{self.worker_id}.key"
        self.identity = AgentIdentity.load_or_create(self.key_file)
        self._pool: PoolWatcher | None = None
        self._views: OrderedDict[int, membership.PoolView] = OrderedDict()
        self._ledger = VoteLedger()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._series: OrderedDict[tuple[str, str, str], SeriesDetector] = OrderedDict()
        self._last_snapshot: OrderedDict[tuple[str, str], MetricsSnapshot] = OrderedDict()
        self._offences: dict[bytes, int] = {}
        self._handled: dict[bytes, tuple[float, bool]] = {}
        self._quarantines: list[float] = []
        self._known_alerts: set[str] = set()
        self._replay_end = 0
        self.replayed = asyncio.Event()
        self._metrics_sub: Any = None

    def extra_metadata(self) -> dict[str, str]:
        return {
            "public_key": self.identity.public_key_hex,
            "method": self.options.baseline.method.value,
            "quarantine": self.options.policy.mode.value,
        }

    # ------------------------------------------------------------------ setup
    async def setup(self) -> None:
        nc = self.client
        await ensure_telemetry_streams(nc, self.subjects, max_age_s=self.options.history_s)
        await ensure_stream(
            nc,
            self.subjects.alerts_stream,
            [self.subjects.alerts_all],
            max_age_s=self.options.alerts_days * 86400,
            description="agentic-payments signed alerts",
        )
        self._pool = PoolWatcher(nc, self.subjects)
        await self._pool.start()
        self._remember_view()
        self._known_alerts = await self._own_recent_alert_ids()
        info = await stream_info(nc, self.subjects.metrics_stream)
        self._replay_end = info.last_seq
        if self._replay_end == 0:
            self.replayed.set()
        # read from the stream without a consumer (bus/tail.py): no role but admin
        # may create one, since a consumer's deliver subject is not checked
        self._metrics_sub = StreamFollower(
            nc,
            self.subjects.metrics_stream,
            [self.subjects.metrics_all],
            self._on_metrics,
            seq=1,
            on_caught_up=self.replayed.set,
        )
        await self._metrics_sub.start()
        await self.subscribe_intake(self.subjects.votes_all, self._on_vote)
        await self.subscribe_intake(self.subjects.decisions_all, self._on_decision)
        await self.subscribe_intake(self.subjects.equivocation, self._on_equivocation)

    async def teardown(self) -> None:
        if self._metrics_sub is not None:
            with contextlib.suppress(Exception):
                await self._metrics_sub.stop()
        if self._pool is not None:
            await self._pool.stop()

    async def _own_recent_alert_ids(self) -> set[str]:
        """Ids of the alerts this worker id published within the history window."""
        return {
            a.alert_id
            for a in await recent_alerts(self.client, self.subjects, self.options.history_s)
            if a.source_id == self.worker_id and a.source_kind == self.kind
        }

    # ------------------------------------------------------------------ alerts
    async def publish_alert(
        self,
        *,
        aid: str,
        severity: Severity,
        code: str,
        subject_kind: str,
        subject_id: str,
        summary: str,
        details: dict[str, Any],
    ) -> Alert | None:
        if aid in self._known_alerts:
            self.stats.count("alerts_already_published")
            return None
        alert = sign_alert(
            self.identity,
            alert_id=aid,
            severity=severity,
            code=code,
            subject_kind=subject_kind,
            subject_id=subject_id,
            summary=summary,
            ts_ms=now_ms(),
            source_kind=self.kind,
            source_id=self.worker_id,
            details=details,
        )
        subject = self.subjects.alert(severity.value)
        try:
            await self.client.jetstream().publish(subject, alert.encode(), timeout=5.0)
        except Exception as exc:  # the stream may be gone: still tell live subscribers
            log.warning(
                "alert not stored in %s (%s); publishing it live only",
                self.subjects.alerts_stream,
                exc,
            )
            self.stats.count("alert_store_errors")
            await self.client.publish(subject, alert.encode())
        self._known_alerts.add(aid)
        self.stats.count(f"alerts_{severity.value}")
        log.warning(
            "alert %s %s %s/%s: %s", severity.value, code, subject_kind, subject_id, summary
        )
        return alert

    # ------------------------------------------------------------------ metrics
    def detector(self, kind: str, worker_id: str, metric: str) -> SeriesDetector:
        key = (kind, worker_id, metric)
        det = self._series.get(key)
        if det is None:
            config = replace(
                self.options.baseline,
                min_spread=METRIC_FLOORS.get(metric, self.options.baseline.min_spread),
            )
            det = self._series[key] = SeriesDetector(config)
            while len(self._series) > MAX_SERIES:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        return det

    async def _on_metrics(self, msg: StoredMsg, pending: int) -> None:
        started = time.perf_counter()
        ok = True
        try:
            seq = msg.seq
            try:
                snap = MetricsSnapshot.decode(msg.data)
            except CodecError as exc:
                self.stats.count(f"metrics_rejected_{exc.code}")
                return
            if telemetry_source(self.subjects, msg.subject) != (snap.kind, snap.worker_id):
                self.stats.count("metrics_subject_mismatch")  # a worker speaking for another
                return
            self.stats.count("metrics_replayed" if seq <= self._replay_end else "metrics_live")
            key = (snap.kind, snap.worker_id)
            samples = interval_samples(self._last_snapshot.get(key), snap)
            self._last_snapshot[key] = snap
            self._last_snapshot.move_to_end(key)
            while len(self._last_snapshot) > MAX_SERIES:  # bounded against junk worker ids
                self._last_snapshot.popitem(last=False)
            for metric, value in samples.items():
                event = self.detector(snap.kind, snap.worker_id, metric).observe(value)
                if event is not None:
                    await self._metric_event(
                        snap.kind, snap.worker_id, metric, event, f"m{seq}", snap.ts_ms
                    )
        except Exception:
            ok = False
            log.exception("failed to process a metrics snapshot")
        finally:
            self.stats.record((time.perf_counter() - started) * 1000, ok)
            if msg.seq >= self._replay_end or pending == 0:
                self.replayed.set()  # caught up (also if the last message aged out meanwhile)

    async def _metric_event(
        self, kind: str, worker_id: str, metric: str, event: Event, origin: str, sample_ts_ms: int
    ) -> None:
        s = event.score
        verb = {
            EventKind.RAISED: "is anomalous",
            EventKind.ESCALATED: "got worse",
            EventKind.CLEARED: "is back to normal",
        }[event.kind]
        await self.publish_alert(
            aid=alert_id(self.worker_id, kind, worker_id, metric, origin, event.kind),
            severity=event.severity,
            code=CODE_METRIC_CLEARED if event.kind is EventKind.CLEARED else CODE_METRIC,
            subject_kind=kind,
            subject_id=worker_id,
            summary=(
                f"{metric} of {kind} {worker_id} {verb}: {s.value:.4g} vs baseline "
                f"{s.centre:.4g} ± {s.spread:.4g} (score {s.score:.1f}, "
                f"{self.options.baseline.method.value})"
            ),
            details={
                "metric": metric,
                "event": event.kind.value,
                "value": s.value,
                "centre": s.centre,
                "spread": s.spread,
                "score": round(s.score, 3),
                "method": self.options.baseline.method.value,
                "sample_ts_ms": sample_ts_ms,
            },
        )

    # ------------------------------------------------------------------ votes
    def _remember_view(self) -> membership.PoolView:
        assert self._pool is not None
        view = self._pool.view
        if view.epoch not in self._views:
            self._views[view.epoch] = view
            while len(self._views) > MAX_VIEWS:
                self._views.popitem(last=False)
        return view

    def _view_at(self, epoch: int) -> membership.PoolView | None:
        self._remember_view()
        return self._views.get(epoch)

    def _verified_vote(self, data: bytes, *, ledger: bool = False) -> Vote | None:
        """A vote we can hold against its signer, or None (counted). With ``ledger``,
        a vote the ledger would learn nothing from is dropped before its signature
        check (copies, re-signings, a known equivocator's further votes)."""
        try:
            vote = Vote.decode(data)
        except CodecError as exc:
            self.stats.count(f"vote_ignored_{exc.code}")
            return None
        if ledger and not self._ledger.worth_checking(vote):
            self.stats.count("vote_ignored_nothing_new")
            return None
        view = self._view_at(vote.epoch)
        if view is None:
            self.stats.count("vote_ignored_unknown_epoch")
            return None
        if vote.verifier_key not in view.keys:
            self.stats.count("vote_ignored_not_member")
            return None
        if not vote_signature_ok(vote, network=self.subjects.prefix):
            self.stats.count("vote_ignored_bad_signature")
            return None
        return vote

    def _seen_before(self, kind: str, data: bytes) -> bool:
        """Whether these exact bytes were handled recently as a ``kind`` ("vote" or
        "evidence"): a flood of copies costs a hash each here, not a signature check."""
        digest = hashlib.blake2b(data, digest_size=16, person=kind.encode()).digest()
        if digest in self._seen:
            self.stats.count(f"{kind}_ignored_duplicate")
            return True
        self._seen[digest] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        return False

    async def _on_vote(self, msg: Msg) -> None:
        if self._seen_before("vote", msg.data):
            return
        vote = self._verified_vote(msg.data, ledger=True)
        if vote is None:
            return
        self.stats.count("votes_checked")
        disagreements, equivocation = self._ledger.add_vote(vote)
        if equivocation is not None:
            await self._equivocated(equivocation, vote.epoch)
        if disagreements:
            await self._disagreed(disagreements, vote.epoch)

    async def _on_decision(self, msg: Msg) -> None:
        try:
            cert = ConsensusResult.decode(msg.data)
            view = self._view_at(cert.epoch)
            if view is None:
                self.stats.count("decision_ignored_unknown_epoch")
                return
            verify_certificate(cert, view.keys, threshold=None, network=self.subjects.prefix)
        except (CodecError, CertificateInvalid) as exc:
            self.stats.count(f"decision_ignored_{exc.code}")
            return
        self.stats.count("decisions_checked")
        disagreements = self._ledger.add_decision(
            cert.ballot_id, cert.request_id, cert.request_digest, cert.decision, cert.state_rev
        )
        names = {m.public_key: m.worker_id for m in view.members}
        for key, agreed in self._ledger.agreements(cert.ballot_id, cert.request_id).items():
            worker_id = names.get(key)
            if worker_id is None:
                continue
            event = self.detector("verifier", worker_id, "vote_disagreement").observe(
                0.0 if agreed else 1.0
            )
            if event is not None:
                await self._metric_event(
                    "verifier",
                    worker_id,
                    "vote_disagreement",
                    event,
                    f"d{cert.ballot_id}/{cert.request_id}",
                    cert.decided_at_ms,
                )
        if disagreements:
            await self._disagreed(disagreements, cert.epoch)

    async def _on_equivocation(self, msg: Msg) -> None:
        """Evidence from a tally, re-checked: two valid, different votes of a member."""
        if self._seen_before("evidence", msg.data):
            return
        try:
            obj = decode(msg.data)
            if not isinstance(obj, dict) or obj.get("type") != "equivocation" or obj.get("v") != 1:
                raise CodecError("not a version 1 equivocation record")
            first, second = obj.get("first"), obj.get("second")
            if not isinstance(first, bytes) or not isinstance(second, bytes):
                raise CodecError("equivocation votes must be bytes")
        except CodecError as exc:
            self.stats.count(f"evidence_ignored_{exc.code}")
            return
        try:
            a, b = Vote.decode(first), Vote.decode(second)
        except CodecError as exc:
            self.stats.count(f"evidence_ignored_{exc.code}")
            return
        view = self._view_at(a.epoch)
        if view is None:
            self.stats.count("evidence_ignored_unknown_epoch")
            return
        # the tally's own admission rules (schemas/votes.py): both votes admitted
        # against the same question, by the same pool key, with different verdicts
        refusal = equivocation_refusal(a, b, view.keys, network=self.subjects.prefix)
        if refusal is not None:
            self.stats.count("evidence_ignored_unproven")
            self.stats.count(f"evidence_ignored_{refusal}")
            return
        self.stats.count("evidence_checked")
        await self._equivocated(Equivocation(a.verifier_key, a.ballot_id, a, b), a.epoch)

    # ------------------------------------------------------------------ Byzantine
    def _member(self, key: bytes, epoch: int) -> str:
        for view in (self._pool.view if self._pool else None, self._views.get(epoch)):
            if view is not None:
                for m in view.verifiers:
                    if m.public_key == key:
                        return m.worker_id
        return key.hex()[:16]

    async def _disagreed(self, found: list[Disagreement], epoch: int) -> None:
        by_key: dict[bytes, list[Disagreement]] = {}
        for d in found:
            by_key.setdefault(d.verifier_key, []).append(d)
        for key, items in by_key.items():
            self._offences[key] = self._offences.get(key, 0) + len(items)
            self.stats.count("byzantine_votes", len(items))
            if self._offences[key] < self.options.byzantine_after:
                continue
            first = items[0]
            await self._byzantine(
                key,
                epoch,
                CODE_BYZANTINE_VOTE,
                f"signed {len(items)} verdict(s) against the certified "
                f"outcome (e.g. {first.request_id}: voted "
                f"{'VALID' if first.voted_valid else 'INVALID'}, decided "
                f"{first.decision})",
                {
                    "ballot_id": first.ballot_id,
                    "request_id": first.request_id,
                    "decision": first.decision,
                    "offences": self._offences[key],
                },
            )

    async def _equivocated(self, ev: Equivocation, epoch: int) -> None:
        self.stats.count("equivocations")
        await self._byzantine(
            ev.verifier_key,
            epoch,
            CODE_EQUIVOCATION,
            f"signed two different votes for ballot {ev.ballot_id}",
            {
                "ballot_id": ev.ballot_id,
                "first_ts_ms": ev.first.ts_ms,
                "second_ts_ms": ev.second.ts_ms,
            },
        )

    async def _byzantine(
        self, key: bytes, epoch: int, code: str, what: str, details: dict[str, Any]
    ) -> None:
        now = time.monotonic()
        handled = self._handled.get(key)
        if handled is not None and handled[1]:
            return  # quarantined by us already
        assert self._pool is not None
        view = self._pool.view
        worker_id = self._member(key, epoch)
        # the seat from the validated pool: its id is its KV key, never a record's claim
        record = view.seat_of(key)
        if record is not None and record.status != ACTIVE:
            record = None
        is_member = record is not None and key in view.keys
        verdict = decide_quarantine(
            self.options.policy,
            active=len(view.keys),
            is_member=is_member,
            now=now,
            recent=self._quarantines,
            seats=len(view.verifiers),
            quarantined=sum(1 for m in view.verifiers if m.status != ACTIVE),
        )
        if verdict.action is Action.IGNORE:
            self.stats.count("byzantine_ignored_by_policy")
            return
        if (
            verdict.action is Action.ALERT
            and handled is not None
            and now - handled[0] < self.options.realert_s
        ):
            return  # alerted recently; re-evaluated (e.g. the rate limit) on every offence
        quarantined = False
        new_epoch = 0
        if verdict.action is Action.QUARANTINE and record is not None:
            try:
                revision = await membership.quarantine(
                    self.client, self.subjects, record.worker_id, key
                )
            except Exception as exc:
                log.error("could not quarantine %s: %s", record.worker_id, exc)
                revision = None
            if revision is not None:
                quarantined, new_epoch = True, revision
                self._quarantines.append(now)
                self._quarantines = [t for t in self._quarantines if now - t < 3600]
                self.stats.count("quarantines")
        self._handled[key] = (now, quarantined)
        action = (
            f"quarantined: out of the pool from epoch {new_epoch}"
            if quarantined
            else f"not quarantined ({verdict.reason})"
        )
        await self.publish_alert(
            aid=alert_id(self.worker_id, code, key.hex(), now_ms()),
            severity=Severity.CRITICAL,
            code=code,
            subject_kind="verifier",
            subject_id=worker_id[:64],
            summary=f"Byzantine verifier {worker_id}: {what}; {action}",
            details={
                **details,
                "verifier_key": key.hex(),
                "epoch": epoch,
                "quarantined": quarantined,
                "new_epoch": new_epoch,
                "policy": self.options.policy.mode.value,
                "reason": verdict.reason,
            },
        )


async def recent_alerts(nc: Client, subjects: Subjects, since_s: float) -> list[Alert]:
    """Alerts the alerts stream holds from the last ``since_s`` seconds (decodable ones)."""
    info = await stream_info(nc, subjects.alerts_stream)
    if info.last_seq == 0:
        return []
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=since_s)
    out: list[Alert] = []
    for stored in await read_until_caught_up(
        nc, subjects.alerts_stream, seq=1, start_time=start, direct=info.allow_direct
    ):
        with contextlib.suppress(CodecError):
            out.append(Alert.decode(stored.data))
    return out
