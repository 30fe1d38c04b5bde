"""One consensus round over a ballot, as pure state (no I/O, no clock), and the
verifier's pure rules for which ballots it judges at all.

The tally creates a ``BallotRound`` with the pool frozen at ballot time, feeds
it every vote that arrives with ``offer`` and gets back the requests that just
got decided. The admission rules are schemas/votes.py's (``admit_vote``, shared
with the anomaly worker's evidence check); this module orders them so that
floods are cheap: right ballot and epoch and tally, a member key, entries that
match the ballot request by request; then the duplicate checks (the same
signature or the same verdicts again: ignored; a key with equivocation on
record: ignored); only then the Merkle tree and the signature, and the
verdict-state revision. Conflicting signed verdicts from one key are
equivocation: rejected and kept as evidence, once per key.

A verifier judges a ballot only if ``ballot_time_refusal``,
``ballot_signer_refusal`` and ``ballot_epoch_refusal`` all return None, and
remembers each vote it signed in a ``VoteMemory`` until the ballot can no
longer be judged (its deadline plus the clock-skew margin), so a ballot is
judged at most once: at its own ``issued_ms``, under the pool epoch it names.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Collection
from dataclasses import dataclass, field

from schemas import merkle
from schemas.errors import VoteRejected
from schemas.messages import Ballot, ConsensusResult, Vote, VoteProof
from schemas.quorum import Decision, QuorumRule
from schemas.signing import ballot_signature_ok
from schemas.votes import VoteQuestion, admit_vote, check_vote_context

#: Signed votes one key may get checked per round: its one counted vote, one
#: equivocating vote, and a few under other verdict-state revisions. An honest
#: verifier signs one vote per ballot id (a replayed ballot gets the same bytes),
#: so only a flooding key reaches it; forged votes never count towards it.
MAX_CHECKED_PER_KEY = 4


class BallotRefusal(enum.StrEnum):
    """Why a verifier did not vote on a ballot (stable; counted as
    ``ballot_refused_<code>``, logged, never answered)."""

    #: ``issued_ms`` is further than the skew margin from the verifier's clock: judging
    #: it at its own clock instead would split honest verifiers near an expiry.
    ISSUED_SKEW = "BALLOT_ISSUED_SKEW"
    #: the deadline (plus the skew margin) has passed.
    LATE = "BALLOT_LATE"
    #: the deadline is further out than the verifier remembers votes for.
    DEADLINE_TOO_FAR = "BALLOT_DEADLINE_TOO_FAR"
    #: the deadline is before ``issued_ms``.
    DEADLINE_BEFORE_ISSUE = "BALLOT_DEADLINE_BEFORE_ISSUE"
    #: ``sig`` is not ``tally_key``'s signature over the ballot in this network.
    BAD_SIGNATURE = "BALLOT_BAD_SIGNATURE"
    #: ``tally_key`` is not the key of an admitted tally of the current pool.
    UNKNOWN_TALLY = "BALLOT_UNKNOWN_TALLY"
    #: the record ``tally.<tally_id>`` does not hold ``tally_key``: one tally
    #: cannot have votes sent to another.
    TALLY_MISMATCH = "BALLOT_TALLY_MISMATCH"
    #: the ballot names an older pool epoch than the verifier's.
    EPOCH_BEHIND = "BALLOT_EPOCH_BEHIND"
    #: the ballot names a newer epoch than the verifier reached in its wait.
    EPOCH_AHEAD = "BALLOT_EPOCH_AHEAD"
    #: a different ballot with this (tally id, ballot id) was already voted on.
    ID_REUSED = "BALLOT_ID_REUSED"
    #: the vote memory is full of live entries: refusing beats forgetting one.
    OVERLOADED = "BALLOT_OVERLOADED"


@dataclass(frozen=True)
class BallotWindow:
    """The verifier's time rules.

    ``issued_skew_ms``: how far a ballot's ``issued_ms`` may be from the
    verifier's clock. Inside it the ballot is judged at ``issued_ms`` only (the
    one agreed time); outside it it is refused, not judged at a local clock. A
    tally can thus move the judging time by at most this much.
    ``grace_ms``: how long past its deadline a ballot is still answered (from
    memory) before it is refused as late; votes are remembered that long.
    ``horizon_ms``: how far ahead a deadline may be, which bounds how long a
    remembered vote can live.
    """

    issued_skew_ms: int = 2_000
    grace_ms: int = 30_000
    horizon_ms: int = 120_000

    def remember_until(self, ballot: Ballot) -> int:
        """Until when a vote on ``ballot`` is kept: past this the time rules
        refuse the ballot anyway, so forgetting it cannot lead to re-judging."""
        return max(ballot.deadline_ms, ballot.issued_ms + self.issued_skew_ms) + self.grace_ms


def ballot_time_refusal(ballot: Ballot, now_ms: int, window: BallotWindow) -> BallotRefusal | None:
    if ballot.deadline_ms + window.grace_ms < now_ms:
        return BallotRefusal.LATE
    if abs(ballot.issued_ms - now_ms) > window.issued_skew_ms:
        return BallotRefusal.ISSUED_SKEW
    if ballot.deadline_ms < ballot.issued_ms:
        return BallotRefusal.DEADLINE_BEFORE_ISSUE
    if ballot.deadline_ms > now_ms + window.horizon_ms:
        return BallotRefusal.DEADLINE_TOO_FAR
    return None


def ballot_signature_refusal(ballot: Ballot, *, network: str) -> BallotRefusal | None:
    return None if ballot_signature_ok(ballot, network=network) else BallotRefusal.BAD_SIGNATURE


def ballot_signer_refusal(
    ballot: Ballot, *, tally_keys: Collection[bytes], record_key: bytes | None
) -> BallotRefusal | None:
    """``tally_keys``: the admitted tally keys of the current pool view;
    ``record_key``: the key the active record ``tally.<ballot.tally_id>`` holds."""
    if ballot.tally_key not in tally_keys:
        return BallotRefusal.UNKNOWN_TALLY
    if record_key != ballot.tally_key:
        return BallotRefusal.TALLY_MISMATCH
    return None


def ballot_epoch_refusal(ballot_epoch: int, view_epoch: int) -> BallotRefusal | None:
    """Votes only at the current epoch: behind is refused (the tally re-ballots at
    the new epoch), ahead is refused after the verifier's bounded catch-up wait."""
    if ballot_epoch < view_epoch:
        return BallotRefusal.EPOCH_BEHIND
    if ballot_epoch > view_epoch:
        return BallotRefusal.EPOCH_AHEAD
    return None


@dataclass
class _Remembered:
    ballot_hash: bytes
    expires_ms: int
    vote: bytes


class VoteMemory:
    """Every vote this verifier signed, by (tally id, ballot id), until its ballot
    can no longer be judged (deadline + skew): a re-delivered ballot gets the very
    same vote bytes and is never judged again, and another ballot reusing the id
    is refused. Bounded by count and bytes; when full of live entries it refuses
    new ballots instead of forgetting a live one (which would allow re-judging)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: dict[tuple[str, str], _Remembered] = {}
        #: (expiry, key) in expiry order, so expiring costs O(log n) per entry
        self._expiries: list[tuple[int, tuple[str, str]]] = []
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def lookup(
        self, tally_id: str, ballot_id: str, ballot_hash: bytes
    ) -> bytes | BallotRefusal | None:
        """The vote already signed for these exact ballot bytes, ID_REUSED for other
        bytes under a remembered id, or None (never seen)."""
        item = self._items.get((tally_id, ballot_id))
        if item is None:
            return None
        return item.vote if item.ballot_hash == ballot_hash else BallotRefusal.ID_REUSED

    def expire(self, now_ms: int) -> None:
        """Forget entries whose ballots the time rules now refuse as LATE."""
        while self._expiries and self._expiries[0][0] < now_ms:
            expires, key = heapq.heappop(self._expiries)
            item = self._items.get(key)
            if item is not None and item.expires_ms == expires:
                self.bytes -= len(self._items.pop(key).vote)

    def has_room(self, size: int, now_ms: int) -> bool:
        self.expire(now_ms)
        return len(self._items) < self.max_entries and self.bytes + size <= self.max_bytes

    def remember(
        self, tally_id: str, ballot_id: str, ballot_hash: bytes, expires_ms: int, vote: bytes
    ) -> None:
        previous = self._items.pop((tally_id, ballot_id), None)
        if previous is not None:
            self.bytes -= len(previous.vote)
        self._items[(tally_id, ballot_id)] = _Remembered(ballot_hash, expires_ms, vote)
        heapq.heappush(self._expiries, (expires_ms, (tally_id, ballot_id)))
        self.bytes += len(vote)


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
    #: the network id (subject prefix) votes are signed for
    network: str
    state_rev: int = 0
    votes: dict[bytes, tuple[Vote, list[list[bytes]]]] = field(default_factory=dict)
    #: at most one per verifier key (bounded by the pool); the tally publishes each once
    equivocations: list[Equivocation] = field(default_factory=list)
    #: keys with an equivocation on record: their further votes are dropped unchecked
    equivocators: set[bytes] = field(default_factory=set)
    #: verifier key -> the newer verdict-state revision it signed a vote under
    newer_state: dict[bytes, int] = field(default_factory=dict)
    #: signature checks done so far (the tally's ``vote_signature_checks`` counter)
    signature_checks: int = 0

    def __post_init__(self) -> None:
        size = len(self.request_ids)
        self.valid = [0] * size
        self.invalid = [0] * size
        self.decided: list[Decision | None] = [None] * size
        # votes counted for each request at the moment it was decided
        self._voters: list[list[bytes]] = [[] for _ in range(size)]
        self.abandoned: set[int] = set()
        self.question = VoteQuestion(
            network=self.network,
            ballot_id=self.ballot_id,
            epoch=self.epoch,
            tally_id=self.tally_id,
            state_rev=self.state_rev,
            requests=tuple(zip(self.request_ids, self.digests, strict=True)),
        )
        #: (key, signature) of every vote whose signature verified (bounded per key)
        self._checked: set[tuple[bytes, bytes]] = set()
        self._checks_by_key: dict[bytes, int] = {}

    def _note_checked(self, key: bytes, sig: bytes) -> None:
        self._checked.add((key, sig))
        self._checks_by_key[key] = self._checks_by_key.get(key, 0) + 1

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
        """Count ``vote``; return indexes newly decided. Raises VoteRejected.

        Cheap checks first, then the duplicate checks, and only then the Merkle
        tree and the signature (schemas/votes.admit_vote): a flood of copies or
        re-signings costs a dictionary lookup each, not a signature check.
        """
        check_vote_context(vote, self.question, self.pool)
        key = vote.verifier_key
        if key in self.equivocators:  # evidence already kept: nothing new to learn
            raise VoteRejected(
                "verifier already equivocated on this ballot", code="VOTE_EQUIVOCATOR"
            )
        previous = self.votes.get(key)
        if previous is not None and (
            previous[0].sig == vote.sig
            or (previous[0].entries == vote.entries and previous[0].state_rev == vote.state_rev)
        ):
            # The same signature (a copy, perhaps re-encoded: one key's signature verifies
            # one body) or the same verdicts re-signed (a ballot replayed to the verifier):
            # a duplicate, never equivocation, so nobody can frame an honest verifier by
            # republishing a ballot it already voted on.
            raise VoteRejected("duplicate vote ignored", code="VOTE_DUPLICATE")
        if (key, vote.sig) in self._checked:
            raise VoteRejected("duplicate vote ignored", code="VOTE_DUPLICATE")
        if self._checks_by_key.get(key, 0) >= MAX_CHECKED_PER_KEY:
            raise VoteRejected("too many signed votes from one key", code="VOTE_FLOOD")
        self.signature_checks += 1
        try:
            tree = admit_vote(vote, self.question, self.pool)
        except VoteRejected as exc:
            if exc.code == "VOTE_STATE_MISMATCH":
                # One decision, one state: votes judged under another revision of the
                # verdict state are never mixed into this round's counts. A signed vote
                # at a newer revision is remembered: enough of them mean this round can
                # no longer reach a quorum and should be re-balloted under the new state.
                self._note_checked(key, vote.sig)
                if vote.state_rev > self.state_rev:
                    self.newer_state[key] = vote.state_rev
            raise
        self._note_checked(key, vote.sig)
        if previous is not None:
            if len(self.equivocations) < len(self.pool):  # one per key: bounded by n
                self.equivocations.append(Equivocation(key, previous[0], vote))
            self.equivocators.add(key)
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
        self, index: int, *, tally_key: bytes, decided_at_ms: int, latency_us: int
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
            latency_us=latency_us,
            state_rev=self.state_rev,
        )
