"""Recovery benchmark: kill -9 a verifier N times under load, measure the way back.

Run from the repository root::

    python bench/recovery.py [--kills 20] [--heartbeat-s 0.25] [--missed 3] [--rate 40]

It starts its own nats-server (random port, temp store) unless ``--nats-url``
is given, then runs — exactly as ``agentic-payments up`` does — the local
supervisor in delegated mode with 4 verifiers, 1 tally and 1 recovery worker
(real processes). While a client sends ``--rate`` signed requests per second
(open loop, each awaited for its certificate), it SIGKILLs a verifier
(v1..v4 in turn) ``--kills`` times, waiting for the replacement and
``--settle-s`` between kills. Per kill, relative to the moment of the kill:

* ``detection_ms``       the recovery worker marked it stale (its history record);
* ``respawn_ms``         the supervisor's reply: a new process is running;
* ``first_heartbeat_ms`` the bench received the first heartbeat of the new
  generation (= downtime of that verifier as seen on the bus).

``decisions_lost`` = requests sent that did not end in a VALID certificate
(all requests are validly signed; 4 verifiers, q = 3, so one dead verifier
must cost nothing). Exactly one JSON document goes to stdout; progress to
stderr. Every process is stopped on exit.

Trade-off of the heartbeat interval: detection takes between (missed) and
(missed + 1) intervals, so 0.25 s x 3 bounds it near 1 s; each heartbeat is one
small NATS message per worker per interval (4 msg/s per worker at 0.25 s),
stored in the heartbeat stream for an hour — negligible next to the request
traffic, but a shorter interval also makes a worker stalled by a long GC or a
loaded machine look dead sooner (false respawns). The default 5 s is for
production; 0.25-0.5 s where seconds of downtime matter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nats.aio.msg import Msg  # noqa: E402

from bus import membership  # noqa: E402
from bus.client import VerifyClient, signed_request  # noqa: E402
from bus.config import NatsConfig  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.natsserver import NatsServer, start_nats_server  # noqa: E402
from bus.subjects import Subjects  # noqa: E402
from schemas.identity import AgentIdentity  # noqa: E402
from schemas.messages import Heartbeat  # noqa: E402
from schemas.recovery import HistoryQuery, RecoveryAttempt  # noqa: E402
from workers.recovery.cli import fetch_history  # noqa: E402
from workers.recovery.supervisor import LocalSupervisor, ProcSpec  # noqa: E402

VERIFIERS = 4


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def nearest_rank(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered)))) - 1]


def summary(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50_ms": None if not values else round(statistics.median(values), 1),
        "p95_ms": None if not values else round(nearest_rank(values, 95) or 0, 1),
        "max_ms": None if not values else round(max(values), 1),
    }


class Load:
    """Open-loop signed requests; counts VALID certificates and everything else."""

    def __init__(self, client: VerifyClient, rate: float, timeout: float) -> None:
        self.client, self.rate, self.timeout = client, rate, timeout
        self.ident = AgentIdentity.generate()
        self.sent = self.valid = 0
        self.other: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = True

    async def one(self, i: int) -> None:
        request = signed_request(self.ident, f"pay {i} EUR; nonce {uuid.uuid4().hex}".encode())
        try:
            cert = await self.client.verify_with_consensus(request, timeout=self.timeout)
            if cert.decision == "VALID":
                self.valid += 1
            else:
                self.other[cert.decision] = self.other.get(cert.decision, 0) + 1
        except Exception as exc:
            key = f"{type(exc).__name__}:{getattr(exc, 'code', '')}"
            self.other[key] = self.other.get(key, 0) + 1

    async def run(self) -> None:
        t0 = time.perf_counter()
        i = 0
        while self.running:
            i += 1
            task = asyncio.get_running_loop().create_task(self.one(i))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.sent += 1
            await asyncio.sleep(max(0.0, t0 + i / self.rate - time.perf_counter()))

    async def finish(self) -> None:
        self.running = False
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


async def bench(args: argparse.Namespace, nats_url: str, work_dir: Path) -> dict[str, Any]:
    prefix = f"rb{uuid.uuid4().hex[:8]}"
    subjects = Subjects(prefix)
    hb = ["--heartbeat-s", str(args.heartbeat_s)]
    specs = [
        ProcSpec(f"verifier-v{i}", ["worker", "verifier", "--id", f"v{i}", *hb])
        for i in range(1, VERIFIERS + 1)
    ]
    specs.append(ProcSpec("tally-t1", ["worker", "tally", "--id", "t1", *hb]))
    specs.append(
        ProcSpec(
            "recovery-r1",
            [
                "worker",
                "recovery",
                "--id",
                "r1",
                *hb,
                "--missed",
                str(args.missed),
                "--startup-grace-s",
                "20",
                "--max-retries",
                "5",
                "--reset-after-s",
                "5",
            ],
        )
    )
    env = dict(
        os.environ,
        NATS_URL=nats_url,
        AP_PREFIX=prefix,
        AP_DATA_DIR=str(work_dir),
        PYTHONPATH=str(ROOT),
        AP_SUPERVISOR="bench",
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    sup = LocalSupervisor(specs, env=env, log_dir=work_dir / "logs")
    nc = await connect(NatsConfig(url=nats_url, prefix=prefix), name="bench-recovery")
    latest: dict[tuple[str, str], tuple[int, float]] = {}  # generation, first seen (s)

    async def on_hb(msg: Msg) -> None:
        beat = Heartbeat.decode(msg.data)
        key = (beat.kind, beat.worker_id)
        if key not in latest or beat.generation > latest[key][0]:
            latest[key] = (beat.generation, time.time())

    await nc.subscribe(subjects.heartbeat_all, cb=on_hb)
    await sup.start()
    load: Load | None = None
    kills: list[dict[str, Any]] = []
    try:
        wanted = {(s.kind, s.worker_id) for s in specs}
        deadline = time.monotonic() + 60
        while not wanted <= set(latest):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start: missing {wanted - set(latest)}")
            await asyncio.sleep(0.1)
        while True:
            if len((await membership.read_pool(nc, subjects)).keys) >= VERIFIERS:
                break
            await asyncio.sleep(0.1)
        js = nc.jetstream()
        for kind, worker_id in wanted:  # the recovery worker reads them from the stream
            while True:
                try:
                    await js.get_last_msg(
                        subjects.heartbeat_stream, subjects.heartbeat(kind, worker_id)
                    )
                    break
                except Exception:
                    await asyncio.sleep(0.1)
        client = VerifyClient(nc, prefix=prefix, timeout=args.request_timeout_s)
        load = Load(client, args.rate, args.request_timeout_s)
        load_task = asyncio.get_running_loop().create_task(load.run())
        await asyncio.sleep(args.settle_s)
        log(f"system up (prefix {prefix}); {args.kills} kills at {args.rate} req/s")
        for k in range(args.kills):
            worker_id = f"v{k % VERIFIERS + 1}"
            spec = sup.find("verifier", worker_id)
            assert spec is not None and spec.process is not None
            old_gen = latest[("verifier", worker_id)][0]
            t_kill = time.time()
            os.kill(spec.process.pid, 9)
            deadline = time.monotonic() + 60
            while latest[("verifier", worker_id)][0] <= old_gen:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker_id} was not respawned")
                await asyncio.sleep(0.01)
            t_hb = latest[("verifier", worker_id)][1]
            attempt: RecoveryAttempt | None = None
            for _ in range(50):
                reply = await fetch_history(
                    nc, subjects, HistoryQuery("verifier", worker_id, 20), 5.0
                )
                attempt = next(
                    (a for a in reply.attempts if a.dead_generation == old_gen and a.respawned_ms),
                    None,
                )
                if attempt is not None:
                    break
                await asyncio.sleep(0.1)
            row = {"worker": worker_id, "first_heartbeat_ms": round((t_hb - t_kill) * 1000, 1)}
            if attempt is not None:
                row.update(
                    detection_ms=attempt.detected_ms - t_kill * 1000,
                    respawn_ms=attempt.respawned_ms - t_kill * 1000,
                    attempt=attempt.attempt,
                    outcome=attempt.outcome,
                )
                row["detection_ms"] = round(row["detection_ms"], 1)
                row["respawn_ms"] = round(row["respawn_ms"], 1)
            kills.append(row)
            log(f"kill {k + 1}/{args.kills} {worker_id}: {row}")
            await asyncio.sleep(args.settle_s)
        await load.finish()
        await load_task
    finally:
        if load is not None:
            await load.finish()
        await sup.stop()
        await nc.close()
    attempts_per_kill = [r.get("attempt") for r in kills]
    return {
        "kills": len(kills),
        "detection": summary([r["detection_ms"] for r in kills if "detection_ms" in r]),
        "respawn": summary([r["respawn_ms"] for r in kills if "respawn_ms" in r]),
        "first_heartbeat": summary([r["first_heartbeat_ms"] for r in kills]),
        "downtime_p95_under_2s": (nearest_rank([r["first_heartbeat_ms"] for r in kills], 95) or 1e9)
        < 2000,
        "downtime_p95_under_1s": (nearest_rank([r["first_heartbeat_ms"] for r in kills], 95) or 1e9)
        < 1000,
        "all_first_attempt": all(a == 1 for a in attempts_per_kill),
        "load": {
            "rate_per_s": args.rate,
            "sent": load.sent if load else 0,
            "valid": load.valid if load else 0,
            "other": load.other if load else {},
        },
        "decisions_lost": (load.sent - load.valid) if load else None,
        "per_kill": kills,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--heartbeat-s", type=float, default=0.25)
    p.add_argument("--missed", type=int, default=3)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second")
    p.add_argument("--settle-s", type=float, default=1.5, help="pause after each recovery")
    p.add_argument("--request-timeout-s", type=float, default=10.0)
    p.add_argument("--nats-url", help="use this server instead of starting one")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="ap-bench-recovery-"))
    server: NatsServer | None = None
    started = dt.datetime.now(dt.UTC)
    try:
        if args.nats_url:
            url = args.nats_url
        else:
            server = start_nats_server(work_dir / "nats")
            url = server.url
        result = asyncio.run(bench(args, url, work_dir))
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
    doc = {
        "bench": "recovery",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "verifiers": VERIFIERS,
            "heartbeat_s": args.heartbeat_s,
            "missed": args.missed,
            "kills": args.kills,
            "rate": args.rate,
            "settle_s": args.settle_s,
            "backend": "local (supervisor, delegated)",
        },
        **result,
    }
    print(json.dumps(doc, indent=2))
    return 0 if result["decisions_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
