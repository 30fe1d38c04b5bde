"""A verifier signs at most one vote per ballot id (real nats-server, in-process worker):
a second ballot reusing an id with other contents — which only a rogue publisher
could send — gets no vote, so nobody can frame the verifier as an equivocator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from bus.config import NatsConfig
from bus.connection import barrier
from bus.runtime import RuntimeConfig, now_ms
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import Ballot, Vote
from tests.factories import request
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration


async def test_one_vote_per_ballot_id(nats_config: NatsConfig, nc: Client, tmp_path: Path) -> None:
    worker = VerifierWorker(
        RuntimeConfig(worker_id="v1", nats=nats_config, data_dir=tmp_path, drain_timeout_s=1)
    )
    await worker.start()
    try:
        subjects = Subjects(nats_config.prefix)
        agent = AgentIdentity.generate()
        inbox = nc.new_inbox()
        votes: list[Vote] = []

        async def collect(msg: object) -> None:
            votes.append(Vote.decode(msg.data))  # type: ignore[attr-defined]

        await nc.subscribe(inbox, cb=collect)

        def ballot(message: bytes) -> bytes:
            return Ballot(
                ballot_id="b-1",
                epoch=1,
                tally_id="t1",
                deadline_ms=now_ms() + 5000,
                requests=(request(agent, message, "r1"),),
                issued_ms=now_ms(),
            ).encode()

        first = ballot(b"pay 1")
        for data in (first, ballot(b"pay 2"), first):  # same id, other bytes; then a replay
            await nc.publish(subjects.ballot, data, reply=inbox)
            await barrier(nc)
            await asyncio.sleep(0.3)
        assert len(votes) == 2 and votes[0] == votes[1]  # the replay gets the same vote
        assert worker.stats.counters["ballot_id_reused"] == 1
    finally:
        await worker.stop()
