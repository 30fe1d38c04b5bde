"""CLI for the anomaly area: ``worker anomaly`` and ``alerts``."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from bus.subjects import Subjects
from schemas.alerts import SEVERITY_ORDER, Alert, Severity
from schemas.quorum import MIN_POOL
from workers.anomaly.baseline import BaselineConfig, Method
from workers.anomaly.byzantine_rules import QuarantineMode, QuarantinePolicy
from workers.anomaly.worker import AnomalyOptions, AnomalyWorker, recent_alerts
from workers.cli.kit import (
    EXIT_CONNECT,
    EXIT_NOT_VALID,
    connection,
    json_option,
    nats_config,
    nats_options,
    non_negative,
    output,
    positive,
    runtime_config,
    worker_options,
)

#: The defaults the worker's options show; the options dataclasses are where they live.
BASELINE = BaselineConfig()
POLICY = QuarantinePolicy()
OPTIONS = AnomalyOptions()

WORKER_HELP = """\
Watches {prefix}.metrics.> (replayed from the PREFIX_METRICS stream at start, so
a restart rebuilds its baselines), {prefix}.vote.> and {prefix}.decision.>, and
publishes signed alerts on PREFIX.alert.SEVERITY (kept in PREFIX_ALERTS).

Metric anomalies: per worker and metric (processing_ms, failure_rate,
vote_disagreement) a rolling window; score = |x - centre| / spread, with
centre/spread = mean/stddev (--method sigma) or median/1.4826*MAD (--method mad).
Anomalous at score >= --score-threshold; raised after --raise-after anomalous
samples in a row, cleared after --clear-after normal ones. Severity: low
below 5, medium 5-8, high from 8. Critical = Byzantine verifier only.

Byzantine verifiers (a signed vote against a certified decision, or two
different signed votes for one ballot) are alerted at critical and, with
--quarantine quarantine, taken out of the pool (member status 'quarantined',
new epoch) unless fewer than --min-pool verifiers would remain or the rate
limit is hit."""

ALERTS_HELP = """\
Read recent alerts from the PREFIX_ALERTS stream, oldest first, checking each
signature. Exit 0 when alerts were found, 1 when none matched, 69 when NATS
or the stream is unavailable."""


def _worker_factory(args: argparse.Namespace) -> AnomalyWorker:
    baseline = BaselineConfig(
        window=args.window,
        method=Method(args.method),
        warmup=args.warmup,
        threshold=args.score_threshold,
        raise_after=args.raise_after,
        clear_after=args.clear_after,
        rel_spread=args.rel_spread,
    )
    policy = QuarantinePolicy(
        mode=QuarantineMode(args.quarantine),
        min_pool=args.min_pool,
        min_interval_s=args.quarantine_interval_s,
        max_per_hour=args.max_quarantines_per_hour,
    )
    options = AnomalyOptions(
        baseline=baseline,
        policy=policy,
        byzantine_after=args.byzantine_after,
        realert_s=args.realert_s,
        history_s=args.history_s,
        alerts_days=args.alerts_days,
    )
    return AnomalyWorker(
        runtime_config(args, args.id),
        options,
        key_file=Path(args.key_file) if args.key_file else None,
    )


async def read_alerts(nc: Any, subjects: Subjects, since_s: float) -> list[tuple[Alert, bool]]:
    """Alerts stored in the last ``since_s`` seconds, with whether each signature holds."""
    return [(alert, alert.signature_ok()) for alert in await recent_alerts(nc, subjects, since_s)]


async def _alerts(args: argparse.Namespace) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-alerts") as nc:
        try:
            found = await read_alerts(nc, Subjects(config.prefix), args.since_s)
        except NotFoundError:
            print(
                f"error [NOT_FOUND]: no alerts stream {Subjects(config.prefix).alerts_stream} "
                "(is an anomaly worker running?)",
                file=sys.stderr,
            )
            return EXIT_CONNECT
    least = SEVERITY_ORDER.index(Severity(args.severity))
    rows = [(a, ok) for a, ok in found if SEVERITY_ORDER.index(Severity(a.severity)) >= least]
    rows = rows[-args.limit :]
    data = {
        "alerts": [
            {
                "alert_id": a.alert_id,
                "severity": a.severity,
                "code": a.code,
                "subject_kind": a.subject_kind,
                "subject_id": a.subject_id,
                "summary": a.summary,
                "ts_ms": a.ts_ms,
                "source_kind": a.source_kind,
                "source_id": a.source_id,
                "signer": a.signer.hex(),
                "signature_ok": ok,
                "details": a.details,
            }
            for a, ok in rows
        ]
    }
    lines = [
        f"{datetime.datetime.fromtimestamp(a.ts_ms / 1000, datetime.UTC):%Y-%m-%d %H:%M:%S} "
        f"{a.severity:<8} {a.code:<22} {a.subject_kind}/{a.subject_id}  {a.summary}"
        f"{'' if ok else '  [BAD SIGNATURE]'}"
        for a, ok in rows
    ]
    output(args, "\n".join(lines) or "no alerts", data)
    return 0 if rows else EXIT_NOT_VALID


def cmd_alerts(args: argparse.Namespace) -> int:
    return asyncio.run(_alerts(args))


def register(sub: Any, kinds: Any) -> None:
    worker = kinds.add_parser(
        "anomaly",
        help="metric anomalies and Byzantine verifiers",
        description=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--id", default="anomaly1", help="worker id (default %(default)s)")
    worker.add_argument(
        "--key-file",
        help="Ed25519 key signing the alerts (default "
        "DATA_DIR/keys/anomaly-ID.key, created if missing)",
    )
    worker.add_argument(
        "--method",
        choices=[m.value for m in Method],
        default=BASELINE.method.value,
        help="baseline statistic: sigma (mean/stddev, the 3-sigma rule) or mad "
        "(median/MAD, robust to outliers) (default %(default)s)",
    )
    worker.add_argument(
        "--window",
        type=int,
        default=BASELINE.window,
        help="samples per baseline (default %(default)s)",
    )
    worker.add_argument(
        "--warmup",
        type=int,
        default=BASELINE.warmup,
        help="samples needed before anything is scored (default %(default)s)",
    )
    worker.add_argument(
        "--score-threshold",
        type=positive,
        default=BASELINE.threshold,
        help="score from which a sample is anomalous (default %(default)s)",
    )
    worker.add_argument(
        "--raise-after",
        type=int,
        default=BASELINE.raise_after,
        help="anomalous samples in a row that raise an alert (default %(default)s)",
    )
    worker.add_argument(
        "--clear-after",
        type=int,
        default=BASELINE.clear_after,
        help="normal samples in a row that clear it (default %(default)s)",
    )
    worker.add_argument(
        "--rel-spread",
        type=non_negative,
        default=BASELINE.rel_spread,
        help="zero-variance guard: spread is at least this fraction of the "
        "centre (default %(default)s), and at least a per-metric absolute floor",
    )
    worker.add_argument(
        "--quarantine",
        choices=[m.value for m in QuarantineMode],
        default=POLICY.mode.value,
        help="Byzantine verifiers: off (count only), alert-only, or "
        "quarantine (alert and take out of the pool) (default %(default)s)",
    )
    worker.add_argument(
        "--min-pool",
        type=int,
        default=POLICY.min_pool,
        help="never quarantine below this many active verifiers (default %(default)s, "
        f"minimum {MIN_POOL})",
    )
    worker.add_argument(
        "--quarantine-interval-s",
        type=non_negative,
        default=POLICY.min_interval_s,
        help="at most one quarantine per this many seconds (default %(default)s)",
    )
    worker.add_argument(
        "--max-quarantines-per-hour",
        type=int,
        default=POLICY.max_per_hour,
        help="at most this many quarantines in any hour (default %(default)s)",
    )
    worker.add_argument(
        "--byzantine-after",
        type=int,
        default=OPTIONS.byzantine_after,
        help="signed votes against a certified outcome before a verifier is Byzantine "
        "(default %(default)s)",
    )
    worker.add_argument(
        "--realert-s",
        type=positive,
        default=OPTIONS.realert_s,
        help="alert again about a Byzantine verifier still in the pool after "
        "this long (default %(default)s); quarantine is re-evaluated on every offence, so "
        "a rate-limited one goes as soon as the limit allows",
    )
    worker.add_argument(
        "--history-s",
        type=positive,
        default=OPTIONS.history_s,
        help="max age of the heartbeat/metrics streams if this worker creates them "
        "(default %(default)s)",
    )
    worker.add_argument(
        "--alerts-days",
        type=positive,
        default=OPTIONS.alerts_days,
        help="retention of the alerts stream if this worker creates it (default %(default)s)",
    )
    worker_options(worker)
    worker.set_defaults(worker_factory=_worker_factory)

    alerts = sub.add_parser("alerts", help="read recent signed alerts", description=ALERTS_HELP)
    nats_options(alerts)
    alerts.add_argument(
        "--since-s",
        type=positive,
        default=3600.0,
        help="how far back to read, seconds (default %(default)s)",
    )
    alerts.add_argument(
        "--severity",
        choices=[s.value for s in Severity],
        default="low",
        help="least severity shown (default %(default)s)",
    )
    alerts.add_argument(
        "--limit", type=int, default=100, help="most alerts shown (default %(default)s)"
    )
    json_option(alerts)
    alerts.set_defaults(func=cmd_alerts)
