"""Byzantine-verifier evidence and the quarantine policy: pure, no clock, no I/O.

``VoteLedger`` correlates votes with decisions, in bounded memory (compact
verdicts per key, the requests once per ballot question; bounded by ballots and
by bytes). The caller feeds it only
votes whose signature verifies and whose key was a pool member at the vote's
epoch, and only decisions whose certificate verifies against that pool — so
nobody can frame an honest verifier by publishing garbage, forged votes or
forged certificates. The certificate itself carries just the votes counted
before the decision, so a late vote against the outcome is only visible on
``{prefix}.vote.>``: the ledger remembers both sides, whichever comes first.

Evidence the ledger returns:

* ``Disagreement`` — a signed verdict on a request opposite to its certified
  decision (VALID or INVALID; TIMEOUT and NO_QUORUM decide nothing);
* ``Equivocation`` — two signed votes by one key that answer the same question
  (schemas/votes.VoteQuestion) with different verdicts.

``decide_quarantine`` says what to do about a Byzantine verifier under the
configured policy (see ``QuarantinePolicy``).
"""

from __future__ import annotations

import enum
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.errors import ConfigError
from schemas.messages import Vote, VoteEntry
from schemas.quorum import MIN_POOL, fault_tolerance
from schemas.votes import VoteQuestion

DECIDED = ("VALID", "INVALID")


@dataclass(frozen=True)
class Disagreement:
    verifier_key: bytes
    ballot_id: str
    request_id: str
    voted_valid: bool
    decision: str


@dataclass(frozen=True)
class Equivocation:
    verifier_key: bytes
    ballot_id: str
    first: Vote
    second: Vote


@dataclass(frozen=True)
class _Summary:
    """One verified vote, compactly: its question is shared by every key that
    answered it (the request ids and digests are kept once per ballot, not once
    per vote), and the vote can be rebuilt from it as evidence."""

    question: VoteQuestion
    verdicts: tuple[tuple[bool, str], ...]
    ts_ms: int
    sig: bytes

    def vote(self, key: bytes) -> Vote:
        q = self.question
        return Vote(
            ballot_id=q.ballot_id,
            epoch=q.epoch,
            tally_id=q.tally_id,
            verifier_key=key,
            ts_ms=self.ts_ms,
            entries=tuple(
                VoteEntry(rid, digest, valid, reason)
                for (rid, digest), (valid, reason) in zip(q.requests, self.verdicts, strict=True)
            ),
            sig=self.sig,
            state_rev=q.state_rev,
        )


#: Rough bytes of bookkeeping per kept vote, question and decision (for the budget).
_VOTE_COST = 200
_QUESTION_COST = 200
_ENTRY_COST = 80


@dataclass
class _Ballot:
    votes: dict[bytes, _Summary]
    #: the questions its votes answered, each kept once (interned)
    questions: dict[VoteQuestion, VoteQuestion]
    #: request_id -> (request digest, decision)
    decisions: dict[str, tuple[bytes, str]]
    reported: set[tuple[bytes, str]]
    #: keys whose equivocation on this ballot was already returned (once per key)
    equivocators: set[bytes] = field(default_factory=set)
    #: the verdict-state revision of the ballot's certificates, once one is seen
    state_rev: int | None = None
    cost: int = 0


class VoteLedger:
    """Recent ballots' votes and decisions, compactly; the oldest ballots are
    forgotten past ``max_ballots`` or past ``max_bytes`` of bookkeeping (a rough
    count), whichever comes first. Per ballot it keeps at most one vote per key
    and one question per kept vote, so verified keys cannot grow one ballot."""

    def __init__(self, max_ballots: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_ballots < 1 or max_bytes < 1:
            raise ConfigError("the ledger must keep at least one ballot and some bytes")
        self.max_ballots = max_ballots
        self.max_bytes = max_bytes
        self.bytes = 0
        self._ballots: OrderedDict[str, _Ballot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ballots)

    def _ballot(self, ballot_id: str) -> _Ballot:
        entry = self._ballots.get(ballot_id)
        if entry is None:
            entry = self._ballots[ballot_id] = _Ballot({}, {}, {}, set())
        return entry

    def _charge(self, entry: _Ballot, cost: int) -> None:
        entry.cost += cost
        self.bytes += cost
        while self._ballots and (
            len(self._ballots) > self.max_ballots or self.bytes > self.max_bytes
        ):
            _, oldest = self._ballots.popitem(last=False)
            self.bytes -= oldest.cost

    def worth_checking(self, vote: Vote) -> bool:
        """Whether ``vote`` (not yet verified) could teach the ledger anything, so that
        its signature is worth checking: not when its key's vote on this question
        with these verdicts is already kept, its answer to another question is
        (ignored either way), or its equivocation on this ballot was already found."""
        entry = self._ballots.get(vote.ballot_id)
        previous = entry.votes.get(vote.verifier_key) if entry is not None else None
        if entry is None or previous is None:
            return True
        if vote.verifier_key in entry.equivocators:
            return False
        return previous.question == VoteQuestion.of(vote) and previous.verdicts != _verdicts(vote)

    def add_vote(self, vote: Vote) -> tuple[list[Disagreement], Equivocation | None]:
        """A verified member vote; returns new disagreements and any equivocation.

        Two votes of one key are equivocation only if they answer the same question
        (schemas/votes.VoteQuestion: same ballot id, tally, epoch, state revision and
        requests) with different verdicts — the rule the tally admits votes by.
        """
        entry = self._ballot(vote.ballot_id)
        self._ballots.move_to_end(vote.ballot_id)
        question = VoteQuestion.of(vote)
        previous = entry.votes.get(vote.verifier_key)
        if previous is not None:
            if previous.question != question:
                # different requests (a ballot id reused by a rogue publisher) or another
                # verdict state (e.g. a revocation between a replay and a restart): two
                # honest answers to two questions, not equivocation
                return [], None
            if previous.verdicts == _verdicts(vote) or vote.verifier_key in entry.equivocators:
                return [], None  # a duplicate (or the same verdicts re-signed), or known
            entry.equivocators.add(vote.verifier_key)
            return [], Equivocation(
                vote.verifier_key, vote.ballot_id, previous.vote(vote.verifier_key), vote
            )
        cost = _VOTE_COST + 8 * len(vote.entries)
        interned = entry.questions.get(question)
        if interned is None:
            interned = entry.questions[question] = question
            cost += _QUESTION_COST + sum(_ENTRY_COST + len(r) for r, _ in question.requests)
        summary = _Summary(interned, _verdicts(vote), vote.ts_ms, vote.sig)
        entry.votes[vote.verifier_key] = summary
        found = self._compare(entry, vote.ballot_id, {vote.verifier_key: summary})
        self._charge(entry, cost)
        return found, None

    def add_decision(
        self,
        ballot_id: str,
        request_id: str,
        digest: bytes,
        decision: str,
        state_rev: int | None = None,
    ) -> list[Disagreement]:
        """A verified certificate's outcome; returns disagreements of votes seen so far.

        Only votes judged under the certificate's verdict-state revision are compared:
        a verifier that judged under another state (it saw a revocation first, or
        could not catch up in time) may honestly have said the opposite.
        """
        if decision not in DECIDED:
            return []
        entry = self._ballot(ballot_id)
        new = request_id not in entry.decisions
        entry.decisions[request_id] = (digest, decision)
        if state_rev is not None:
            entry.state_rev = state_rev
        found = self._compare(entry, ballot_id, entry.votes)
        if new:
            self._charge(entry, _ENTRY_COST + len(request_id))
        return found

    @staticmethod
    def _compare(
        entry: _Ballot, ballot_id: str, votes: dict[bytes, _Summary]
    ) -> list[Disagreement]:
        found = []
        for key, summary in votes.items():
            q = summary.question
            if entry.state_rev is not None and q.state_rev != entry.state_rev:
                continue
            for (rid, digest), (valid, _) in zip(q.requests, summary.verdicts, strict=True):
                decided = entry.decisions.get(rid)
                if decided is None or decided[0] != digest:
                    continue
                if (valid != (decided[1] == "VALID")) and (key, rid) not in entry.reported:
                    entry.reported.add((key, rid))
                    found.append(Disagreement(key, ballot_id, rid, valid, decided[1]))
        return found

    def agreements(self, ballot_id: str, request_id: str) -> dict[bytes, bool]:
        """For a decided request: verifier key -> whether its vote agreed."""
        entry = self._ballots.get(ballot_id)
        if entry is None or request_id not in entry.decisions:
            return {}
        digest, decision = entry.decisions[request_id]
        out = {}
        for key, summary in entry.votes.items():
            for (rid, dg), (valid, _) in zip(
                summary.question.requests, summary.verdicts, strict=True
            ):
                if rid == request_id and dg == digest:
                    out[key] = valid == (decision == "VALID")
        return out


def _verdicts(vote: Vote) -> tuple[tuple[bool, str], ...]:
    return tuple((e.valid, sys.intern(e.reason)) for e in vote.entries)


class QuarantineMode(enum.StrEnum):
    OFF = "off"  # Byzantine evidence is counted only: no alert, no quarantine
    ALERT_ONLY = "alert-only"  # a Critical alert, the verifier stays in the pool
    QUARANTINE = "quarantine"  # a Critical alert and quarantine when the policy allows


class Action(enum.StrEnum):
    IGNORE = "ignore"
    ALERT = "alert"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a Byzantine verifier may be taken out of the pool.

    * ``min_pool`` — never quarantine if fewer than this many active verifiers
      would remain (at least MIN_POOL = 3, below which no tally decides);
      alert instead.
    * ``min_interval_s`` — at most one quarantine per this many seconds, and
    * ``max_per_hour`` — at most this many in any hour: a burst of "evidence"
      (a bug, or an attack we did not foresee) cannot empty the pool quickly;
      over the limit the verifier is alerted and retried on its next offence.
    """

    mode: QuarantineMode = QuarantineMode.QUARANTINE
    min_pool: int = MIN_POOL
    min_interval_s: float = 60.0
    max_per_hour: int = 3

    def __post_init__(self) -> None:
        if self.min_pool < MIN_POOL:
            raise ConfigError(f"quarantine min pool must be at least {MIN_POOL}")
        if self.min_interval_s < 0 or self.max_per_hour < 1:
            raise ConfigError("quarantine interval must be >= 0 and max per hour >= 1")


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def decide_quarantine(
    policy: QuarantinePolicy,
    *,
    active: int,
    is_member: bool,
    now: float,
    recent: Sequence[float],
    seats: int | None = None,
    quarantined: int = 0,
) -> Verdict:
    """What to do about a verifier with Byzantine evidence against it.

    ``active`` is the current active pool size, ``is_member`` whether the
    verifier is still active in it, ``recent`` the times (same clock as
    ``now``) of this policy's earlier quarantines. ``seats`` is the pool's seat
    count (active plus quarantined; ``active + quarantined`` when not given) and
    ``quarantined`` how many seats are quarantined already: the pool honours at
    most f = floor((seats - 1) / 3) quarantine records (schemas/pool.py), so
    beyond that the worker only alerts that an operator is needed — a compromised
    or fooled anomaly role can never shrink a tolerated minority into a quorum.
    """
    seats = active + quarantined if seats is None else seats
    if policy.mode is QuarantineMode.OFF:
        return Verdict(Action.IGNORE, "byzantine detection is off")
    if policy.mode is QuarantineMode.ALERT_ONLY:
        return Verdict(Action.ALERT, "policy is alert-only")
    if not is_member:
        return Verdict(Action.ALERT, "not an active member (already quarantined or removed)")
    if active - 1 < policy.min_pool:
        return Verdict(
            Action.ALERT,
            f"quarantine would leave {active - 1} active verifiers, "
            f"below the minimum {policy.min_pool}",
        )
    if quarantined + 1 > fault_tolerance(seats):
        return Verdict(
            Action.ALERT,
            f"operator needed: {quarantined} of {seats} seats are quarantined already, "
            f"the most the pool honours is f={fault_tolerance(seats)}",
        )
    if recent and now - max(recent) < policy.min_interval_s:
        return Verdict(
            Action.ALERT,
            f"rate limit: last quarantine {now - max(recent):.0f}s ago, "
            f"minimum interval {policy.min_interval_s:.0f}s",
        )
    if sum(1 for t in recent if now - t < 3600) >= policy.max_per_hour:
        return Verdict(
            Action.ALERT, f"rate limit: {policy.max_per_hour} quarantines in the last hour"
        )
    return Verdict(Action.QUARANTINE, "policy allows quarantine")
