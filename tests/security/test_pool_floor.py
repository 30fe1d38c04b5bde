"""Hole 4: shrinking the pool turned a tolerated minority into a quorum.

The pool floor and the quarantine rate limits lived only inside the anomaly
worker: whoever holds the anomaly role's grants (a compromised anomaly worker)
could write quarantine records for any number of seats, and tallies and clients
accepted any n >= 3. With n=7 and 2 Byzantine verifiers, quarantining 4 honest
ones left n=3, q=2: the Byzantine pair decides. The pool now honours at most
f = floor((seats - 1) / 3) quarantine records (schemas/pool.py), the tally refuses
to decide below its --min-pool, and a client pins min_pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.connection import connect
from bus.subjects import Subjects
from schemas.errors import CertificateInvalid, RemoteError
from schemas.identity import AgentIdentity
from tests.secure import SecureCluster

SEATS = [f"v{i}" for i in range(1, 8)]


async def test_anomaly_role_cannot_quarantine_the_pool_below_n_minus_f(
    secure_cluster: SecureCluster, attacker: Callable[[str], Awaitable[Client]]
) -> None:
    subjects = Subjects(secure_cluster.prefix)
    for name in SEATS:
        secure_cluster.start_verifier(name)
    await secure_cluster.wait_pool(7)
    secure_cluster.start_tally("t1")
    await secure_cluster.wait_tally()
    before = await secure_cluster.wait_pool(7)

    anomaly = await attacker("anomaly1")  # a compromised anomaly worker's grants
    for seat in before.verifiers[:4]:
        await membership.quarantine(anomaly, subjects, seat.worker_id, seat.public_key)

    admin = await connect(secure_cluster.admin(), name="test-admin")
    try:
        after = await membership.read_pool(admin, subjects)
    finally:
        await admin.close()
    assert after.epoch > before.epoch
    assert len(after.keys) >= 7 - 2, f"{len(after.keys)} of 7 seats left after 4 quarantines"
    assert len(after.keys) == 5 and len(after.over_cap) == 2

    assert secure_cluster.secure is not None
    agent = AgentIdentity.generate()
    request = signed_request(agent, "pay 5 EUR", "floor-1")
    alice = await connect(secure_cluster.secure.config("alice"), name="alice")
    try:
        # the tally decides at the 5-seat pool; a client pinning a floor of 6 refuses it
        plain = VerifyClient(alice, prefix=secure_cluster.prefix, timeout=15.0)
        cert = await plain.verify_with_consensus(request)
        assert cert.decision == "VALID" and cert.n == 5
        pinned = VerifyClient(alice, prefix=secure_cluster.prefix, min_pool=6)
        with pytest.raises(CertificateInvalid, match="below the minimum 6"):
            await pinned.check(cert, request.request_id, cert.request_digest)

        # a tally with its own floor of 6 refuses to decide at all
        secure_cluster.kill("tally-t1")
        secure_cluster.processes["tally-t1"].wait(10)
        secure_cluster.start_tally("t2", "--min-pool", "6")
        await secure_cluster.wait_tally()
        again = signed_request(agent, "pay 6 EUR", "floor-2")
        strict = VerifyClient(alice, prefix=secure_cluster.prefix, retries=0)
        with pytest.raises(RemoteError) as refused:
            await strict.verify_with_consensus(again)
        assert refused.value.code == "POOL_TOO_SMALL"
    finally:
        await alice.close()
