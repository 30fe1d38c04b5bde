"""Operator commands: ``members``, ``status``, ``check`` and the ``discover`` they use.

What belongs to no single worker kind: the verifier pool (membership bucket),
every worker's health found through ``$SRV.PING``, and the per-worker probe
``check`` (readiness over NATS, ``--liveness`` from the local file alone,
workers/cli/probes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from fractions import Fraction
from typing import Any

from bus import membership
from bus.call import call
from bus.runtime import default_data_dir
from bus.subjects import Subjects
from schemas.errors import ConfigError
from schemas.messages import Health, MetricsSnapshot
from schemas.quorum import QuorumRule
from workers.cli.kit import (
    EXIT_CONNECT,
    EXIT_NOT_VALID,
    client_threshold,
    connection,
    json_option,
    nats_config,
    nats_options,
    output,
    positive,
    threshold_option,
    token,
)
from workers.cli.probes import check_liveness

#: How long ``discover`` (and ``status``) collect $SRV.PING answers.
DISCOVER_WAIT_S = 0.5


# ---------------------------------------------------------------- members, status
async def _members(args: argparse.Namespace) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-cli") as nc:
        subjects = Subjects(config.prefix)
        if args.action == "remove":
            removed = await membership.remove(nc, subjects, args.id)
            print(f"removed {args.id}" if removed else f"{args.id} is not a member")
            return 0 if removed else EXIT_NOT_VALID
        pool = await membership.read_pool(nc, subjects)
        rows = [
            {"id": m.worker_id, "public_key": m.public_key.hex(), "status": m.status}
            for m in pool.verifiers
        ]
        tallies = [
            {"id": m.worker_id, "public_key": m.public_key.hex(), "status": m.status}
            for m in pool.tallies
        ]
        output(
            args,
            f"epoch {pool.epoch}, {len(pool.keys)} active\n"
            + "\n".join(
                [f"  {r['id']:<12} {r['status']:<8} {r['public_key']}" for r in rows + tallies]
                + [
                    f"  {seat:<12} quarantine NOT honoured (f seats are out already): "
                    f"an operator decides"
                    for seat in pool.over_cap
                ]
                + [f"  ignored: {why}" for _, why in pool.rejected]
            ),
            {
                "epoch": pool.epoch,
                "members": rows,
                "tallies": tallies,
                "quarantine_over_cap": list(pool.over_cap),
                "rejected": [{"key": k, "why": w} for k, w in pool.rejected],
            },
        )
        return 0


def cmd_members(args: argparse.Namespace) -> int:
    return asyncio.run(_members(args))


async def discover(nc: Any, prefix: str, wait: float = DISCOVER_WAIT_S) -> list[dict[str, Any]]:
    """Every agentic-payments service answering $SRV.PING under ``prefix``."""
    inbox = nc.new_inbox()
    found: list[dict[str, Any]] = []
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.PING", b"", reply=inbox)
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        async with asyncio.timeout(wait):
            async for msg in sub.messages:
                info = json.loads(msg.data)
                meta = info.get("metadata") or {}
                if (
                    info.get("name", "").startswith("agentic-payments-")
                    and meta.get("prefix") == prefix
                ):
                    found.append(info)
    await sub.unsubscribe()
    return found


async def _status(args: argparse.Namespace) -> int:
    config = nats_config(args)
    subjects = Subjects(config.prefix)
    async with connection(config, "agentic-payments-cli") as nc:
        services = await discover(nc, config.prefix, args.wait)
        rows = []
        for info in sorted(services, key=lambda i: (i["name"], i["metadata"].get("worker_id"))):
            meta = info["metadata"]
            row: dict[str, Any] = {
                "kind": meta.get("kind"),
                "id": meta.get("worker_id"),
                "instance": meta.get("instance"),
                "service_id": info["id"],
            }
            try:
                subject = subjects.status(str(meta["kind"]), str(meta["worker_id"]))
                snap = await call(nc, subject, b"", MetricsSnapshot, timeout=1, service="status")
                row.update(
                    health=snap.health,
                    tasks=snap.tasks,
                    failures=snap.failures,
                    avg_ms=snap.avg_ms,
                    p99_ms=snap.p99_ms,
                )
            except Exception:
                row["health"] = "unknown"
            rows.append(row)
        pool = await membership.read_pool(nc, subjects)
    problems = status_problems(rows, pool, client_threshold(args.threshold))
    lines = [
        f"{r['kind']:<9} {r['id']:<10} {r['health']:<12} tasks={r.get('tasks', '?')} "
        f"failures={r.get('failures', '?')} p99={r.get('p99_ms', '?')}ms"
        for r in rows
    ]
    output(
        args,
        "\n".join(lines or ["no workers found"] + [f"PROBLEM: {p}" for p in problems]),
        {"workers": rows, "pool_epoch": pool.epoch, "problems": problems},
    )
    return 0 if rows and not problems else EXIT_NOT_VALID


def status_problems(
    rows: list[dict[str, Any]], pool: membership.PoolView, threshold: Fraction
) -> list[str]:
    """What an operator must know beyond each worker's own health: verifiers of the
    pool that do not answer, a pool that can no longer reach its quorum, and ids
    answered by more than one process (two `up`s on one server)."""
    problems = []
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        seen[(str(r["kind"]), str(r["id"]))] = seen.get((str(r["kind"]), str(r["id"])), 0) + 1
    problems += [f"{k}/{i} is answered by {n} processes" for (k, i), n in seen.items() if n > 1]
    serving = {
        str(r["id"])
        for r in rows
        if r["kind"] == "verifier"
        and r.get("health") in (Health.HEALTHY.value, Health.DEGRADED.value)
    }
    active = [
        m for m in pool.members if m.status == membership.ACTIVE and m.public_key in pool.keys
    ]
    missing = sorted(m.worker_id for m in active if m.worker_id not in serving)
    if missing:
        problems.append(f"pool member(s) not serving: {', '.join(missing)}")
    n = len(pool.keys)
    if n:
        q = QuorumRule(n, threshold).q
        if len(active) - len(missing) < q:
            problems.append(
                f"only {len(active) - len(missing)} of {n} pool verifiers serve; "
                f"a decision needs q={q}: requests will time out"
            )
    return problems


def cmd_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args))


async def _check(args: argparse.Namespace) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-check") as nc:
        try:
            snap = await call(
                nc,
                Subjects(config.prefix).status(args.kind, args.id),
                b"",
                MetricsSnapshot,
                timeout=args.timeout,
                service="status",
            )
        except Exception as exc:
            print(f"{args.kind} {args.id}: no answer ({exc.__class__.__name__})", file=sys.stderr)
            return EXIT_CONNECT
    healthy = snap.health in (Health.HEALTHY.value, Health.DEGRADED.value)
    print(
        f"{snap.kind} {snap.worker_id}: {snap.health} (tasks {snap.tasks}, "
        f"failures {snap.failures})"
    )
    return 0 if healthy else EXIT_NOT_VALID


def cmd_check(args: argparse.Namespace) -> int:
    if not args.kind or not args.id:
        raise ConfigError("give --kind and --id (or set AP_WORKER_KIND and AP_WORKER_ID)")
    if args.liveness:  # local file only, no NATS: bus/liveness.py
        return check_liveness(args)
    return asyncio.run(_check(args))


# ---------------------------------------------------------------- parser
def register(sub: Any, kinds: Any) -> None:
    """Add ``members``, ``status`` and ``check``."""
    members = sub.add_parser(
        "members",
        help="list or remove pool members",
        description="List the verifier pool (membership bucket "
        "PREFIX_members: epoch, each member's status and key, quarantine "
        "records) or remove a member. Removing also clears its "
        "quarantine; a removed verifier that is still running registers "
        "itself again on its next start, so stop it first. Exit 0 done, "
        "1 not a member, 69 NATS unreachable.",
    )
    nats_options(members)
    members.add_argument(
        "action",
        nargs="?",
        choices=["list", "remove"],
        default="list",
        help="what to do (default %(default)s)",
    )
    members.add_argument("id", nargs="?", help="verifier id (for remove)")
    json_option(members)

    def run_members(args: argparse.Namespace) -> int:
        if args.action == "remove" and not args.id:
            members.error("members remove needs an id")  # exits 2, like any usage error
        return cmd_members(args)

    members.set_defaults(func=run_members)

    status = sub.add_parser(
        "status",
        help="discover workers ($SRV.PING) and show health",
        description="List every worker answering $SRV.PING under the "
        "prefix with its health and counters, then check the whole: "
        "pool verifiers that do not answer, a pool that can no longer "
        "reach its quorum q, ids answered by two processes. Exit 0 when "
        "workers answer and no problem is found, 1 otherwise (each "
        "problem printed), 69 if NATS is unreachable.",
    )
    nats_options(status)
    threshold_option(status, "threshold the quorum is computed with")
    status.add_argument(
        "--wait",
        type=positive,
        default=DISCOVER_WAIT_S,
        help="seconds to collect answers (default %(default)s)",
    )
    json_option(status)
    status.set_defaults(func=cmd_status)
    check = sub.add_parser(
        "check",
        help="health probe for one worker (exit 0 if serving)",
        description="Ask one worker for its status (its micro-service "
        "endpoint PREFIX.status.KIND.ID). Exit 0 if Healthy or Degraded, "
        "1 if Unhealthy or ShuttingDown, 69 if it does not answer — fit for "
        "a Kubernetes exec probe (readiness: needs NATS) or a systemd "
        "ExecStartPost check. With --liveness, NATS is not asked: exit 0 if "
        "the worker's local liveness file (AP_LIVENESS_DIR or DATA_DIR/run/"
        "KIND-ID.alive, rewritten by its event loop) is fresh, 1 if it is "
        "stale or missing — a livenessProbe that a NATS outage cannot fail.",
    )
    nats_options(check)
    check.add_argument(
        "--kind",
        type=token,
        default=os.environ.get("AP_WORKER_KIND"),
        help="worker kind (verifier, tally, ...; env AP_WORKER_KIND)",
    )
    check.add_argument(
        "--id",
        type=token,
        default=os.environ.get("AP_WORKER_ID"),
        help="worker id (v1, t1, ...; env AP_WORKER_ID)",
    )
    check.add_argument(
        "--liveness",
        action="store_true",
        help="local liveness check only (no NATS): exit 0 fresh, 1 stale",
    )
    check.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="--liveness: the worker's data dir (env AP_DATA_DIR, default %(default)s)",
    )
    check.add_argument(
        "--max-age",
        type=positive,
        default=None,
        help="--liveness: seconds a beat stays fresh (default: the ttl the "
        "worker wrote, 3 beats + 1 s)",
    )
    json_option(check, help="--liveness: machine-readable output")
    check.add_argument(
        "--timeout", type=positive, default=2.0, help="seconds to wait (default %(default)s)"
    )
    check.set_defaults(func=cmd_check)
