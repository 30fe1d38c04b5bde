"""One consensus round over a ballot, as pure state (no I/O, no clock).

The tally creates a ``BallotRound`` with the pool frozen at ballot time, feeds
it every vote that arrives with ``offer`` and gets back the requests that just
got decided. All vote admission rules live here, in this order: right ballot
and epoch and tally, a member key, entries that match the ballot request by
request, a good signature, then one vote per key — the same verdicts again
are a duplicate and ignored, conflicting signed verdicts from the same key are
equivocation, rejected and kept as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import merkle
from schemas.errors import VoteRejected
from schemas.messages import ConsensusResult, Vote, VoteProof
from schemas.quorum import Decision, QuorumRule
from schemas.votes import vote_signature_ok, vote_tree


@dataclass(frozen=True)
class Equivocation:
    """Two different votes signed by the same verifier for one ballot."""

    verifier_key: bytes
    first: Vote
    second: Vote


@dataclass
class BallotRound:
    ballot_id: str
    epoch: int
    tally_id: str
    pool: frozenset[bytes]
    rule: QuorumRule
    request_ids: tuple[str, ...]
    digests: tuple[bytes, ...]
    state_rev: int = 0
    votes: dict[bytes, tuple[Vote, list[list[bytes]]]] = field(default_factory=dict)
    equivocations: list[Equivocation] = field(default_factory=list)
    #: verifier key -> the newer verdict-state revision it signed a vote under
    newer_state: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = len(self.request_ids)
        self.valid = [0] * size
        self.invalid = [0] * size
        self.decided: list[Decision | None] = [None] * size
        # votes counted for each request at the moment it was decided
        self._voters: list[list[bytes]] = [[] for _ in range(size)]
        self.abandoned: set[int] = set()

    @property
    def open_count(self) -> int:
        return sum(1 for i, d in enumerate(self.decided) if d is None and i not in self.abandoned)

    @property
    def stale_state(self) -> bool:
        """Whether too many pool members judged under a newer verdict state for the
        votes still possible at this round's revision to reach q."""
        return len(self.newer_state) > self.rule.n - self.rule.q

    def open_indexes(self) -> list[int]:
        return [i for i, d in enumerate(self.decided) if d is None and i not in self.abandoned]

    def abandon(self, indexes: list[int]) -> None:
        """Close these open requests without a decision (they are re-balloted)."""
        self.abandoned.update(i for i in indexes if self.decided[i] is None)

    def offer(self, vote: Vote) -> list[int]:
        """Count ``vote``; return indexes newly decided. Raises VoteRejected."""
        if vote.ballot_id != self.ballot_id:
            raise VoteRejected("vote is for another ballot", code="VOTE_UNKNOWN_BALLOT")
        if vote.epoch != self.epoch:
            raise VoteRejected(
                f"vote epoch {vote.epoch} != ballot epoch {self.epoch}", code="VOTE_WRONG_EPOCH"
            )
        if vote.tally_id != self.tally_id:
            raise VoteRejected("vote names another tally", code="VOTE_MISMATCH")
        if vote.verifier_key not in self.pool:
            raise VoteRejected("vote from a key outside the pool", code="VOTE_NOT_MEMBER")
        if len(vote.entries) != len(self.request_ids) or any(
            e.request_id != rid or e.digest != dg
            for e, rid, dg in zip(vote.entries, self.request_ids, self.digests, strict=True)
        ):
            raise VoteRejected("vote entries do not match the ballot", code="VOTE_MISMATCH")
        tree = vote_tree(vote)
        if not vote_signature_ok(vote, tree):
            raise VoteRejected("vote signature does not verify", code="VOTE_BAD_SIGNATURE")
        if vote.state_rev != self.state_rev:
            # One decision, one state: votes judged under another revision of the
            # verdict state are never mixed into this round's counts. A signed vote
            # at a newer revision is remembered: enough of them mean this round can
            # no longer reach a quorum and should be re-balloted under the new state.
            if vote.state_rev > self.state_rev:
                self.newer_state[vote.verifier_key] = vote.state_rev
            raise VoteRejected(
                f"vote judged under state {vote.state_rev}, ballot is under {self.state_rev}",
                code="VOTE_STATE_MISMATCH",
            )
        previous = self.votes.get(vote.verifier_key)
        if previous is not None:
            # Same verdicts re-signed (e.g. a ballot replayed to the verifier) is a
            # duplicate; only conflicting verdicts are equivocation, so nobody can
            # frame an honest verifier by republishing a ballot it already voted on.
            if previous[0].entries == vote.entries:
                raise VoteRejected("duplicate vote ignored", code="VOTE_DUPLICATE")
            self.equivocations.append(Equivocation(vote.verifier_key, previous[0], vote))
            raise VoteRejected(
                "a second, different vote from one verifier", code="VOTE_EQUIVOCATION"
            )
        self.votes[vote.verifier_key] = (vote, tree)
        newly: list[int] = []
        for i, entry in enumerate(vote.entries):
            if self.decided[i] is not None or i in self.abandoned:
                continue
            if entry.valid:
                self.valid[i] += 1
            else:
                self.invalid[i] += 1
            self._voters[i].append(vote.verifier_key)
            decision = self.rule.decide(self.valid[i], self.invalid[i])
            if decision is not None:
                self.decided[i] = decision
                newly.append(i)
        return newly

    def expire(self) -> list[int]:
        """The deadline passed: every open request becomes TIMEOUT (or NO_QUORUM)."""
        newly = []
        for i, decision in enumerate(self.decided):
            if decision is None and i not in self.abandoned:
                self.decided[i] = self.rule.decide(self.valid[i], self.invalid[i], timed_out=True)
                newly.append(i)
        return newly

    def certificate(
        self, index: int, *, tally_key: bytes, decided_at_ms: int, latency_ms: float
    ) -> ConsensusResult:
        """An unsigned certificate for request ``index`` (the tally signs it)."""
        decision = self.decided[index]
        if decision is None:
            raise ValueError("request is not decided yet")
        proofs = []
        for key in self._voters[index]:
            vote, tree = self.votes[key]
            entry = vote.entries[index]
            proofs.append(
                VoteProof(
                    verifier_key=key,
                    ts_ms=vote.ts_ms,
                    count=len(vote.entries),
                    index=index,
                    valid=entry.valid,
                    reason=entry.reason,
                    path=tuple(merkle.proof(tree, index)),
                    sig=vote.sig,
                )
            )
        return ConsensusResult(
            request_id=self.request_ids[index],
            request_digest=self.digests[index],
            decision=decision.value,
            votes_for=self.valid[index],
            votes_against=self.invalid[index],
            total_votes=len(proofs),
            n=self.rule.n,
            q=self.rule.q,
            f=self.rule.f,
            threshold=f"{self.rule.threshold.numerator}/{self.rule.threshold.denominator}",
            epoch=self.epoch,
            ballot_id=self.ballot_id,
            votes=tuple(proofs),
            tally_id=self.tally_id,
            tally_key=tally_key,
            decided_at_ms=decided_at_ms,
            latency_ms=latency_ms,
            state_rev=self.state_rev,
        )
