"""Authority policy evaluation benchmark: prints one JSON document.

Run from the repository root::

    python bench/authority.py [--rounds N] [--nats-url URL]

* ``pure``: ``workers.authority.policy.evaluate`` (what a verifier runs against its
  state mirror) for policies of 3, 8 and 32 endorsements with nested groups;
  microseconds per call, median of ``--rounds`` timed batches. The cost is the
  Ed25519 verifications (one per endorsement) plus the slot matching.
* ``service``: round trip of the ``evaluate`` operation to one in-process
  authority worker on its own nats-server (or ``--nats-url``), one request at
  a time; latency p50/p90/p99 in ms (nearest rank).
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
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.authority_client import AuthorityClient
from bus.config import NatsConfig
from bus.connection import connect
from bus.natsserver import start_nats_server
from bus.runtime import RuntimeConfig
from schemas.authority import (
    AuthorityRecord,
    Endorsement,
    PolicyGroup,
    QuorumPolicy,
    message_digest,
    sign_endorsement,
)
from schemas.identity import AgentIdentity
from workers.authority.policy import evaluate
from workers.authority.worker import AuthorityWorker

DIGEST = message_digest(b"pay 10 EUR to merchant-42")


def setup(n: int) -> tuple[QuorumPolicy, dict[bytes, AuthorityRecord], list[Endorsement]]:
    ids = [AgentIdentity.generate() for _ in range(n)]
    levels = ["Root", "High", "Medium"]
    records = {
        i.public_key: AuthorityRecord(i.public_key, f"a{k}", levels[k % 3], True)
        for k, i in enumerate(ids)
    }
    policy = QuorumPolicy(
        "payments",
        n,
        "Medium",
        Fraction(2, 3),
        (PolicyGroup(max(1, n // 3), "High"), PolicyGroup(1, "Root")),
    )
    return policy, records, [sign_endorsement(i, "payments", DIGEST) for i in ids]


def pure(rounds: int) -> dict[str, float]:
    out = {}
    for n in (3, 8, 32):
        policy, records, ends = setup(n)
        assert evaluate(policy, records, ends, "payments", DIGEST).ok
        batch = 200
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(batch):
                evaluate(policy, records, ends, "payments", DIGEST)
            samples.append((time.perf_counter() - start) / batch * 1e6)
        out[f"endorsements_{n}_us"] = round(statistics.median(samples), 1)
    return out


def rank(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-pct * len(ordered) // 100)) - 1))]


async def service(url: str, requests: int) -> dict[str, float]:
    config = NatsConfig(url=url, prefix=f"bench{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as tmp:
        worker = AuthorityWorker(RuntimeConfig(worker_id="a1", nats=config, data_dir=Path(tmp)))
        await worker.start()
        nc = await connect(config, name="bench")
        try:
            client = AuthorityClient(nc, config.prefix)
            ids = [AgentIdentity.generate() for _ in range(3)]
            for k, ident in enumerate(ids):
                await client.change("add", AuthorityRecord(ident.public_key, f"a{k}", "High", True))
            await client.set_policy(QuorumPolicy("policy-admin", 1, "High", Fraction(1, 3)))
            default = QuorumPolicy("default", 2, "High", Fraction(2, 3), serial=1)
            await client.set_policy(
                default, (sign_endorsement(ids[0], "policy-admin", default.digest()),)
            )
            ends = tuple(sign_endorsement(i, "payments", DIGEST) for i in ids)
            latencies = []
            for _ in range(requests):
                start = time.perf_counter()
                verdict = await client.evaluate("payments", DIGEST, ends)
                latencies.append((time.perf_counter() - start) * 1000)
                assert verdict.ok
            return {
                "requests": requests,
                "p50_ms": round(rank(latencies, 50), 3),
                "p90_ms": round(rank(latencies, 90), 3),
                "p99_ms": round(rank(latencies, 99), 3),
            }
        finally:
            await nc.close()
            await worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--nats-url")
    args = parser.parse_args()
    result: dict[str, object] = {"pure": pure(args.rounds)}
    if args.nats_url:
        result["service"] = asyncio.run(service(args.nats_url, args.requests))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_nats_server(Path(tmp))
            try:
                result["service"] = asyncio.run(service(server.url, args.requests))
            finally:
                server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
