"""Signing, checking and admitting votes: the bytes every verifier implementation must
agree on, and the one set of admission rules the tally (counting) and the anomaly
worker (equivocation evidence) both apply."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from schemas import merkle
from schemas.errors import VoteRejected
from schemas.identity import AgentIdentity, verify_signature
from schemas.messages import Ballot, Vote, VoteEntry
from schemas.signing import entry_bytes, vote_signing_bytes


def entry_leaves(entries: Sequence[VoteEntry]) -> list[bytes]:
    return [
        merkle.leaf_hash(entry_bytes(e.request_id, e.digest, e.valid, e.reason)) for e in entries
    ]


def sign_vote(
    identity: AgentIdentity,
    ballot: Ballot,
    entries: Sequence[VoteEntry],
    ts_ms: int,
    state_rev: int | None = None,
    *,
    network: str,
) -> Vote:
    """Sign verdicts for every request of ``ballot`` (entries in ballot order),
    judged under verdict-state revision ``state_rev`` (default: the ballot's),
    for the deployment whose network id (subject prefix) is ``network``."""
    rev = ballot.state_rev if state_rev is None else state_rev
    root = merkle.root(entry_leaves(entries))
    body = vote_signing_bytes(
        network=network,
        ballot_id=ballot.ballot_id,
        epoch=ballot.epoch,
        tally_id=ballot.tally_id,
        verifier_key=identity.public_key,
        ts_ms=ts_ms,
        count=len(entries),
        root=root,
        state_rev=rev,
    )
    return Vote(
        ballot_id=ballot.ballot_id,
        epoch=ballot.epoch,
        tally_id=ballot.tally_id,
        verifier_key=identity.public_key,
        ts_ms=ts_ms,
        entries=tuple(entries),
        sig=identity.sign(body),
        state_rev=rev,
    )


def vote_tree(vote: Vote) -> list[list[bytes]]:
    return merkle.levels(entry_leaves(vote.entries))


def vote_signature_ok(vote: Vote, tree: list[list[bytes]] | None = None, *, network: str) -> bool:
    """Whether ``vote.sig`` is the verifier's signature over these entries (in ``network``)."""
    tree = tree if tree is not None else vote_tree(vote)
    body = vote_signing_bytes(
        network=network,
        ballot_id=vote.ballot_id,
        epoch=vote.epoch,
        tally_id=vote.tally_id,
        verifier_key=vote.verifier_key,
        ts_ms=vote.ts_ms,
        count=len(vote.entries),
        root=tree[-1][0],
        state_rev=vote.state_rev,
    )
    return verify_signature(vote.verifier_key, body, vote.sig)


# ------------------------------------------------------------------ admission
@dataclass(frozen=True)
class VoteQuestion:
    """What one vote answers: one ballot of one tally, at one pool epoch and one
    verdict-state revision, over these requests (id and digest, in ballot order).

    Two votes of one key are comparable only when they answer the same question:
    an honest verifier asked two questions (a ballot id reused by another tally or
    over other requests, another state revision) may give two different answers,
    and that is not equivocation. The tally admits votes against its ballot's
    question; the anomaly worker admits equivocation evidence against the first
    vote's question — with the same function, so it can never hold against a
    verifier two votes that the tally would not have admitted together.
    """

    ballot_id: str
    epoch: int
    tally_id: str
    state_rev: int
    requests: tuple[tuple[str, bytes], ...]
    #: the network id (subject prefix) the vote must be signed for
    network: str

    @classmethod
    def of(cls, vote: Vote, *, network: str = "") -> VoteQuestion:
        """The question ``vote`` claims to answer, in ``network`` (only ``admit_vote``
        reads it: a question without one admits no signature, so it fails closed)."""
        return cls(
            network=network,
            ballot_id=vote.ballot_id,
            epoch=vote.epoch,
            tally_id=vote.tally_id,
            state_rev=vote.state_rev,
            requests=tuple((e.request_id, e.digest) for e in vote.entries),
        )


def check_vote_context(vote: Vote, question: VoteQuestion, pool: Collection[bytes]) -> None:
    """The cheap admission rules (no hashing, no signature), in order: the ballot,
    its epoch, its tally, a pool key, entries for exactly the ballot's requests.

    Raises VoteRejected with VOTE_UNKNOWN_BALLOT, VOTE_WRONG_EPOCH, VOTE_MISMATCH
    or VOTE_NOT_MEMBER. The verdict-state revision is checked by ``admit_vote``
    after the signature (a signed vote under a newer revision is information).
    """
    if vote.ballot_id != question.ballot_id:
        raise VoteRejected("vote is for another ballot", code="VOTE_UNKNOWN_BALLOT")
    if vote.epoch != question.epoch:
        raise VoteRejected(
            f"vote epoch {vote.epoch} != ballot epoch {question.epoch}", code="VOTE_WRONG_EPOCH"
        )
    if vote.tally_id != question.tally_id:
        raise VoteRejected("vote names another tally", code="VOTE_MISMATCH")
    if vote.verifier_key not in pool:
        raise VoteRejected("vote from a key outside the pool", code="VOTE_NOT_MEMBER")
    if len(vote.entries) != len(question.requests) or any(
        e.request_id != rid or e.digest != dg
        for e, (rid, dg) in zip(vote.entries, question.requests, strict=True)
    ):
        raise VoteRejected("vote entries do not match the ballot", code="VOTE_MISMATCH")


def admit_vote(vote: Vote, question: VoteQuestion, pool: Collection[bytes]) -> list[list[bytes]]:
    """Every admission rule: ``check_vote_context``, a good signature, then the
    ballot's verdict-state revision. Returns the vote's Merkle tree (for proofs).

    Raises VoteRejected (codes as ``check_vote_context``, VOTE_BAD_SIGNATURE,
    VOTE_STATE_MISMATCH).
    """
    check_vote_context(vote, question, pool)
    tree = vote_tree(vote)
    if not vote_signature_ok(vote, tree, network=question.network):
        raise VoteRejected("vote signature does not verify", code="VOTE_BAD_SIGNATURE")
    if vote.state_rev != question.state_rev:
        raise VoteRejected(
            f"vote judged under state {vote.state_rev}, ballot is under {question.state_rev}",
            code="VOTE_STATE_MISMATCH",
        )
    return tree


def verdicts_differ(first: Vote, second: Vote) -> bool:
    """Whether two votes on the same requests give different verdicts (valid or reason)."""
    return [(e.valid, e.reason) for e in first.entries] != [
        (e.valid, e.reason) for e in second.entries
    ]


def equivocation_refusal(
    first: Vote, second: Vote, pool: Collection[bytes], *, network: str
) -> str | None:
    """None when ``first`` and ``second`` prove that their key equivocated, else why not.

    Proof means: both admitted by ``admit_vote`` against the same question (the
    first vote's: same ballot id, tally id, epoch, state revision and requests),
    both signed by the same key of ``pool``, and different verdicts. The reason
    is a VoteRejected code (for counters); VOTE_DUPLICATE when the verdicts agree.
    """
    if first.verifier_key != second.verifier_key:
        return "VOTE_MISMATCH"
    question = VoteQuestion.of(first, network=network)
    try:
        admit_vote(first, question, pool)
        admit_vote(second, question, pool)
    except VoteRejected as exc:
        return exc.code
    return None if verdicts_differ(first, second) else "VOTE_DUPLICATE"
