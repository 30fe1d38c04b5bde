"""Soak: the whole system under steady load while its workers are killed.

Run from the repository root::

    python bench/soak.py [--minutes 10] [--rate 200] [--kill-every-s 30] [--out FILE]

It starts ``agentic-payments up`` exactly as the README does (its own
nats-server on a free port, a fresh data dir), waits until a request is
decided, then for ``--minutes``:

* sends ``--rate`` requests/s open-loop (every ``--invalid-every``-th one
  carries a signature over other bytes, so it must be decided INVALID);
* every ``--kill-every-s`` seconds SIGKILLs one worker process of ``up`` chosen
  at random (any kind: tally, verifier, keys, trust, authority, anomaly,
  recovery); ``up``'s supervisor and the recovery worker bring it back;
* once a minute samples the RSS (``VmRSS``) and CPU of every worker process.

Every request is retried under its *same* request id until it is decided or
``--give-up-s`` pass (the tally is idempotent per request id, so a retry after a
lost reply gets the original certificate). Counted:

* ``lost``: requests with no decision after ``--give-up-s``;
* ``wrong``: a VALID certificate for a bad signature, anything but VALID for a
  good one, or a certificate the client's own ``verify_certificate`` re-check
  refuses (``CertificateInvalid``).

Pass means 0 lost, 0 wrong, and no worker's RSS growing more than 15 % from
minute 2 to minute 10 (per worker id; a worker killed in between restarts
small, so the growth of each *process* that lived through both samples is also
reported, and the pass rule uses it where the process changed).

Exactly one JSON document goes to stdout; progress goes to stderr. Every
process started (``up`` and through it everything else) is stopped on exit.
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
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bus.client import VerifyClient, signed_request  # noqa: E402
from bus.config import NatsConfig  # noqa: E402
from schemas.errors import AgenticPaymentsError, CertificateInvalid  # noqa: E402
from schemas.identity import AgentIdentity  # noqa: E402
from schemas.messages import VerificationRequest  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def nearest_rank(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s), max(1, math.ceil(pct / 100 * len(s)))) - 1], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- /proc
def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def worker_name(pid: int) -> str | None:
    """``KIND/ID`` of a worker process of ``up``, ``nats-server``, or None."""
    args = cmdline(pid)
    if args and os.path.basename(args[0]) == "nats-server":
        return "nats-server"
    if "worker" in args and "--id" in args:
        kind = args[args.index("worker") + 1]
        return f"{kind}/{args[args.index('--id') + 1]}"
    return None


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return round(int(f.read().split()[1]) * PAGE / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def processes(up_pid: int) -> dict[str, int]:
    """name -> pid of every worker (and nats-server) ``up`` runs now."""
    found: dict[str, int] = {}
    for pid in children(up_pid):
        name = worker_name(pid)
        if name is not None:
            found[name] = pid
    return found


# ---------------------------------------------------------------- load
@dataclass
class Tally:
    sent: int = 0
    decided: int = 0
    lost: int = 0
    wrong: int = 0
    retries: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    wrong_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    latencies_by_minute: dict[int, list[float]] = field(default_factory=dict)


async def decide_one(
    client: VerifyClient,
    req: VerificationRequest,
    good: bool,
    minute: int,
    tally: Tally,
    give_up_s: float,
) -> None:
    t0 = time.monotonic()
    while True:
        try:
            cert = await client.verify_with_consensus(req)
        except CertificateInvalid as exc:
            tally.wrong += 1
            if len(tally.wrong_examples) < 10:
                tally.wrong_examples.append(f"{req.request_id}: CertificateInvalid: {exc}")
            return
        except (TimeoutError, AgenticPaymentsError, OSError) as exc:
            tally.errors[f"{type(exc).__name__}:{getattr(exc, 'code', '')}"] += 1
            if time.monotonic() - t0 > give_up_s:
                tally.lost += 1
                if len(tally.lost_examples) < 10:
                    tally.lost_examples.append(f"{req.request_id}: {type(exc).__name__}: {exc}")
                return
            tally.retries += 1
            await asyncio.sleep(0.5)
            continue
        break
    tally.decided += 1
    tally.decisions[cert.decision] += 1
    tally.latencies_by_minute.setdefault(minute, []).append((time.monotonic() - t0) * 1000)
    if (cert.decision == "VALID") != good:
        tally.wrong += 1
        if len(tally.wrong_examples) < 10:
            tally.wrong_examples.append(
                f"{req.request_id}: {'good' if good else 'bad'} signature decided {cert.decision}"
            )


def make_request(signers: list[AgentIdentity], i: int, bad: bool) -> VerificationRequest:
    message = json.dumps(
        {"type": "payment", "amount": "1.00", "currency": "USD", "to": f"m-{i % 97}", "n": i},
        separators=(",", ":"),
    ).encode()
    req = signed_request(
        signers[i % len(signers)], message, request_id=f"soak-{i}-{uuid.uuid4().hex[:8]}"
    )
    if bad:  # a real signature, over other bytes
        other = signed_request(signers[i % len(signers)], message + b"x", request_id=req.request_id)
        req = VerificationRequest(
            request_id=req.request_id,
            message=req.message,
            signature=other.signature,
            public_key=req.public_key,
        )
    return req


# ---------------------------------------------------------------- main
async def wait_ready(config: NatsConfig, signers: list[AgentIdentity], timeout: float) -> float:
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            async with await VerifyClient.connect(config, timeout=3.0, retries=0) as client:
                cert = await client.verify_with_consensus(make_request(signers, 0, False))
                if cert.decision == "VALID":
                    return time.monotonic() - t0
        except Exception as exc:  # not up yet
            last = exc
        await asyncio.sleep(0.5)
    raise RuntimeError(f"system not deciding after {timeout}s: {last!r}")


async def soak(
    args: argparse.Namespace, up: subprocess.Popen[bytes], config: NatsConfig
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    signers = [AgentIdentity.generate() for _ in range(8)]
    ready_s = await wait_ready(config, signers, 120.0)
    log(f"system decides after {ready_s:.1f}s; soaking {args.minutes} min at {args.rate}/s")
    tally = Tally()
    kills: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    duration = args.minutes * 60.0
    pending: set[asyncio.Task[None]] = set()
    async with await VerifyClient.connect(
        config, timeout=args.request_timeout_s, retries=2
    ) as client:
        t0 = time.monotonic()
        next_kill = t0 + args.kill_every_s
        next_sample = t0 + 60.0
        cpu_seen: dict[int, tuple[str, float, float]] = {}  # pid -> (name, first, last)
        next_cpu = t0
        i = 1
        while (now := time.monotonic()) - t0 < duration:
            if up.poll() is not None:
                raise RuntimeError(f"up exited with {up.returncode} during the soak")
            due = int((now - t0) * args.rate)
            while i <= due:
                bad = args.invalid_every > 0 and i % args.invalid_every == 0
                req = make_request(signers, i, bad)
                minute = int((time.monotonic() - t0) // 60)
                task = asyncio.create_task(
                    decide_one(client, req, not bad, minute, tally, args.give_up_s)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
                tally.sent += 1
                i += 1
            if args.kill_every_s > 0 and now >= next_kill:
                next_kill += args.kill_every_s
                procs = {n: p for n, p in processes(up.pid).items() if n != "nats-server"}
                if procs:
                    name = rng.choice(sorted(procs))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(procs[name], signal.SIGKILL)
                    kills.append({"t_s": round(now - t0, 1), "worker": name, "pid": procs[name]})
                    log(f"killed {name} (pid {procs[name]}); {len(pending)} in flight")
            if now >= next_cpu:  # CPU of every process, once a second (killed ones too)
                next_cpu += 1.0
                for name, pid in processes(up.pid).items():
                    used = cpu_s(pid)
                    if used is not None:
                        first = cpu_seen.get(pid, (name, used, used))[1]
                        cpu_seen[pid] = (name, first, used)
            if now >= next_sample:
                next_sample += 60.0
                samples.append(sample(up.pid, round(now - t0), tally))
                samples[-1]["in_flight"] = len(pending)
                log(
                    f"minute {len(samples)}: sent {tally.sent} decided {tally.decided} "
                    f"lost {tally.lost} wrong {tally.wrong} in flight {len(pending)}"
                )
            await asyncio.sleep(0.005)
        log(f"load done; waiting for {len(pending)} in flight")
        if pending:
            await asyncio.wait(pending, timeout=args.give_up_s + 30)
    still = len(pending)
    tally.lost += still
    cpu: Counter[str] = Counter()
    for name, first, last in cpu_seen.values():
        cpu[name] += last - first
    return report(args, tally, kills, samples, ready_s, still, dict(cpu))


def sample(up_pid: int, t_s: int, tally: Tally) -> dict[str, Any]:
    procs = processes(up_pid)
    return {
        "t_s": t_s,
        "decided_so_far": tally.decided,
        "rss_mib": {n: rss_mib(p) for n, p in sorted(procs.items())},
        "pid": {n: p for n, p in sorted(procs.items())},
        "cpu_s": {n: cpu_s(p) for n, p in sorted(procs.items())},
    }


def rss_growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth of each worker's RSS from minute 2 to the last minute."""
    if len(samples) < 3:
        return {}
    first, last = samples[1], samples[-1]
    out: dict[str, Any] = {}
    for name, rss in last["rss_mib"].items():
        before = first["rss_mib"].get(name)
        if not before or rss is None:
            continue
        same = first["pid"].get(name) == last["pid"].get(name)
        entry: dict[str, Any] = {
            "minute2_mib": before,
            "last_mib": rss,
            "growth": round(rss / before - 1, 3),
            "same_process": same,
        }
        if not same:  # restarted in between: judge the newest process from its own first sample
            pid = last["pid"][name]
            own = [s["rss_mib"][name] for s in samples if s["pid"].get(name) == pid]
            if len(own) >= 2:
                entry["own_first_mib"] = own[0]
                entry["own_growth"] = round(own[-1] / own[0] - 1, 3)
        out[name] = entry
    return out


def report(
    args: argparse.Namespace,
    tally: Tally,
    kills: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    ready_s: float,
    unfinished: int,
    cpu: dict[str, float],
) -> dict[str, Any]:
    growth = rss_growth(samples)

    def judged(entry: dict[str, Any]) -> float:
        return float(entry["growth"] if entry["same_process"] else entry.get("own_growth", 0.0))

    # the rule is about workers; nats-server grows with the decisions JetStream stores
    worst = max((judged(e) for n, e in growth.items() if n != "nats-server"), default=0.0)
    per_minute = [
        {
            "minute": m + 1,
            "decisions": len(lat),
            "p50_ms": nearest_rank(lat, 50),
            "p99_ms": nearest_rank(lat, 99),
            "max_ms": nearest_rank(lat, 100),
        }
        for m, lat in sorted(tally.latencies_by_minute.items())
    ]
    total_cpu = sum(cpu.values())
    passed = tally.lost == 0 and tally.wrong == 0 and (len(samples) < 3 or worst <= 0.15)
    return {
        "benchmark": "agentic-payments soak",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "parameters": {
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "kill_every_s": args.kill_every_s,
            "invalid_every": args.invalid_every,
            "request_timeout_s": args.request_timeout_s,
            "give_up_s": args.give_up_s,
            "seed": args.seed,
            "up_args": args.up_args,
        },
        "ready_after_s": round(ready_s, 1),
        "sent": tally.sent,
        "decided": tally.decided,
        "lost": tally.lost,
        "unfinished_at_end": unfinished,
        "wrong": tally.wrong,
        "retries": tally.retries,
        "decisions": dict(tally.decisions),
        "error_kinds": dict(tally.errors),
        "wrong_examples": tally.wrong_examples,
        "lost_examples": tally.lost_examples,
        "kills": kills,
        "latency_per_minute": per_minute,
        "rss_per_minute": [{"t_s": s["t_s"], "rss_mib": s["rss_mib"]} for s in samples],
        "in_flight_per_minute": [s["in_flight"] for s in samples],
        "restarts_seen": {
            n: len({s["pid"].get(n) for s in samples if n in s["pid"]})
            for n in (samples[-1]["pid"] if samples else {})
        },
        "rss_growth_minute2_to_last": growth,
        "worst_rss_growth": round(worst, 3),
        "cpu_s_per_worker": {n: round(v, 2) for n, v in sorted(cpu.items())},
        "cpu_note": "user+system from /proc, sampled each second, summed over every process "
        "of a worker id (the last second before a kill is missed)",
        "cpu_ms_per_decision_all_workers": (
            round(total_cpu * 1000 / tally.decided, 3) if tally.decided else None
        ),
        "pass_rule": "lost == 0 and wrong == 0 and worst worker RSS growth (minute 2 -> last) "
        "<= 15% (nats-server reported, not judged: it holds the stored decisions)",
        "passed": passed,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="soak length (default %(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s (default %(default)s)")
    p.add_argument(
        "--kill-every-s",
        type=float,
        default=30.0,
        help="SIGKILL one random worker this often; 0 = never (default %(default)s)",
    )
    p.add_argument(
        "--invalid-every",
        type=int,
        default=10,
        help="every N-th request has a bad signature (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=5.0,
        help="one attempt's timeout (default %(default)s)",
    )
    p.add_argument(
        "--give-up-s",
        type=float,
        default=60.0,
        help="a request undecided this long is lost (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=1, help="which workers get killed (default 1)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("up_args", nargs="*", help="extra arguments for `agentic-payments up`")
    return p.parse_args(argv)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the cleanup below: up and all it started must go too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    work = Path(tempfile.mkdtemp(prefix="ap-soak-"))
    port = free_port()
    config = NatsConfig(url=f"nats://127.0.0.1:{port}", prefix="soak")
    env = dict(os.environ, NATS_URL=config.url, AP_PREFIX=config.prefix, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "workers.cli", "up", "--data-dir", str(work), *args.up_args]
    log(f"starting {' '.join(cmd)} (NATS {config.url})")
    with open(work / "up.out", "wb") as up_out:
        up = subprocess.Popen(
            cmd, env=env, stdout=up_out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        result = asyncio.run(soak(args, up, config))
    finally:
        with contextlib.suppress(ProcessLookupError):
            up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            log("up ignored SIGTERM for 30 s; killing its process group")
            os.killpg(up.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)  # anything it left behind
    result["up_exit_code"] = up.returncode
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
