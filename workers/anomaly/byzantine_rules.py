"""Byzantine-verifier evidence and the quarantine policy: pure, no clock, no I/O.

``VoteLedger`` correlates votes with decisions. The caller feeds it only
votes whose signature verifies and whose key was a pool member at the vote's
epoch, and only decisions whose certificate verifies against that pool — so
nobody can frame an honest verifier by publishing garbage, forged votes or
forged certificates. The certificate itself carries just the votes counted
before the decision, so a late vote against the outcome is only visible on
``{prefix}.vote.>``: the ledger remembers both sides, whichever comes first.

Evidence the ledger returns:

* ``Disagreement`` — a signed verdict on a request opposite to its certified
  decision (VALID or INVALID; TIMEOUT and NO_QUORUM decide nothing);
* ``Equivocation`` — two different signed votes by one key for one ballot.

``decide_quarantine`` says what to do about a Byzantine verifier under the
configured policy (see ``QuarantinePolicy``).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.errors import ConfigError
from schemas.messages import Vote
from schemas.quorum import MIN_POOL, fault_tolerance

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


@dataclass
class _Ballot:
    votes: dict[bytes, Vote]
    #: request_id -> (request digest, decision)
    decisions: dict[str, tuple[bytes, str]]
    reported: set[tuple[bytes, str]]
    #: the verdict-state revision of the ballot's certificates, once one is seen
    state_rev: int | None = None


class VoteLedger:
    """Recent ballots' votes and decisions (the oldest forgotten past ``max_ballots``)."""

    def __init__(self, max_ballots: int = 10_000) -> None:
        if max_ballots < 1:
            raise ConfigError("the ledger must keep at least one ballot")
        self.max_ballots = max_ballots
        self._ballots: OrderedDict[str, _Ballot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ballots)

    def _ballot(self, ballot_id: str) -> _Ballot:
        entry = self._ballots.get(ballot_id)
        if entry is None:
            entry = self._ballots[ballot_id] = _Ballot({}, {}, set())
            while len(self._ballots) > self.max_ballots:
                self._ballots.popitem(last=False)
        return entry

    def add_vote(self, vote: Vote) -> tuple[list[Disagreement], Equivocation | None]:
        """A verified member vote; returns new disagreements and any equivocation."""
        entry = self._ballot(vote.ballot_id)
        previous = entry.votes.get(vote.verifier_key)
        if previous is not None:
            if previous.entries == vote.entries:
                return [], None  # a duplicate (or the same verdicts re-signed)
            same_question = (
                previous.tally_id == vote.tally_id
                and previous.epoch == vote.epoch
                and previous.state_rev == vote.state_rev
                and [(e.request_id, e.digest) for e in previous.entries]
                == [(e.request_id, e.digest) for e in vote.entries]
            )
            if not same_question:
                # different requests (a ballot id reused by a rogue publisher) or another
                # verdict state (e.g. a revocation between a replay and a restart): two
                # honest answers to two questions, not equivocation
                return [], None
            return [], Equivocation(vote.verifier_key, vote.ballot_id, previous, vote)
        entry.votes[vote.verifier_key] = vote
        return self._compare(entry, vote.ballot_id, [vote]), None

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
        entry.decisions[request_id] = (digest, decision)
        if state_rev is not None:
            entry.state_rev = state_rev
        return self._compare(entry, ballot_id, list(entry.votes.values()))

    @staticmethod
    def _compare(entry: _Ballot, ballot_id: str, votes: Sequence[Vote]) -> list[Disagreement]:
        found = []
        for vote in votes:
            if entry.state_rev is not None and vote.state_rev != entry.state_rev:
                continue
            for e in vote.entries:
                decided = entry.decisions.get(e.request_id)
                if decided is None or decided[0] != e.digest:
                    continue
                key = (vote.verifier_key, e.request_id)
                if (e.valid != (decided[1] == "VALID")) and key not in entry.reported:
                    entry.reported.add(key)
                    found.append(
                        Disagreement(
                            vote.verifier_key, ballot_id, e.request_id, e.valid, decided[1]
                        )
                    )
        return found

    def agreements(self, ballot_id: str, request_id: str) -> dict[bytes, bool]:
        """For a decided request: verifier key -> whether its vote agreed."""
        entry = self._ballots.get(ballot_id)
        if entry is None or request_id not in entry.decisions:
            return {}
        digest, decision = entry.decisions[request_id]
        out = {}
        for key, vote in entry.votes.items():
            for e in vote.entries:
                if e.request_id == request_id and e.digest == digest:
                    out[key] = e.valid == (decision == "VALID")
        return out


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
