"""Hole 9a: request ids were global, so a client could squat another client's
guessable id for the 24 h the decisions bucket keeps it.

The adversary is alice (client role). Before bob sends his requests she submits
requests under bob's guessable ids: (a) signed with her own key, (b) naming bob's
public key with a signature that does not verify. Before the fix bob then got
REQUEST_ID_CONFLICT for each (the id was taken for other bytes), also after a tally
restart (from the decisions bucket). Now an id is scoped to the request's public key,
and a request whose signature does not verify claims nothing beyond its own bytes:
bob's requests are decided on their own merits, and alice's retries with the same
bytes still get their own answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from nats.aio.client import Client

from bus.client import VerifyClient, signed_request
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, ErrorReply
from tests.secure import SecureCluster

pytestmark = pytest.mark.slow

Attacker = Callable[[str], Awaitable[Client]]


async def submit(config: object, data: bytes) -> ConsensusResult | ErrorReply:
    async with await VerifyClient.connect(config, timeout=15.0, retries=0) as client:  # type: ignore[arg-type]
        return await client.submit_raw(data)


def decision(reply: ConsensusResult | ErrorReply) -> str:
    return reply.decision if isinstance(reply, ConsensusResult) else reply.code


async def test_a_client_cannot_squat_another_clients_request_ids(
    secure_cluster: SecureCluster,
) -> None:
    await secure_cluster.start_system(4)
    assert secure_cluster.secure is not None
    alice_config = secure_cluster.secure.config("alice")
    bob_config = secure_cluster.secure.config("bob")
    alice, bob = AgentIdentity.generate(), AgentIdentity.generate()

    squats: dict[str, bytes] = {}
    for rid in ("bob-1", "bob-3"):  # (a) alice's own signed request under bob's id
        squats[rid] = signed_request(alice, f"alice pays 1 to alice ({rid})", rid).encode()
    for rid in ("bob-2", "bob-4"):  # (b) bob's public key, a signature that fails
        forged = signed_request(alice, f"bob pays 1000 to alice ({rid})", rid)
        squats[rid] = replace(forged, public_key=bob.public_key).encode()
    first = {rid: await submit(alice_config, data) for rid, data in squats.items()}
    assert {rid: decision(r) for rid, r in first.items()} == {
        "bob-1": "VALID",
        "bob-2": "INVALID",
        "bob-3": "VALID",
        "bob-4": "INVALID",
    }

    # bob, while the tally still remembers the squats
    for rid in ("bob-1", "bob-2"):
        reply = await submit(bob_config, signed_request(bob, f"bob pays 5 ({rid})", rid).encode())
        assert decision(reply) == "VALID", f"{rid}: {reply}"

    # bob, after a tally restart: only the decisions bucket remembers the squats
    secure_cluster.kill("tally-t1")
    secure_cluster.processes["tally-t1"].wait(10)
    secure_cluster.start_tally("t1")
    await secure_cluster.wait_tally()
    for rid in ("bob-3", "bob-4"):
        reply = await submit(bob_config, signed_request(bob, f"bob pays 5 ({rid})", rid).encode())
        assert decision(reply) == "VALID", f"{rid} after a restart: {reply}"

    # alice's retries with the same bytes still get the same answer
    for rid, data in squats.items():
        again = await submit(alice_config, data)
        assert isinstance(again, ConsensusResult), f"{rid}: {again}"
        assert again.encode() == first[rid].encode(), rid  # type: ignore[union-attr]

    # bob's id is his now: other bytes under it are a conflict, signed or not
    clash = signed_request(bob, "bob pays 6 (bob-1)", "bob-1").encode()
    assert decision(await submit(bob_config, clash)) == "REQUEST_ID_CONFLICT"
    forged = replace(signed_request(alice, "bob pays 7", "bob-1"), public_key=bob.public_key)
    assert decision(await submit(alice_config, forged.encode())) == "REQUEST_ID_CONFLICT"
