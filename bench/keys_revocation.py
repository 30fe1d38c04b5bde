"""How soon a verifier sees a revocation: key manager reply -> BucketMirror.

Run from the repository root::

    python bench/keys_revocation.py [--revocations 50] [--nats-url URL] [--poll-only]

Starts its own nats-server (random port, temp store) unless ``--nats-url`` is
given, and one key manager *process* (``python -m workers.cli worker keys``)
under a fresh prefix with a fresh master key. A second, independent NATS
connection runs a :class:`bus.state.BucketMirror` over ``{prefix}_state`` —
exactly what a verifier would hold. For each of N keys (created first, and
awaited in the mirror) it sends ``revoke`` and records:

* ``request_to_reply_ms``: the revoke round trip seen by the client;
* ``reply_to_visible_ms``: from the reply's arrival until the mirror holds the
  revoked KeyStatus (0 when the mirror already had it when the reply came —
  the status is written before the reply is sent);
* ``request_to_visible_ms``: from sending revoke until the mirror has it.

Medians and p95 (nearest rank) go to stdout as one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bus.config import NatsConfig  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.key_client import KeyClient  # noqa: E402
from bus.natsserver import start_nats_server  # noqa: E402
from bus.state import BucketMirror, state_key  # noqa: E402
from bus.subjects import Subjects  # noqa: E402
from schemas.keys import KeyStatus  # noqa: E402
from workers.keys.crypto import write_master_key  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "p95": round(pct(values, 95), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
    }


def start_manager(url: str, prefix: str, tmp: Path) -> subprocess.Popen[bytes]:
    master = tmp / "master.key"
    write_master_key(master)
    env = dict(
        os.environ,
        NATS_URL=url,
        AP_PREFIX=prefix,
        AP_DATA_DIR=str(tmp),
        PYTHONPATH=str(ROOT),
        AP_LOG_LEVEL="WARNING",
    )
    with (tmp / "keys.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "worker",
                "keys",
                "--id",
                "bench1",
                "--master-key-file",
                str(master),
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def run(
    url: str,
    prefix: str,
    proc: subprocess.Popen[bytes],
    count: int,
    tmp: Path,
    poll_only: bool = False,
) -> dict[str, Any]:
    config = NatsConfig(url=url, prefix=prefix)
    client_nc = await connect(config, name="bench-client")
    mirror_nc = await connect(config, name="bench-verifier")
    changed = asyncio.Event()
    mirror: BucketMirror[KeyStatus] = BucketMirror(
        mirror_nc,
        Subjects(prefix).state_bucket,
        lambda _k, v: KeyStatus.decode(v),
        on_change=changed.set,
    )
    try:
        keys = KeyClient(client_nc, prefix, timeout=30)
        end = time.monotonic() + 60
        while True:
            try:
                await keys.list()
                break
            except Exception:
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError((tmp / "keys.log").read_text()) from None
                await asyncio.sleep(0.2)
        await mirror.start()
        if poll_only:  # every wake-up lost (a reconnect): the periodic poll alone
            await mirror._wakeup.stop()
        names = [f"bench-{i}" for i in range(count)]
        pubs = {}
        for name in names:
            pubs[name] = (await keys.create(name, "agent_identity")).record.latest.public_key
        for name in names:  # every status is in the mirror before we start timing
            while mirror.get(state_key("key", pubs[name].hex())) is None:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 10)
        rtt, after_reply, total = [], [], []
        already = 0
        for name in names:
            key = state_key("key", pubs[name].hex())
            t0 = time.perf_counter()
            await keys.revoke(name, "bench")
            t1 = time.perf_counter()
            seen = mirror.get(key)
            if seen is not None and seen.revoked:
                already += 1
                t2 = t1
            else:
                while True:
                    changed.clear()
                    seen = mirror.get(key)
                    if seen is not None and seen.revoked:
                        break
                    await asyncio.wait_for(changed.wait(), 10)
                t2 = time.perf_counter()
            rtt.append((t1 - t0) * 1000)
            after_reply.append((t2 - t1) * 1000)
            total.append((t2 - t0) * 1000)
        return {
            "revocations": count,
            "visible_before_reply": already,
            "request_to_reply_ms": summary(rtt),
            "reply_to_visible_ms": summary(after_reply),
            "request_to_visible_ms": summary(total),
        }
    finally:
        await mirror.stop()
        await mirror_nc.close()
        await client_nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--nats-url", help="use this server instead of starting one")
    parser.add_argument(
        "--poll-only",
        action="store_true",
        help="drop the mirror's wake-up subscription: measure the poll fallback alone",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ap-keys-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = None if args.nats_url else start_nats_server(tmp / "nats")
        try:
            url = args.nats_url or (server.url if server else "")
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            proc = start_manager(url, prefix, tmp)
            try:
                result = asyncio.run(run(url, prefix, proc, args.revocations, tmp, args.poll_only))
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            if server is not None:
                server.stop()
    result.update(
        bench="keys_revocation",
        date=dt.date.today().isoformat(),
        load_avg_1m_5m_15m=[round(x, 2) for x in os.getloadavg()],
        python=platform.python_version(),
        cpus=os.cpu_count(),
        method="revoke reply -> BucketMirror on a second connection; "
        "key manager in its own process; nearest-rank p95"
        + ("; wake-ups dropped (poll only)" if args.poll_only else ""),
    )
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
