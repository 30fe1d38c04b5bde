"""Which ballots a verifier votes on, against a real nats-server (in-process worker).

A verifier votes only on a ballot signed by the key that the pool record
``tally.<tally_id>`` holds, issued within its skew window, at its current pool
epoch; the vote goes to ``{prefix}.vote.<tally_id>``, whatever reply subject
the ballot came with. It signs at most one vote per ballot id: the same bytes
again get the same vote bytes (never a second judging), other bytes under the
id get nothing, so nobody can frame it as an equivocator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.config import NatsConfig
from bus.runtime import RuntimeConfig, now_ms
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import Ballot, Vote
from schemas.signing import sign_ballot
from schemas.votes import vote_signature_ok
from tests.factories import request
from workers.consensus import verifier as vmod
from workers.consensus.verifier import VerifierWorker

pytestmark = pytest.mark.integration


@dataclass
class Bench:
    nc: Client
    subjects: Subjects
    worker: VerifierWorker
    tallies: dict[str, AgentIdentity]
    agent: AgentIdentity = field(default_factory=AgentIdentity.generate)
    votes: list[tuple[str, bytes]] = field(default_factory=list)

    async def epoch(self) -> int:
        return (await membership.read_pool(self.nc, self.subjects)).epoch

    async def ballot(
        self,
        ballot_id: str = "b-1",
        *,
        tally: str = "t1",
        signer: str | None = None,
        message: bytes = b"pay 1",
        epoch: int | None = None,
        issued_ms: int | None = None,
        deadline_ms: int | None = None,
        network: str | None = None,
    ) -> bytes:
        issued = now_ms() if issued_ms is None else issued_ms
        unsigned = Ballot(
            ballot_id=ballot_id,
            epoch=await self.epoch() if epoch is None else epoch,
            tally_id=tally,
            deadline_ms=issued + 5000 if deadline_ms is None else deadline_ms,
            requests=(request(self.agent, message, f"r-{ballot_id}"),),
            issued_ms=issued,
        )
        return sign_ballot(
            self.tallies[signer or tally],
            unsigned,
            network=self.subjects.prefix if network is None else network,
        ).encode()

    def count(self, name: str) -> int:
        return self.worker.stats.counters.get(name, 0)

    async def send(self, data: bytes, expect: str, reply: str | None = None) -> None:
        """Publish a ballot and wait until the verifier counted ``expect`` once more."""
        before = self.count(expect)
        await self.nc.publish(self.subjects.ballot, data, reply=reply or "")
        await until(lambda: self.count(expect) > before, f"{expect} not counted")
        await self.nc.flush()


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.02)


@pytest.fixture
async def bench(nats_config: NatsConfig, nc: Client, tmp_path: Path) -> AsyncIterator[Bench]:
    subjects = Subjects(nats_config.prefix)
    tallies = {t: AgentIdentity.generate() for t in ("t1", "t2")}
    tallies["stranger"] = AgentIdentity.generate()
    for name in ("t1", "t2"):
        await membership.register_tally(nc, subjects, name, tallies[name])
    worker = VerifierWorker(
        RuntimeConfig(worker_id="v1", nats=nats_config, data_dir=tmp_path, drain_timeout_s=1)
    )
    await worker.start()
    b = Bench(nc, subjects, worker, tallies)

    async def collect(msg: Msg) -> None:
        b.votes.append((msg.subject, msg.data))

    await nc.subscribe(subjects.votes_all, cb=collect)
    await nc.subscribe("spy.>", cb=collect)
    try:
        yield b
    finally:
        await worker.stop()


async def test_admitted_ballot_is_voted_to_its_tally_not_the_reply(bench: Bench) -> None:
    await bench.send(await bench.ballot(), "requests_judged", reply="spy.deputy")
    await until(lambda: len(bench.votes) == 1, "no vote")
    subject, data = bench.votes[0]
    assert subject == bench.subjects.votes("t1")  # never the reply subject a sender chose
    vote = Vote.decode(data)
    assert vote_signature_ok(vote, network=bench.subjects.prefix)
    assert not vote_signature_ok(vote, network="other")  # the network id is signed


@pytest.mark.parametrize(
    ("make", "code"),
    [
        ({"signer": "stranger"}, "BALLOT_UNKNOWN_TALLY"),  # a key no tally record holds
        ({"tally": "t1", "signer": "t2"}, "BALLOT_TALLY_MISMATCH"),  # t2 routing votes to t1
        ({"network": "other"}, "BALLOT_BAD_SIGNATURE"),  # signed for another deployment
        ({"issued_ms": 1}, "BALLOT_ISSUED_SKEW"),  # not judged at our own clock instead
        ({"deadline_ms": 2**50}, "BALLOT_DEADLINE_TOO_FAR"),  # longer than we remember
    ],
)
async def test_refused_ballots_get_no_vote(
    bench: Bench, make: dict[str, object], code: str
) -> None:
    kwargs = dict(make)
    if kwargs.get("issued_ms") == 1:
        kwargs["issued_ms"] = now_ms() - vmod.ISSUED_SKEW_MS - 5_000
    await bench.send(await bench.ballot(**kwargs), f"ballot_refused_{code}")  # type: ignore[arg-type]
    # a good ballot afterwards is voted on: the refusal did not stop the worker
    await bench.send(await bench.ballot("b-after"), "requests_judged")
    await until(lambda: len(bench.votes) == 1, "no vote for the good ballot")
    assert Vote.decode(bench.votes[0][1]).ballot_id == "b-after"


async def test_tampered_ballot_fails_its_signature(bench: Bench) -> None:
    good = Ballot.decode(await bench.ballot())
    tampered = replace(good, requests=(request(bench.agent, b"pay 999", "r-b-1"),)).encode()
    await bench.send(tampered, "ballot_refused_BALLOT_BAD_SIGNATURE")
    await bench.send(Ballot.decode(await bench.ballot()).encode(), "requests_judged")


async def test_epoch_behind_is_refused_and_ahead_is_waited_for(bench: Bench) -> None:
    epoch = await bench.epoch()
    await bench.send(await bench.ballot(epoch=epoch - 1), "ballot_refused_BALLOT_EPOCH_BEHIND")
    # a ballot one epoch ahead of the verifier's view: it catches up and votes
    ahead = await bench.ballot("b-ahead", epoch=epoch + 1)
    await bench.nc.publish(bench.subjects.ballot, ahead)
    await membership.register_tally(bench.nc, bench.subjects, "t3", AgentIdentity.generate())
    await until(lambda: bench.count("requests_judged") == 1, "no vote after catching up")
    assert bench.count("epoch_catch_up") >= 1
    # an epoch the pool never reaches: refused after the bounded wait
    await bench.send(
        await bench.ballot("b-future", epoch=epoch + 50), "ballot_refused_BALLOT_EPOCH_AHEAD"
    )


async def test_replay_gets_the_same_vote_and_id_reuse_gets_none(bench: Bench) -> None:
    first = await bench.ballot(message=b"pay 1")
    await bench.send(first, "requests_judged")
    await bench.send(await bench.ballot(message=b"pay 2"), "ballot_refused_BALLOT_ID_REUSED")
    await bench.send(first, "ballot_repeated")
    await until(lambda: len(bench.votes) == 2, "no repeated vote")
    assert bench.votes[0] == bench.votes[1]  # byte for byte: judged once
    assert bench.count("requests_judged") == 1


async def test_full_memory_refuses_new_ballots(bench: Bench) -> None:
    bench.worker._memory.max_entries = 1
    await bench.send(await bench.ballot("b-1"), "requests_judged")
    await bench.send(await bench.ballot("b-2"), "ballot_refused_BALLOT_OVERLOADED")
    await bench.send(await bench.ballot("b-1", message=b"pay 3"), "ballot_refused_BALLOT_ID_REUSED")


async def test_garbage_is_counted_not_answered(bench: Bench) -> None:
    await bench.send(b"\xc1", "ballot_refused_MALFORMED_PAYLOAD", reply="spy.garbage")
    unsigned = Ballot.decode(await bench.ballot()).to_wire()
    del unsigned["sig"]
    from schemas.codec import encode

    await bench.send(encode(unsigned), "ballot_refused_SCHEMA_VIOLATION", reply="spy.garbage")
    assert bench.votes == []


async def test_tally_reballots_when_the_epoch_moves(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    """A ballot at an epoch the verifiers left gets no votes; once the tally's pool
    view moves on, its open requests are balloted again at the new epoch (not lost
    to a TIMEOUT)."""
    from bus.client import VerifyClient, signed_request
    from tests.integration.test_hardening import running
    from workers.consensus.tally import TallyOptions

    async with running(nats_config, tmp_path, options=TallyOptions(deadline_s=8)) as system:
        tally, verifiers = system.tally, system.verifiers
        assert tally._pool is not None
        current = tally._pool.view
        # the tally lags one epoch behind its verifiers (as after a change it has not seen)
        tally._pool.view = replace(current, epoch=current.epoch - 1)
        async with await VerifyClient.connect(nats_config, timeout=15) as client:
            pending = asyncio.create_task(
                client.verify_with_consensus(signed_request(AgentIdentity.generate(), "pay"))
            )
            await until(
                lambda: all(
                    sum(n for k, n in v.stats.counters.items() if k.startswith("ballot_refused_"))
                    >= 1
                    for v in verifiers
                ),
                "verifiers did not refuse the old-epoch ballot",
            )
            assert tally.stats.counters.get("reballots_new_epoch", 0) == 0
            # the pool moves on (a new tally is admitted); the tally's watch sees it
            await membership.register_tally(
                nc, Subjects(nats_config.prefix), "t9", AgentIdentity.generate()
            )
            cert = await pending
        assert cert.decision == "VALID"
        assert cert.epoch > current.epoch
        assert tally.stats.counters["reballots_new_epoch"] == 1
