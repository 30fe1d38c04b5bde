"""A client process for the tracing tests: OTel from OTEL_* env, N requests at once.

    python -m tests.trace_client COUNT [--invalid K]

Prints one JSON line: ``{"requests": [{"request_id", "decision"}...]}``. The
first K requests carry a broken signature (decided INVALID).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bus.client import VerifyClient, signed_request
from bus.tracing import setup_tracing, shutdown_telemetry
from schemas.errors import AgenticPaymentsError
from schemas.identity import AgentIdentity
from schemas.messages import VerificationRequest


async def main(count: int, invalid: int) -> list[dict[str, str]]:
    identity = AgentIdentity.generate()
    requests = []
    for i in range(count):
        req = signed_request(identity, f"traced payment {i}")
        if i < invalid:
            req = VerificationRequest(req.request_id, req.message,
                                      bytes([req.signature[0] ^ 1]) + req.signature[1:],
                                      req.public_key)
        requests.append(req)
    async with await VerifyClient.connect(timeout=20.0) as client:
        results = await client.verify_many(requests)
    return [{"request_id": r.request_id,
             "decision": res.code if isinstance(res, AgenticPaymentsError) else res.decision}
            for r, res in zip(requests, results, strict=True)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--invalid", type=int, default=0)
    args = parser.parse_args()
    traced = setup_tracing("agentic-payments-client")
    try:
        out = asyncio.run(main(args.count, args.invalid))
    finally:
        shutdown_telemetry()
    print(json.dumps({"traced": traced, "requests": out}))
