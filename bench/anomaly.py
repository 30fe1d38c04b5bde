"""Anomaly worker benchmark: how fast a restart catches up, how fast a liar is caught.

Run from the repository root::

    python bench/anomaly.py [--snapshots N] [--repeats R] [--nats-url URL]

Starts its own nats-server (random port, temp store) unless ``--nats-url`` is
given. Two measurements, each repeated ``--repeats`` times (median and every
value reported):

* ``replay``: N MetricsSnapshots of 10 workers are stored in the metrics
  stream, then an in-process AnomalyWorker is started; the time from start
  until it has replayed them all (baselines rebuilt) gives snapshots/s.
* ``detection``: real processes (3 verifiers, 1 lying verifier from
  tests/byzantine.py, a tally, the anomaly worker); the time from the first
  request sent until the liar's member record reads ``quarantined``.

Exactly one JSON document goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import connect
from bus.natsserver import start_nats_server
from bus.runtime import RuntimeConfig
from bus.streams import ensure_telemetry_streams
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import MetricsSnapshot
from tests.helpers import Cluster
from workers.anomaly.worker import AnomalyWorker


async def replay_once(url: str, snapshots: int, tmp: Path) -> float:
    config = NatsConfig(url=url, prefix=f"b{uuid.uuid4().hex[:10]}")
    subjects = Subjects(config.prefix)
    nc = await connect(config, name="bench")
    await ensure_telemetry_streams(nc, subjects)
    js = nc.jetstream()
    futures = []
    for i in range(snapshots):
        w = i % 10
        tasks = (i // 10 + 1) * 100
        snap = MetricsSnapshot(
            kind="tally",
            worker_id=f"t{w}",
            instance="i",
            ts_ms=0,
            tasks=tasks,
            successes=tasks,
            failures=0,
            avg_ms=5.0,
            p99_ms=0.0,
            health="Healthy",
        )
        futures.append(await js.publish_async(subjects.metrics("tally", f"t{w}"), snap.encode()))
    await asyncio.gather(*futures)
    worker = AnomalyWorker(
        RuntimeConfig(worker_id="a1", nats=config, heartbeat_s=60, metrics_s=60, data_dir=tmp)
    )
    started = time.perf_counter()
    await worker.start()
    await asyncio.wait_for(worker.replayed.wait(), 600)
    elapsed = time.perf_counter() - started
    await worker.stop()
    await nc.close()
    return elapsed


async def detection_once(url: str, tmp: Path) -> float:
    cluster = Cluster(nats_url=url, prefix=f"b{uuid.uuid4().hex[:10]}", data_dir=tmp)
    subjects = Subjects(cluster.prefix)
    nc = await connect(NatsConfig(url=url, prefix=cluster.prefix), name="bench")
    try:
        for i in range(1, 4):
            cluster.start_verifier(f"v{i}")
        cluster.start_byzantine("b1", "lie")
        await cluster.wait_pool(4)
        cluster._spawn("anomaly-a1", ["-m", "workers.cli", "worker", "anomaly", "--id", "a1"])
        while True:
            try:
                await nc.request(subjects.status("anomaly", "a1"), b"", timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        cluster.start_tally()
        await cluster.wait_tally()
        agent = AgentIdentity.generate()
        async with await VerifyClient.connect(
            NatsConfig(url=url, prefix=cluster.prefix), timeout=15.0, retries=0
        ) as client:
            started = time.perf_counter()
            await client.submit_raw(signed_request(agent, "pay 1 EUR", "r1").encode())
            while True:
                pool = await membership.read_pool(nc, subjects)
                if any(m.status == membership.QUARANTINED for m in pool.members):
                    return time.perf_counter() - started
                if time.perf_counter() - started > 60:
                    raise RuntimeError("liar not quarantined within 60 s")
                await asyncio.sleep(0.005)
    finally:
        await nc.close()
        cluster.stop_all()


async def main(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server = None
        url = args.nats_url
        if url is None:
            server = start_nats_server(tmp / "nats")
            url = server.url
        try:
            replays, detections = [], []
            for r in range(args.repeats):
                print(f"replay {r + 1}/{args.repeats}", file=sys.stderr)
                replays.append(await replay_once(url, args.snapshots, tmp / f"r{r}"))
            for r in range(args.repeats):
                print(f"detection {r + 1}/{args.repeats}", file=sys.stderr)
                d = tmp / f"d{r}"
                d.mkdir()
                detections.append(await detection_once(url, d))
        finally:
            if server is not None:
                server.stop()
    return {
        "replay": {
            "snapshots": args.snapshots,
            "seconds": replays,
            "median_s": statistics.median(replays),
            "median_snapshots_per_s": args.snapshots / statistics.median(replays),
        },
        "detection": {"seconds": detections, "median_s": statistics.median(detections)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--snapshots", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nats-url")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
