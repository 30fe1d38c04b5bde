"""Trust-chain validation cost: the pure builder, the cache, and the service round trip.

Run from the repository root::

    python bench/trust_chain.py [--iterations N] [--no-service] [--nats-url URL]

Measures, each as the median of ``--repeats`` runs of ``--iterations`` calls:

* ``build_chain`` for a valid chain of 1, 3 and 10 certificates (every link's
  signature checked: the cost is dominated by Ed25519 verifies);
* ``build_chain`` that exhausts the default budget (64 signature checks) on a
  fan-out of issuers, the worst case a hostile request can cause;
* a ``ChainCache`` hit;
* unless ``--no-service``: ``validate`` request/reply through one in-process
  trust worker against a nats-server (its own, started here, unless
  ``--nats-url``), for a 3-certificate chain (leaf certificate presented, two
  stored), with the cache on and with a zero-size cache (every call rebuilt).

One JSON document goes to stdout, with the load average before and after
(the machine is shared: read the numbers against it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.identity import AgentIdentity
from schemas.trust import PURPOSE_CA, PURPOSE_PAYMENT, TrustCertificate, issue
from workers.trust.chain import ChainCache, build_chain

NOW = 1_700_000_000_000
DAY = 86_400_000


def chain_of(length: int) -> tuple[bytes, list[TrustCertificate], bytes]:
    keys = [AgentIdentity.generate() for _ in range(length + 1)]
    certs = []
    for i in range(length):
        purposes = (PURPOSE_PAYMENT,) if i == 0 else (PURPOSE_CA, PURPOSE_PAYMENT)
        certs.append(
            issue(
                keys[i + 1],
                serial=f"c{i}",
                subject_key=keys[i].public_key,
                not_before_ms=NOW - DAY,
                not_after_ms=NOW + DAY,
                purposes=purposes,
                path_len=-1,
            )
        )
    return keys[0].public_key, certs, keys[-1].public_key


def per_call_us(fn: Callable[[], Any], iterations: int, repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        runs.append((time.perf_counter() - start) / iterations * 1e6)
    return {"median_us": round(statistics.median(runs), 2), "runs_us": [round(r, 2) for r in runs]}


def pure(iterations: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for length in (1, 3, 10):
        leaf, certs, anchor = chain_of(length)
        result = build_chain(leaf, certs, [anchor], purpose=PURPOSE_PAYMENT, now_ms=NOW)
        assert result.ok and len(result.path) == length
        out[f"build_chain_valid_{length}"] = per_call_us(
            lambda leaf=leaf, certs=certs, anchor=anchor: build_chain(
                leaf, certs, [anchor], purpose=PURPOSE_PAYMENT, now_ms=NOW
            ),
            iterations,
            repeats,
        )
    leaf_id = AgentIdentity.generate()
    fan = [
        issue(
            AgentIdentity.generate(),
            serial=f"w{i}",
            subject_key=leaf_id.public_key,
            not_before_ms=NOW - DAY,
            not_after_ms=NOW + DAY,
            purposes=[PURPOSE_PAYMENT],
        )
        for i in range(100)
    ]
    worst = build_chain(leaf_id.public_key, fan, [bytes(32)], purpose=PURPOSE_PAYMENT, now_ms=NOW)
    assert worst.code == "CHAIN_BUDGET" and worst.signature_checks == 64
    out["build_chain_budget_exhausted_64"] = per_call_us(
        lambda: build_chain(
            leaf_id.public_key, fan, [bytes(32)], purpose=PURPOSE_PAYMENT, now_ms=NOW
        ),
        max(1, iterations // 10),
        repeats,
    )
    cache = ChainCache()
    leaf, certs, anchor = chain_of(3)
    cache.put(
        1,
        leaf,
        PURPOSE_PAYMENT,
        [],
        build_chain(leaf, certs, [anchor], purpose=PURPOSE_PAYMENT, now_ms=NOW),
    )
    out["cache_hit"] = per_call_us(
        lambda: cache.get(1, leaf, PURPOSE_PAYMENT, [], NOW), iterations, repeats
    )
    return out


async def service(nats_url: str | None, iterations: int, repeats: int) -> dict[str, Any]:
    from bus.config import NatsConfig
    from bus.connection import connect
    from bus.natsserver import start_nats_server
    from bus.runtime import RuntimeConfig
    from bus.trust_client import TrustClient
    from workers.trust.worker import TrustWorker

    tmp = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    server = None
    if nats_url is None:
        server = start_nats_server(tmp / "nats")
        nats_url = server.url
    config = NatsConfig(url=nats_url, prefix=f"b{uuid.uuid4().hex[:10]}")
    worker = TrustWorker(RuntimeConfig(worker_id="bench", nats=config, data_dir=tmp))
    await worker.start()
    nc = await connect(config, name="bench")
    try:
        client = TrustClient(nc, config.prefix)
        leaf, certs, anchor = chain_of(3)
        await client.add_anchor(anchor)
        for c in certs[1:]:
            last = await client.add_cert(c)
        presented = (certs[0].encode(),)
        assert (
            await client.validate(leaf, presented=presented, now_ms=NOW, min_revision=last.revision)
        ).ok
        out: dict[str, Any] = {}
        for label, uncached in (("validate_cached", False), ("validate_uncached", True)):
            worker.cache = ChainCache(max_entries=0 if uncached else 4096)
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(iterations):
                    reply = await client.validate(leaf, presented=presented, now_ms=NOW)
                    assert reply.ok
                runs.append((time.perf_counter() - start) / iterations * 1e6)
            out[label] = {
                "median_us": round(statistics.median(runs), 2),
                "runs_us": [round(r, 2) for r in runs],
                "cache_hits": worker.cache.hits,
            }
        return out
    finally:
        await nc.close()
        await worker.stop()
        if server is not None:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-service", action="store_true")
    parser.add_argument("--nats-url")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "iterations": args.iterations,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "pure": pure(args.iterations, args.repeats),
    }
    if not args.no_service:
        result["service"] = asyncio.run(service(args.nats_url, args.iterations, args.repeats))
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
