"""Consensus throughput/latency benchmark against real worker processes.

Run from the repository root::

    python bench/consensus.py [--requests N] [--quick] [--nats-url URL]

It starts its own nats-server (random port, temp store) unless ``--nats-url``
is given, then for each pool size n (3 and 4 by default) starts n verifier
processes and one tally process (``python -m workers.cli worker ...``) under a
fresh subject prefix and data directory, and measures with ``VerifyClient``:

* ``low_rate``: open-loop requests at a fixed rate; decisions/s, client-side
  latency p50/p90/p99 (nearest rank) and non-VALID decisions;
* ``saturation``: a fixed number of requests with many in flight, repeated
  ``--repeats`` times (median and every value reported).

The baseline is raw PyNaCl ``VerifyKey.verify`` throughput with 2 threads on
the same machine, measured in the same run. Efficiency for pool size n is
``decisions/s × n ÷ raw verifications/s``: the share of the machine's raw
verify capacity that turns into useful consensus work (each decision needs n
verifications, one per verifier).

Exactly one JSON document goes to stdout; progress goes to stderr. Every
process started here (workers and nats-server) is stopped on exit, error,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nacl.signing  # noqa: E402

from bus import membership  # noqa: E402
from bus.client import VerifyClient, signed_request  # noqa: E402
from bus.config import NatsConfig  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.natsserver import NatsServer, start_nats_server  # noqa: E402
from bus.subjects import Subjects  # noqa: E402
from schemas.errors import AgenticPaymentsError  # noqa: E402
from schemas.identity import AgentIdentity  # noqa: E402
from schemas.messages import ConsensusResult, MetricsSnapshot, VerificationRequest  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics
def nearest_rank(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least pct% at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, float | None]:
    values = sorted(latencies_ms)
    out: dict[str, float | None] = {}
    for pct in (50, 90, 99):
        v = nearest_rank(values, pct)
        out[f"p{pct}_ms"] = None if v is None else round(v, 2)
    out["max_ms"] = round(values[-1], 2) if values else None
    return out


# ---------------------------------------------------------------- payloads
def payment_message(i: int) -> bytes:
    return json.dumps(
        {
            "type": "payment",
            "amount": "12.34",
            "currency": "USD",
            "to": f"did:example:merchant-{i % 97}",
            "nonce": i,
        },
        separators=(",", ":"),
    ).encode()


def presign(count: int, signers: list[AgentIdentity], tag: str) -> list[VerificationRequest]:
    return [
        signed_request(
            signers[i % len(signers)],
            payment_message(i),
            request_id=f"{tag}-{i}-{uuid.uuid4().hex[:12]}",
        )
        for i in range(count)
    ]


# ---------------------------------------------------------------- raw baseline
def raw_verify_rate(threads: int, seconds: float) -> dict[str, Any]:
    """PyNaCl verifications/s with ``threads`` threads on pre-signed messages."""
    keys = [nacl.signing.SigningKey.generate() for _ in range(8)]
    samples = []
    for i in range(256):
        sk = keys[i % len(keys)]
        signed = sk.sign(payment_message(i))
        samples.append((sk.verify_key, signed.message, signed.signature))
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def work(slot: int) -> None:
        start.wait()
        n = 0
        deadline = stop_at[0]
        while True:
            for vk, msg, sig in samples:
                vk.verify(msg, sig)
            n += len(samples)
            if time.perf_counter() >= deadline:
                break
        counts[slot] = n

    workers = [threading.Thread(target=work, args=(s,), daemon=True) for s in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    total = sum(counts)
    return {
        "threads": threads,
        "seconds": round(elapsed, 3),
        "verifications": total,
        "per_s": round(total / elapsed, 1),
    }


# ---------------------------------------------------------------- processes
def proc_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of ``pid`` (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (jiffies), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def machine_cpu_delta(before: list[int] | None, after: list[int] | None) -> dict[str, float]:
    """Share of all cores that was busy / idle / stolen between two samples."""
    if not before or not after:
        return {}
    d = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
    idle = d[3] + d[4]
    return {
        "busy": round(1 - idle / total, 3),
        "idle": round(idle / total, 3),
        "steal": round(d[7] / total, 3) if len(d) > 7 else 0.0,
    }


@dataclass
class Proc:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path


ALL_PROCS: list[Proc] = []
SERVER: list[NatsServer] = []


def stop_procs(procs: list[Proc], timeout: float = 10.0) -> dict[str, int | None]:
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            codes[p.name] = p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{p.name} ignored SIGTERM for {timeout}s; killing")
            p.popen.kill()
            codes[p.name] = p.popen.wait(5)
    return codes


def cleanup_everything() -> None:
    """Last-resort cleanup (atexit / signal): no process of ours outlives the bench."""
    live = [p for p in ALL_PROCS if p.popen.poll() is None]
    if live:
        stop_procs(live, timeout=5.0)
    for server in SERVER:
        with contextlib.suppress(Exception):
            server.stop(5)


@dataclass
class Cluster:
    nats_url: str
    prefix: str
    data_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            NATS_URL=self.nats_url,
            AP_PREFIX=self.prefix,
            AP_DATA_DIR=str(self.data_dir),
            PYTHONPATH=str(ROOT),
            AP_LOG_LEVEL=os.environ.get("AP_LOG_LEVEL", "INFO"),
        )
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        return env

    def spawn(self, role: str, worker_id: str, extra: list[str]) -> Proc:
        name = f"{role}-{worker_id}"
        log_path = self.data_dir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "workers.cli",
                    "worker",
                    role,
                    "--id",
                    worker_id,
                    "--heartbeat-s",
                    "1",
                    *extra,
                ],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        proc = Proc(name, role, popen, log_path)
        self.procs.append(proc)
        ALL_PROCS.append(proc)
        return proc

    def tail(self, proc: Proc, lines: int = 20) -> str:
        try:
            return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{self.tail(p)}")

    def cpu(self) -> dict[str, float | None]:
        return {p.name: proc_cpu_s(p.popen.pid) for p in self.procs}

    def stop(self) -> dict[str, int | None]:
        return stop_procs(self.procs)


async def wait_pool(cluster: Cluster, size: int, timeout: float) -> membership.PoolView:
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="bench-wait")
    try:
        deadline = time.monotonic() + timeout
        while True:
            cluster.check_alive()
            pool = await membership.read_pool(nc, Subjects(cluster.prefix))
            if len(pool.keys) >= size:
                return pool
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pool has {len(pool.keys)} members after {timeout}s, wanted {size}"
                )
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def wait_tally(cluster: Cluster, timeout: float) -> None:
    """Until a tally answers on the request subject (an ErrorReply to garbage)."""
    nc = await connect(NatsConfig(url=cluster.nats_url, prefix=cluster.prefix), name="bench-wait")
    try:
        deadline = time.monotonic() + timeout
        while True:
            cluster.check_alive()
            try:
                await nc.request(Subjects(cluster.prefix).request, b"\xc1", timeout=0.5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no tally answered within {timeout}s") from None
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def worker_metrics(client: VerifyClient, cluster: Cluster) -> dict[str, Any]:
    """Each worker's MetricsSnapshot through its status endpoint (best effort)."""
    out: dict[str, Any] = {}
    subjects = Subjects(cluster.prefix)
    for p in cluster.procs:
        worker_id = p.name.split("-", 1)[1]
        try:
            msg = await client.nc.request(subjects.status(p.role, worker_id), b"", timeout=2.0)
            snap = MetricsSnapshot.decode(msg.data)
            out[p.name] = {
                "tasks": snap.tasks,
                "failures": snap.failures,
                "avg_ms": snap.avg_ms,
                "p99_ms": snap.p99_ms,
                "health": snap.health,
                "counters": dict(sorted(snap.counters.items())),
            }
        except Exception as exc:
            out[p.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ---------------------------------------------------------------- measurements
@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    decisions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def one_request(
    client: VerifyClient, req: VerificationRequest, outcome: Outcome, timeout: float
) -> None:
    t0 = time.perf_counter()
    try:
        cert = await client.verify_with_consensus(req, timeout=timeout)
    except AgenticPaymentsError as exc:
        code = getattr(exc, "code", None) or type(exc).__name__
        outcome.errors[f"{type(exc).__name__}:{code}"] += 1
        return
    except Exception as exc:
        outcome.errors[f"{type(exc).__name__}"] += 1
        return
    outcome.latencies_ms.append((time.perf_counter() - t0) * 1000)
    assert isinstance(cert, ConsensusResult)
    outcome.decisions[cert.decision] += 1


def summarize(outcome: Outcome, elapsed: float, sent: int) -> dict[str, Any]:
    decided = sum(outcome.decisions.values())
    return {
        "requests": sent,
        "decided": decided,
        "elapsed_s": round(elapsed, 3),
        "decisions_per_s": round(decided / elapsed, 1) if elapsed > 0 else None,
        **latency_summary(outcome.latencies_ms),
        "decisions": dict(outcome.decisions),
        "non_valid": decided - outcome.decisions.get("VALID", 0),
        "errors": sum(outcome.errors.values()),
        "error_kinds": dict(outcome.errors),
    }


async def run_low_rate(
    client: VerifyClient, requests: list[VerificationRequest], rate: float, timeout: float
) -> dict[str, Any]:
    """Open loop: request i is sent at t0 + i / rate whatever the replies do."""
    outcome = Outcome()
    tasks = []
    t0 = time.perf_counter()
    for i, req in enumerate(requests):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_request(client, req, outcome, timeout)))
    send_span = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    result = summarize(outcome, elapsed, len(requests))
    result["target_rate_per_s"] = rate
    result["achieved_send_rate_per_s"] = (
        round((len(requests) - 1) / send_span, 1) if send_span > 0 and len(requests) > 1 else None
    )
    return result


async def run_saturation(
    client: VerifyClient, requests: list[VerificationRequest], concurrency: int, timeout: float
) -> dict[str, Any]:
    outcome = Outcome()
    gate = asyncio.Semaphore(concurrency)

    async def gated(req: VerificationRequest) -> None:
        async with gate:
            await one_request(client, req, outcome, timeout)

    t0 = time.perf_counter()
    await asyncio.gather(*(gated(r) for r in requests))
    elapsed = time.perf_counter() - t0
    result = summarize(outcome, elapsed, len(requests))
    result["concurrency"] = concurrency
    return result


async def bench_pool(
    n: int, args: argparse.Namespace, nats_url: str, work_dir: Path, raw_per_s: float
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-n{n}"
    data_dir = work_dir / prefix
    data_dir.mkdir(parents=True)
    cluster = Cluster(nats_url, prefix, data_dir)
    result: dict[str, Any] = {"n": n, "prefix": prefix}
    signers = [AgentIdentity.generate() for _ in range(8)]
    low_reqs = presign(args.low_requests, signers, f"low-n{n}")
    warm_reqs = presign(args.warmup, signers, f"warm-n{n}")
    sat_reqs = [presign(args.requests, signers, f"sat{r}-n{n}") for r in range(args.repeats)]
    client: VerifyClient | None = None
    try:
        log(f"n={n}: starting {n} verifiers (prefix {prefix})")
        t_start = time.perf_counter()
        for i in range(1, n + 1):
            cluster.spawn("verifier", f"v{i}", [])
        pool = await wait_pool(cluster, n, args.startup_timeout)
        cluster.spawn("tally", "t1", list(args.tally_arg))
        await wait_tally(cluster, args.startup_timeout)
        result["startup_s"] = round(time.perf_counter() - t_start, 2)
        result["pool_epoch"] = pool.epoch
        log(f"n={n}: pool of {len(pool.keys)} ready, tally answers ({result['startup_s']}s)")

        nc = await connect(NatsConfig(url=nats_url, prefix=prefix), name="bench-client")
        # Certificate re-checking is the client's own CPU; on this shared 2-core box it
        # would be charged to the network, so it is off unless --check-certificates.
        client = VerifyClient(
            nc,
            prefix=prefix,
            timeout=args.timeout,
            retries=args.retries,
            owns_connection=True,
            verify_certificates=args.check_certificates,
        )

        if warm_reqs:
            log(f"n={n}: warm-up, {len(warm_reqs)} requests")
            warm = await run_saturation(client, warm_reqs, min(64, args.concurrency), args.timeout)
            result["warmup"] = {
                k: warm[k] for k in ("requests", "decided", "errors", "decisions_per_s")
            }

        log(f"n={n}: low_rate, {len(low_reqs)} requests at {args.rate}/s")
        cluster.check_alive()
        result["low_rate"] = await run_low_rate(client, low_reqs, args.rate, args.timeout)
        lr = result["low_rate"]
        log(
            f"n={n}: low_rate p50={lr['p50_ms']}ms p99={lr['p99_ms']}ms "
            f"non_valid={lr['non_valid']} errors={lr['errors']}"
        )

        runs = []
        for r, reqs in enumerate(sat_reqs):
            cluster.check_alive()
            await asyncio.sleep(args.settle)
            cpu0 = cluster.cpu()
            srv0 = proc_cpu_s(SERVER[0].process.pid) if SERVER else None
            self0 = time.process_time()
            mach0 = machine_cpu()
            log(
                f"n={n}: saturation {r + 1}/{args.repeats}, {len(reqs)} requests, "
                f"concurrency {args.concurrency}"
            )
            run = await run_saturation(client, reqs, args.concurrency, args.timeout)
            cpu1 = cluster.cpu()
            srv1 = proc_cpu_s(SERVER[0].process.pid) if SERVER else None
            wall = run["elapsed_s"]
            util: dict[str, float | None] = {}
            for name, before in cpu0.items():
                after = cpu1.get(name)
                util[name] = (
                    round((after - before) / wall, 3)
                    if before is not None and after is not None and wall
                    else None
                )
            util["bench-client"] = round((time.process_time() - self0) / wall, 3) if wall else None
            if srv0 is not None and srv1 is not None and wall:
                util["nats-server"] = round((srv1 - srv0) / wall, 3)
            run["cpu_cores_used"] = util
            mach = machine_cpu_delta(mach0, machine_cpu())
            if mach and os.cpu_count():
                ours = sum(v for v in util.values() if v is not None)
                # cores busy with something other than this benchmark (other jobs on the host)
                mach["other_cores"] = round(
                    max(0.0, mach["busy"] * (os.cpu_count() or 1) - ours), 3
                )
            run["machine_cpu"] = mach
            runs.append(run)
            log(
                f"n={n}: saturation {r + 1}: {run['decisions_per_s']}/s p50={run['p50_ms']}ms "
                f"p99={run['p99_ms']}ms errors={run['errors']} non_valid={run['non_valid']}"
            )

        rates = [x["decisions_per_s"] or 0.0 for x in runs]
        med = statistics.median(rates)
        median_run = sorted(runs, key=lambda x: x["decisions_per_s"] or 0.0)[len(runs) // 2]
        result["saturation"] = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "decisions_per_s_median": round(med, 1),
            "decisions_per_s_all": rates,
            "p50_ms_median": statistics.median(
                [x["p50_ms"] for x in runs if x["p50_ms"] is not None] or [0]
            ),
            "p90_ms_median": statistics.median(
                [x["p90_ms"] for x in runs if x["p90_ms"] is not None] or [0]
            ),
            "p99_ms_median": statistics.median(
                [x["p99_ms"] for x in runs if x["p99_ms"] is not None] or [0]
            ),
            "errors_total": sum(x["errors"] for x in runs),
            "non_valid_total": sum(x["non_valid"] for x in runs),
            "median_run_cpu_cores_used": median_run["cpu_cores_used"],
            "median_run_machine_cpu": median_run["machine_cpu"],
            "runs": runs,
        }
        result["efficiency"] = round(med * n / raw_per_s, 4) if raw_per_s else None
        result["efficiency_all"] = (
            [round(x * n / raw_per_s, 4) for x in rates] if raw_per_s else None
        )
        result["worker_metrics"] = await worker_metrics(client, cluster)
    except Exception:
        for p in cluster.procs:
            log(f"--- last log lines of {p.name} (exit {p.popen.poll()}):\n{cluster.tail(p)}")
        raise
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        codes = cluster.stop()
        result["exit_codes"] = codes
        if args.external_nats:
            await drop_buckets(nats_url, prefix)
        log(f"n={n}: stopped workers, exit codes {codes}")
    return result


async def drop_buckets(nats_url: str, prefix: str) -> None:
    """On a shared server, remove the KV buckets this run created (best effort)."""
    with contextlib.suppress(Exception):
        nc = await connect(NatsConfig(url=nats_url, prefix=prefix), name="bench-cleanup")
        try:
            js = nc.jetstream()
            subjects = Subjects(prefix)
            for bucket in (subjects.members_bucket, subjects.decisions_bucket):
                with contextlib.suppress(Exception):
                    await js.delete_key_value(bucket)
        finally:
            await nc.close()


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per saturation run (default 5000; --quick 100)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=512,
        help="requests in flight during saturation (default 512)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="saturation runs per pool size (default 3; --quick 1)",
    )
    p.add_argument("--rate", type=float, default=50.0, help="low_rate requests/s (default 50)")
    p.add_argument(
        "--low-requests", type=int, default=None, help="low_rate requests (default 200; --quick 50)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up requests before measuring (default 200; --quick 20)",
    )
    p.add_argument("--pool-sizes", default="3,4", help="pool sizes, comma separated (3,4)")
    p.add_argument(
        "--raw-seconds",
        type=float,
        default=None,
        help="seconds of raw PyNaCl verification (default 2; --quick 1)",
    )
    p.add_argument("--raw-threads", type=int, default=2, help="threads for the raw baseline (2)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="client timeout per attempt, seconds (default 30)",
    )
    p.add_argument(
        "--check-certificates",
        action="store_true",
        help="re-check every certificate in the load generator (off by default: "
        "it is client CPU, which shares the machine with the workers)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="client retries (default 0, so every failure is visible)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="pause before each saturation run, seconds (default 1; --quick 0.2)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the pool and the tally (default 30)",
    )
    p.add_argument(
        "--tally-arg",
        action="append",
        default=[],
        help="extra argument for the tally process (repeatable), e.g. --tally-arg=--max-batch=128",
    )
    p.add_argument("--nats-url", default=None, help="use this NATS server instead of starting one")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    p.add_argument("--quick", action="store_true", help="small run, well under a minute")
    args = p.parse_args(argv)

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    args.requests = pick(args.requests, 5000, 100)
    args.repeats = pick(args.repeats, 3, 1)
    args.low_requests = pick(args.low_requests, 200, 50)
    args.warmup = pick(args.warmup, 200, 20)
    args.raw_seconds = pick(args.raw_seconds, 2.0, 1.0)
    args.settle = pick(args.settle, 1.0, 0.2)
    args.pool_sizes = [int(x) for x in str(args.pool_sizes).split(",") if x.strip()]
    args.external_nats = args.nats_url is not None
    if min(args.pool_sizes) < 3:
        p.error("pool sizes must be at least 3 (MIN_POOL)")
    if args.requests < 1 or args.repeats < 1 or args.concurrency < 1 or args.rate <= 0:
        p.error("requests, repeats, concurrency and rate must be positive")
    return args


def nats_server_version(server: NatsServer | None) -> str | None:
    if server is None:
        return None
    for line in server.log_lines[:40]:
        if "Version:" in line:
            return line.split("Version:", 1)[1].strip()
    return None


async def run_all(
    args: argparse.Namespace, nats_url: str, work_dir: Path, raw_per_s: float
) -> list[dict[str, Any]]:
    pools = []
    for n in args.pool_sizes:
        pools.append(await bench_pool(n, args, nats_url, work_dir, raw_per_s))
    return pools


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT
    # for background jobs: the workers share our process group and do stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit.register(cleanup_everything)

    work_dir = Path(tempfile.mkdtemp(prefix="ap-bench-"))
    server: NatsServer | None = None
    try:
        log(f"raw PyNaCl baseline: {args.raw_threads} threads x {args.raw_seconds}s")
        raw_before = raw_verify_rate(args.raw_threads, args.raw_seconds)
        raw_single = raw_verify_rate(1, max(0.5, args.raw_seconds / 2))
        log(
            f"raw: {raw_before['per_s']}/s ({args.raw_threads} threads), "
            f"{raw_single['per_s']}/s (1 thread)"
        )
        raw_per_s = raw_before["per_s"]

        if args.nats_url:
            nats_url = args.nats_url
        else:
            server = start_nats_server(work_dir / "nats")
            SERVER.append(server)
            nats_url = server.url
            log(f"nats-server at {nats_url}")

        pools = asyncio.run(run_all(args, nats_url, work_dir, raw_per_s))

        log("raw PyNaCl baseline again (machine drift check)")
        raw_after = raw_verify_rate(args.raw_threads, args.raw_seconds)
        log(f"raw after: {raw_after['per_s']}/s")

        doc = {
            "benchmark": "agentic-payments consensus",
            "date": started_at.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - started, 1),
            "machine": {
                "nproc": os.cpu_count(),
                "sched_affinity": len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else None,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "nats_server": nats_server_version(server),
                "pynacl": getattr(nacl, "__version__", None),
            },
            "parameters": {
                "quick": args.quick,
                "pool_sizes": args.pool_sizes,
                "low_rate": {"rate_per_s": args.rate, "requests": args.low_requests},
                "saturation": {
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "repeats": args.repeats,
                },
                "warmup_requests": args.warmup,
                "client_timeout_s": args.timeout,
                "client_retries": args.retries,
                "tally_args": args.tally_arg,
                "client_checks_certificates": args.check_certificates,
                "raw_threads": args.raw_threads,
                "raw_seconds": args.raw_seconds,
                "nats": "external" if args.external_nats else "started by bench",
            },
            "raw_pynacl": {
                "verifications_per_s": raw_per_s,
                "before": raw_before,
                "after": raw_after,
                "single_thread": raw_single,
                "after_over_before": (
                    round(raw_after["per_s"] / raw_per_s, 3) if raw_per_s else None
                ),
                "note": "efficiency uses 'before'; an after/before ratio far from 1 means the "
                "machine's speed changed during the run (noisy host)",
            },
            "efficiency_definition": "saturation decisions/s (median) x n / raw verifications/s "
            "(2 threads, measured before the pools)",
            "summary": {
                f"n{p['n']}": {
                    "saturation_decisions_per_s_median": p["saturation"]["decisions_per_s_median"],
                    "saturation_decisions_per_s_all": p["saturation"]["decisions_per_s_all"],
                    "saturation_p50_ms": p["saturation"]["p50_ms_median"],
                    "saturation_p99_ms": p["saturation"]["p99_ms_median"],
                    "saturation_errors": p["saturation"]["errors_total"],
                    "low_rate_p50_ms": p["low_rate"]["p50_ms"],
                    "low_rate_p90_ms": p["low_rate"]["p90_ms"],
                    "low_rate_p99_ms": p["low_rate"]["p99_ms"],
                    "low_rate_non_valid": p["low_rate"]["non_valid"],
                    "efficiency": p["efficiency"],
                }
                for p in pools
            },
            "pools": pools,
        }
        print(json.dumps(doc, indent=2))
        sys.stdout.flush()
        return 0
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        cleanup_everything()
        if server is not None:
            server.stop()
        if args.keep:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
