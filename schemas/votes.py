"""Signing and checking votes: the bytes every verifier implementation must agree on."""

from __future__ import annotations

from collections.abc import Sequence

from schemas import merkle
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
