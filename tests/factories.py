"""Build requests, ballots, votes and certificates from the public schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from schemas.identity import AgentIdentity
from schemas.messages import Ballot, VerificationRequest, Vote
from schemas.quorum import QuorumRule
from schemas.signing import request_digest, sign_ballot
from schemas.votes import sign_vote
from workers.consensus.ballot import BallotRound
from workers.consensus.judge import judge


def request(signer: AgentIdentity, message: bytes, rid: str, *, tamper: bool = False) -> bytes:
    sig = signer.sign(message)
    return VerificationRequest(
        request_id=rid,
        message=message + (b"!" if tamper else b""),
        signature=sig,
        public_key=signer.public_key,
    ).encode()


@dataclass
class Scenario:
    n: int = 4
    threshold: Fraction = Fraction(2, 3)
    epoch: int = 7
    tally_id: str = "t1"
    network: str = "ap"
    verifiers: list[AgentIdentity] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verifiers = [AgentIdentity.generate() for _ in range(self.n)]
        self.agent = AgentIdentity.generate()
        self.tally = AgentIdentity.generate()
        if not self.raws:
            self.raws = [
                request(self.agent, b"pay 10", "r-good"),
                request(self.agent, b"pay 20", "r-bad", tamper=True),
            ]

    @property
    def pool(self) -> frozenset[bytes]:
        return frozenset(v.public_key for v in self.verifiers)

    def ballot(self, ballot_id: str = "b1", epoch: int | None = None) -> Ballot:
        """A ballot signed by this scenario's tally (for the round rules; its times
        are fixed, so a live verifier would refuse it: see ``live_ballot``)."""
        return sign_ballot(
            self.tally,
            Ballot(
                ballot_id=ballot_id,
                epoch=self.epoch if epoch is None else epoch,
                tally_id=self.tally_id,
                deadline_ms=2**40,
                requests=tuple(self.raws),
            ),
            network=self.network,
        )

    def round(self, ballot_id: str = "b1") -> BallotRound:
        return BallotRound(
            ballot_id=ballot_id,
            epoch=self.epoch,
            tally_id=self.tally_id,
            pool=self.pool,
            rule=QuorumRule(self.n, self.threshold),
            request_ids=tuple(judge(r).request_id for r in self.raws),
            digests=tuple(request_digest(r) for r in self.raws),
            network=self.network,
        )

    def vote(
        self,
        i: int,
        *,
        ballot: Ballot | None = None,
        lie: bool = False,
        ts_ms: int = 1000,
        signer: AgentIdentity | None = None,
        state_rev: int | None = None,
    ) -> Vote:
        ballot = ballot or self.ballot()
        entries = [judge(r) for r in ballot.requests]
        if lie:
            entries = [type(e)(e.request_id, e.digest, not e.valid, "LIE") for e in entries]
        return sign_vote(
            signer or self.verifiers[i],
            ballot,
            entries,
            ts_ms,
            state_rev=state_rev,
            network=self.network,
        )
