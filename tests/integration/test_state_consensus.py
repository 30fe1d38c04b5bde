"""Verdict-state revisions in real rounds: a tally never mixes revisions, re-ballots
when verifiers are ahead of it, and a verifier claiming a newer state cannot make it
loop. Tally and verifiers in one process against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.runtime import RuntimeConfig
from schemas.certificate import verify_certificate
from schemas.identity import AgentIdentity
from schemas.messages import Ballot, ConsensusResult
from workers.consensus.tally import MAX_STATE_REBALLOTS, TallyOptions, TallyWorker
from workers.consensus.verdict_state import StateVerdicts
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration


class AheadVerifier(VerifierWorker):
    """Honest verdicts, but always judged under a revision newer than the ballot's."""

    async def _judged_state(self, ballot: Ballot, now: int) -> tuple[int, StateVerdicts]:
        _rev, state = await super()._judged_state(ballot, now)
        return ballot.state_rev + 1000, state


Start = Callable[[int], AsyncIterator[TallyWorker]]


@pytest.fixture
def start(nats_config: NatsConfig, tmp_path: Path) -> Callable[[int], object]:
    async def run(ahead: int) -> AsyncIterator[TallyWorker]:
        def rt(worker_id: str) -> RuntimeConfig:
            return RuntimeConfig(
                worker_id=worker_id, nats=nats_config, data_dir=tmp_path, drain_timeout_s=2
            )

        workers: list[VerifierWorker] = [
            (AheadVerifier if i <= ahead else VerifierWorker)(rt(f"v{i}")) for i in range(1, 5)
        ]
        for worker in workers:
            await worker.start()
        tally = TallyWorker(rt("t1"), TallyOptions(deadline_s=2))
        await tally.start()
        try:
            yield tally
        finally:
            await tally.stop()
            for worker in workers:
                await worker.stop()

    return run


async def _verify(nats_config: NatsConfig, n: int = 3) -> list[object]:
    agent = AgentIdentity.generate()
    async with await VerifyClient.connect(nats_config, retries=0) as client:
        return await client.verify_many([signed_request(agent, f"pay {i}") for i in range(n)])


async def test_one_verifier_ahead_is_outvoted_at_the_ballot_revision(
    start: Callable[[int], AsyncIterator[TallyWorker]], nats_config: NatsConfig
) -> None:
    async for tally in start(1):
        results = await _verify(nats_config)
        assert all(isinstance(r, ConsensusResult) and r.decision == "VALID" for r in results)
        assert tally._pool is not None
        for r in results:
            assert isinstance(r, ConsensusResult)
            verify_certificate(r, tally._pool.view.keys, network=tally.subjects.prefix)
            assert r.total_votes == 3  # the vote under another revision is not in it
        assert tally.stats.counters["vote_rejected_VOTE_STATE_MISMATCH"] >= 1
        assert "reballots_newer_state" not in tally.stats.counters


async def test_too_many_ahead_rebalots_a_bounded_number_of_times_then_times_out(
    start: Callable[[int], AsyncIterator[TallyWorker]], nats_config: NatsConfig
) -> None:
    async for tally in start(2):  # n=4, q=3: two ahead leave only two at the ballot's revision
        results = await _verify(nats_config, n=2)
        assert all(isinstance(r, ConsensusResult) and r.decision == "TIMEOUT" for r in results)
        assert tally.stats.counters["reballots_newer_state"] == 2 * MAX_STATE_REBALLOTS
        for r in results:
            assert isinstance(r, ConsensusResult)
            assert r.votes_for <= 2  # never a quorum assembled from two revisions
