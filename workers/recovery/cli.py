"""CLI of the recovery worker: ``worker recovery`` and ``recovery history``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from bus.call import call
from bus.subjects import Subjects
from schemas.errors import CodecError, ConfigError, NotConnected, TransportError
from schemas.recovery import MAX_HISTORY, HistoryQuery, HistoryReply
from workers.cli.kit import (
    EXIT_NOT_VALID,
    connection,
    field_default,
    int_at_least,
    json_option,
    nats_config,
    nats_options,
    output,
    positive,
    runtime_config,
    worker_options,
)
from workers.recovery.backends import (
    DEFAULT_UNIT,
    Backend,
    KubernetesBackend,
    LocalBackend,
    SystemdBackend,
)
from workers.recovery.staleness import RetryPolicy, parse_policy_override
from workers.recovery.worker import RecoveryOptions, RecoveryWorker

BACKENDS = ("local", "systemd", "kubernetes")
#: The defaults the worker's options show; ``RetryPolicy`` and ``RecoveryOptions``
#: are where they live.
POLICY_DEFAULTS = RetryPolicy()


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def backend_factory(args: argparse.Namespace) -> Any:
    """fn(nc, subjects) -> Backend, built once the worker is connected."""
    if args.backend == "systemd":
        systemd = SystemdBackend(
            systemctl=args.systemctl, user=args.systemd_user, unit_template=args.unit_template
        )
        return lambda nc, subjects: systemd
    if args.backend == "kubernetes":
        kube = KubernetesBackend(
            api=args.k8s_api,
            namespace=args.k8s_namespace,
            token_file=Path(args.k8s_token_file) if args.k8s_token_file else None,
            ca_file=Path(args.k8s_ca_file) if args.k8s_ca_file else None,
        )
        return lambda nc, subjects: kube

    def local(nc: Client, subjects: Subjects) -> Backend:
        return LocalBackend(
            nc, subjects, supervisor=args.supervisor, timeout=args.backend_timeout_s
        )

    return local


def make_worker(args: argparse.Namespace) -> RecoveryWorker:
    policy = RetryPolicy(
        max_retries=args.max_retries,
        base_s=args.backoff_s,
        max_backoff_s=max(args.backoff_max_s, args.backoff_s),
        jitter=args.jitter,
        startup_grace_s=args.startup_grace_s,
        reset_after_s=args.reset_after_s,
    )
    overrides = dict(parse_policy_override(text, policy) for text in args.policy or [])
    options = RecoveryOptions(
        policy=policy,
        overrides=overrides,
        missed=args.missed,
        replay_s=args.replay_s,
        only_host=args.only_host,
        kinds=frozenset(args.kinds.split(",")) if args.kinds else frozenset(),
    )
    return RecoveryWorker(
        runtime_config(args, args.id),
        options,
        backend_factory(args),
        key_file=Path(args.key_file) if args.key_file else None,
    )


# ---------------------------------------------------------------- history
async def fetch_history(
    nc: Client, subjects: Subjects, query: HistoryQuery, timeout: float
) -> HistoryReply:
    """The recovery worker's attempt history (through the one client call, bus/call.py)."""
    subject = subjects.recovery_history
    try:
        return await call(nc, subject, query, HistoryReply, timeout=timeout, service="recovery")
    except TransportError as exc:  # same class and code, with what the operator must know
        raise type(exc)(f"no recovery worker answered on {subject}: {exc}") from None


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


async def _history(args: argparse.Namespace) -> int:
    kind, worker_id = "", ""
    if args.worker:
        kind, _, worker_id = args.worker.partition("/")
        if not kind or not worker_id:
            raise ConfigError("--worker must be KIND/ID, e.g. verifier/v1")
    query = HistoryQuery(kind=kind, worker_id=worker_id, limit=min(args.limit, MAX_HISTORY))
    config = nats_config(args)
    async with connection(config, "agentic-payments-cli") as nc:
        reply = await fetch_history(nc, Subjects(config.prefix), query, args.timeout)
    rows = [a.as_dict() for a in reply.attempts]
    lines = [
        f"{'worker':<20} {'try':>3} {'outcome':<10} {'detected':<12} "
        f"{'respawned':<12} {'first hb':<12} gen dead->new  detail"
    ]
    for a in reply.attempts:
        lines.append(
            f"{a.kind + '/' + a.worker_id:<20} {a.attempt:>3} {a.outcome:<10} "
            f"{_when(a.detected_ms):<12} {_when(a.respawned_ms):<12} "
            f"{_when(a.first_heartbeat_ms):<12} {a.dead_generation}->"
            f"{a.new_generation or '?'}  {a.detail}"
        )
    output(args, "\n".join(lines) if rows else "no recovery attempts recorded", {"attempts": rows})
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_history(args))
    except CodecError as exc:
        print(f"error [{exc.code}]: bad reply: {exc}", file=sys.stderr)
        return EXIT_NOT_VALID
    except NotConnected:
        raise


# ---------------------------------------------------------------- parser
def register(sub: Any, kinds: Any) -> None:
    worker = kinds.add_parser(
        "recovery",
        help="respawn workers whose heartbeats stop",
        description="The recovery worker: reads every heartbeat (stream PREFIX_HEARTBEATS, "
        "replaying --replay-s of history at start), marks a worker stale after --missed "
        "heartbeat intervals without one, respawns it through a backend, retries with "
        "exponential backoff and jitter, and after --max-retries failed attempts gives up "
        "and raises a signed critical alert RECOVERY_GAVE_UP (a stale worker raises "
        "WORKER_STALE, high). Heartbeats of an older generation than one already seen "
        "(zombies) are ignored. Attempts are kept in the KV bucket PREFIX_recovery and "
        "answered on PREFIX.recovery.history ('agentic-payments recovery history'). "
        "A worker that stops cleanly (SIGTERM) is not respawned.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    worker.add_argument("--id", default="recovery1", help="recovery worker id")
    worker.add_argument(
        "--key-file",
        help="alert signing key (default DATA_DIR/keys/recovery-ID.key, created if missing)",
    )
    worker.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("AP_RECOVERY_BACKEND", "local"),
        help="how to respawn: local = the supervisor of 'agentic-payments "
        "up' over NATS; systemd = systemctl restart "
        "agentic-payments-KIND@ID.service; kubernetes = delete the pod "
        "(env AP_RECOVERY_BACKEND)",
    )
    worker.add_argument(
        "--missed",
        type=int_at_least(1),
        default=field_default(RecoveryOptions, "missed"),
        help="missed heartbeat intervals before a worker is stale",
    )
    worker.add_argument(
        "--max-retries",
        type=int_at_least(1),
        default=POLICY_DEFAULTS.max_retries,
        help="respawn attempts before giving up and escalating",
    )
    worker.add_argument(
        "--backoff-s",
        type=positive,
        default=POLICY_DEFAULTS.base_s,
        help="delay before the 2nd attempt; doubles for each further one",
    )
    worker.add_argument(
        "--backoff-max-s",
        type=positive,
        default=POLICY_DEFAULTS.max_backoff_s,
        help="longest delay between attempts",
    )
    worker.add_argument(
        "--jitter",
        type=_fraction,
        default=POLICY_DEFAULTS.jitter,
        help="each delay is multiplied by a random factor in [1-jitter, 1+jitter]",
    )
    worker.add_argument(
        "--startup-grace-s",
        type=positive,
        default=POLICY_DEFAULTS.startup_grace_s,
        help="an attempt fails if no heartbeat of a newer generation arrives within this time",
    )
    worker.add_argument(
        "--reset-after-s",
        type=positive,
        default=POLICY_DEFAULTS.reset_after_s,
        help="a worker that stays up this long gets its full retry budget back",
    )
    worker.add_argument(
        "--policy",
        action="append",
        metavar="KIND[/ID]:KEY=VALUE,...",
        help="a retry policy for one kind or one worker, from the options "
        "above, e.g. 'tally:max_retries=10,startup_grace_s=20' or "
        "'verifier/v1:base_s=2'; keys: max_retries, base_s, factor, "
        "max_backoff_s, jitter, startup_grace_s, reset_after_s (repeatable)",
    )
    worker.add_argument(
        "--replay-s",
        type=positive,
        default=field_default(RecoveryOptions, "replay_s"),
        help="heartbeat history replayed at start (catch-up after a restart)",
    )
    worker.add_argument(
        "--only-host",
        help="watch only workers whose heartbeat host is this "
        "(one recovery worker per host, e.g. with --backend systemd)",
    )
    worker.add_argument("--kinds", help="comma-separated worker kinds to watch (default all)")
    worker.add_argument(
        "--supervisor",
        default=os.environ.get("AP_SUPERVISOR"),
        help="local backend: the supervisor name to ask (env AP_SUPERVISOR; "
        "default: derived from each heartbeat's host, as 'up' names itself)",
    )
    worker.add_argument(
        "--backend-timeout-s",
        type=positive,
        default=10.0,
        help="local backend: seconds to wait for the supervisor's reply",
    )
    worker.add_argument("--systemctl", default="systemctl", help="systemd: systemctl binary")
    worker.add_argument("--systemd-user", action="store_true", help="systemd: use --user units")
    worker.add_argument(
        "--unit-template",
        default=DEFAULT_UNIT,
        help="systemd: unit name template",
    )
    worker.add_argument(
        "--k8s-api", help="kubernetes: API URL (default from KUBERNETES_SERVICE_HOST/PORT, https)"
    )
    worker.add_argument(
        "--k8s-namespace", help="kubernetes: namespace (default: the service account's namespace)"
    )
    worker.add_argument(
        "--k8s-token-file",
        help="kubernetes: bearer token file (default: the service account token)",
    )
    worker.add_argument(
        "--k8s-ca-file", help="kubernetes: CA bundle (default: the service account CA)"
    )
    worker_options(worker)
    worker.set_defaults(worker_factory=make_worker)

    recovery = sub.add_parser(
        "recovery",
        help="recovery attempt history",
        description="Ask a running recovery worker about its respawn attempts.",
    )
    actions = recovery.add_subparsers(dest="action", required=True, metavar="ACTION")
    history = actions.add_parser(
        "history",
        help="recent respawn attempts, newest first",
        description="Recent respawn attempts (from the KV bucket PREFIX_recovery, through "
        "the recovery worker on PREFIX.recovery.history): worker, attempt number, outcome "
        "(pending, respawned, recovered, failed, gave_up), when the worker was detected "
        "stale, respawned and first heard of again, and its dead and new generation. "
        "Exit 0 on an answer, 69 if no recovery worker answers.",
    )
    nats_options(history)
    history.add_argument("--worker", help="only this worker, as KIND/ID (verifier/v1)")
    history.add_argument(
        "--limit",
        type=int_at_least(1),
        default=50,
        help=f"most attempts to show (at most {MAX_HISTORY}, default %(default)s)",
    )
    history.add_argument(
        "--timeout", type=positive, default=5.0, help="seconds to wait (default %(default)s)"
    )
    json_option(history)
    history.set_defaults(func=cmd_history)
