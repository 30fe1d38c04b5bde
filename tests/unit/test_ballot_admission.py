"""The verifier's pure ballot rules (workers/consensus/ballot.py), table-driven:
time window, signature, signer admission, epoch, and the bounded vote memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas.identity import AgentIdentity
from schemas.messages import Ballot
from schemas.signing import ballot_signature_ok, sign_ballot
from workers.consensus.ballot import (
    BallotRefusal,
    BallotWindow,
    VoteMemory,
    ballot_epoch_refusal,
    ballot_signature_refusal,
    ballot_signer_refusal,
    ballot_time_refusal,
)

NOW = 1_000_000
WINDOW = BallotWindow(issued_skew_ms=2_000, grace_ms=30_000, horizon_ms=120_000)
TALLY = AgentIdentity.generate()
OTHER = AgentIdentity.generate()


def ballot(**changes: object) -> Ballot:
    base = Ballot(
        ballot_id="b1",
        epoch=7,
        tally_id="t1",
        deadline_ms=NOW + 5_000,
        requests=(b"r1", b"r2"),
        state_rev=3,
        issued_ms=NOW,
    )
    return sign_ballot(TALLY, replace(base, **changes), network="ap")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("issued", "deadline", "now", "expected"),
    [
        (NOW, NOW + 5_000, NOW, None),
        (NOW - 2_000, NOW + 5_000, NOW, None),  # at the edge of the skew window
        (NOW + 2_000, NOW + 5_000, NOW, None),
        (NOW - 2_001, NOW + 5_000, NOW, BallotRefusal.ISSUED_SKEW),  # refused, not re-timed
        (NOW + 2_001, NOW + 5_000, NOW, BallotRefusal.ISSUED_SKEW),
        (NOW, NOW - 1, NOW, BallotRefusal.DEADLINE_BEFORE_ISSUE),
        (NOW, NOW + 120_000, NOW, None),
        (NOW, NOW + 120_001, NOW, BallotRefusal.DEADLINE_TOO_FAR),  # beyond the memory
        (NOW - 40_000, NOW - 30_001, NOW, BallotRefusal.LATE),  # late wins over skew
        (NOW - 40_000, NOW - 30_000, NOW, BallotRefusal.ISSUED_SKEW),
    ],
)
def test_time_rules(issued: int, deadline: int, now: int, expected: BallotRefusal | None) -> None:
    b = Ballot("b1", 7, "t1", deadline, (b"r",), issued_ms=issued)
    assert ballot_time_refusal(b, now, WINDOW) is expected


def test_remembered_until_the_time_rules_refuse_it() -> None:
    b = ballot()
    until = WINDOW.remember_until(b)
    assert ballot_time_refusal(b, until + 1, WINDOW) is not None
    quick = ballot(deadline_ms=NOW)  # deadline == issue time: the skew window is longer
    assert WINDOW.remember_until(quick) == NOW + 2_000 + 30_000


@pytest.mark.parametrize(
    ("label", "make", "network", "ok"),
    [
        ("signed", lambda b: b, "ap", True),
        ("other network", lambda b: b, "other", False),
        ("requests changed", lambda b: replace(b, requests=(b"r1", b"rX")), "ap", False),
        ("requests reordered", lambda b: replace(b, requests=(b"r2", b"r1")), "ap", False),
        ("request dropped", lambda b: replace(b, requests=(b"r1",)), "ap", False),
        ("epoch", lambda b: replace(b, epoch=8), "ap", False),
        ("tally id", lambda b: replace(b, tally_id="t2"), "ap", False),
        ("deadline", lambda b: replace(b, deadline_ms=b.deadline_ms + 1), "ap", False),
        ("issued", lambda b: replace(b, issued_ms=b.issued_ms - 1), "ap", False),
        ("state rev", lambda b: replace(b, state_rev=4), "ap", False),
        ("ballot id", lambda b: replace(b, ballot_id="b2"), "ap", False),
        ("key swapped", lambda b: replace(b, tally_key=OTHER.public_key), "ap", False),
        ("no signature", lambda b: replace(b, sig=b""), "ap", False),
    ],
)
def test_signature_covers_every_field(label: str, make: object, network: str, ok: bool) -> None:
    b = make(ballot())  # type: ignore[operator]
    assert ballot_signature_ok(b, network=network) is ok, label
    assert (ballot_signature_refusal(b, network=network) is None) is ok


@pytest.mark.parametrize(
    ("tally_keys", "record_key", "expected"),
    [
        ({TALLY.public_key}, TALLY.public_key, None),
        (set(), None, BallotRefusal.UNKNOWN_TALLY),  # no tally admitted
        ({OTHER.public_key}, OTHER.public_key, BallotRefusal.UNKNOWN_TALLY),
        # an admitted tally (its own record tally.t2) signing a ballot that names t1
        ({TALLY.public_key, OTHER.public_key}, OTHER.public_key, BallotRefusal.TALLY_MISMATCH),
        ({TALLY.public_key}, None, BallotRefusal.TALLY_MISMATCH),  # no record tally.t1
    ],
)
def test_signer_rules(
    tally_keys: set[bytes], record_key: bytes | None, expected: BallotRefusal | None
) -> None:
    assert ballot_signer_refusal(ballot(), tally_keys=tally_keys, record_key=record_key) is expected


@pytest.mark.parametrize(
    ("ballot_epoch", "view_epoch", "expected"),
    [
        (7, 7, None),
        (6, 7, BallotRefusal.EPOCH_BEHIND),
        (8, 7, BallotRefusal.EPOCH_AHEAD),
    ],
)
def test_epoch_rule(ballot_epoch: int, view_epoch: int, expected: BallotRefusal | None) -> None:
    assert ballot_epoch_refusal(ballot_epoch, view_epoch) is expected


def test_memory_repeats_refuses_reuse_and_expires() -> None:
    m = VoteMemory(max_entries=2, max_bytes=100)
    m.remember("t1", "b1", b"h1", NOW + 10, b"vote-1")
    assert m.lookup("t1", "b1", b"h1") == b"vote-1"
    assert m.lookup("t1", "b1", b"h2") is BallotRefusal.ID_REUSED
    assert m.lookup("t2", "b1", b"h2") is None  # ids are per tally
    m.remember("t1", "b2", b"h2", NOW + 1_000, b"vote-2")
    assert not m.has_room(1, NOW)  # full of live entries: refuse, never forget one
    assert m.lookup("t1", "b1", b"h1") == b"vote-1"
    assert m.has_room(1, NOW + 11)  # b1's time is over
    assert m.lookup("t1", "b1", b"h1") is None and len(m) == 1 and m.bytes == len(b"vote-2")


@pytest.mark.parametrize(
    ("entries", "size", "room"),
    [
        (0, 100, True),
        (0, 101, False),  # bytes bound
        (1, 94, True),
        (1, 95, False),
        (2, 1, False),  # count bound
    ],
)
def test_memory_bounds(entries: int, size: int, room: bool) -> None:
    m = VoteMemory(max_entries=2, max_bytes=100)
    for i in range(entries):
        m.remember("t1", f"b{i}", b"h", NOW + 10, b"x" * 6)
    assert m.has_room(size, NOW) is room
