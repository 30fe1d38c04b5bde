"""schemas/pool.py: which member records count, and what pool they add up to."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas.errors import SchemaViolation
from schemas.identity import AgentIdentity
from schemas.pool import (
    ACTIVE,
    DOMAIN_MEMBER,
    QUARANTINED,
    ROLE_TALLY,
    ROLE_VERIFIER,
    Entry,
    MemberRecord,
    admitted_record,
    build_pool,
    check_entry,
    member_signing_bytes,
    quarantine_record,
    self_record,
)

NET = "ap"
IDS = {name: AgentIdentity.from_seed(bytes([i + 1]) * 32) for i, name in enumerate("abcdefgh")}


def own(name: str, key: str | None = None, **kw: object) -> MemberRecord:
    return self_record(IDS[name], network=NET, key=key or name, **kw)  # type: ignore[arg-type]


def pk(name: str) -> bytes:
    return IDS[name].public_key


def entries(*records: MemberRecord) -> list[Entry]:
    return [Entry(r.worker_id, rev, r) for rev, r in enumerate(records, start=1)]


# (what, record, KV key, why-substring or None)
CHECKS = [
    ("own record", own("a"), "a", None),
    ("tally record", own("a", "tally.t1", role=ROLE_TALLY), "tally.t1", None),
    ("admission", admitted_record("v9", pk("a"), network=NET), "admitted.v9", None),
    ("quarantine", quarantine_record("a", pk("a"), network=NET), "quarantined.a", None),
    ("names another key", own("a", "b"), "a", "names 'b'"),
    ("other network", self_record(IDS["a"], network="zz", key="a"), "a", "network"),
    (
        "another's key, unsigned",
        MemberRecord("a", pk("b"), ACTIVE, 0, ROLE_VERIFIER, NET),
        "a",
        "not signed",
    ),
    (
        "another's key, signed by me",
        replace(own("a"), public_key=pk("b")),
        "a",
        "not signed",
    ),
    ("own record, quarantined status", own("a", status=QUARANTINED), "a", "not a member"),
    ("own record with tally role", own("a", role=ROLE_TALLY), "a", "not a verifier"),
    ("tally record as verifier", own("a", "tally.t1"), "tally.t1", "not a tally"),
    (
        "unsigned tally",
        MemberRecord("tally.t1", pk("a"), ACTIVE, 0, ROLE_TALLY, NET),
        "tally.t1",
        "not signed",
    ),
    (
        "quarantine with active status",
        admitted_record("a", pk("a"), network=NET),
        "admitted.a",
        None,
    ),
    (
        "quarantine not saying quarantined",
        replace(quarantine_record("a", pk("a"), network=NET), status=ACTIVE),
        "quarantined.a",
        "not a quarantine",
    ),
    ("dotted key", own("a", "x.y"), "x.y", "no record kind"),
    (
        "admission of a dotted id",
        replace(admitted_record("a", pk("a"), network=NET), worker_id="admitted.tally.x"),
        "admitted.tally.x",
        "not an admission",
    ),
]


@pytest.mark.parametrize(("what", "record", "key", "why"), CHECKS, ids=[c[0] for c in CHECKS])
def test_check_entry(what: str, record: MemberRecord, key: str, why: str | None) -> None:
    result = check_entry(Entry(key, 1, record), NET)
    if why is None:
        assert result is None
    else:
        assert result is not None and why in result, result


def test_records_round_trip_and_signing_bytes_are_domain_tagged() -> None:
    r = own("a", at_ms=5)
    assert MemberRecord.decode(r.encode()) == r
    assert r.signing_bytes().startswith(DOMAIN_MEMBER)
    assert r.signing_bytes() == member_signing_bytes(
        network=NET,
        key="a",
        role=ROLE_VERIFIER,
        public_key=pk("a"),
        status=ACTIVE,
        registered_at_ms=5,
    )
    assert (
        r.signing_bytes()
        != self_record(IDS["a"], network="other", key="a", at_ms=5).signing_bytes()
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x80",
        MemberRecord("a", pk("a")).encode().replace(b"\xa1v\x02", b"\xa1v\x01"),
        MemberRecord("a", pk("a")[:31]).encode(),
        replace(own("a"), sig=b"x").encode(),
    ],
)
def test_malformed_records_are_schema_violations(data: bytes) -> None:
    with pytest.raises(SchemaViolation):
        MemberRecord.decode(data)


def seats(pool_entries: list[Entry]) -> tuple[list[str], list[str]]:
    pool = build_pool(pool_entries, NET)
    return [s.id for s in pool.active], [s.id for s in pool.quarantined]


# (what, records in revision order, active seat ids, quarantined seat ids)
POOLS = [
    ("four own records", [own("a"), own("b"), own("c"), own("d")], ["a", "b", "c", "d"], []),
    (
        "v1 claims v2's key as quarantined",
        [
            own("a"),
            own("b"),
            own("c"),
            own("d"),
            replace(own("a"), public_key=pk("b"), status=QUARANTINED),
        ],
        ["b", "c", "d"],  # v1 gave up its own seat; v2 keeps its seat
        [],
    ),
    (
        "same key twice: the first holder keeps the seat",
        [own("a"), own("b"), own("c"), own("a", "x")],
        ["a", "b", "c"],
        [],
    ),
    (
        "quarantine naming the seat's key",
        [own("a"), own("b"), own("c"), own("d"), quarantine_record("a", pk("a"), network=NET)],
        ["b", "c", "d"],
        ["a"],
    ),
    (
        "quarantine naming another key is void",
        [own("a"), own("b"), own("c"), own("d"), quarantine_record("a", pk("b"), network=NET)],
        ["a", "b", "c", "d"],
        [],
    ),
    (
        "at most f quarantines, earliest first",
        [own(x) for x in "abcdefg"] + [quarantine_record(x, pk(x), network=NET) for x in "gfed"],
        ["a", "b", "c", "d", "e"],
        ["f", "g"],
    ),
    (
        "admission without a signature",
        [own("a"), own("b"), admitted_record("c", pk("c"), network=NET)],
        ["a", "b", "c"],
        [],
    ),
    (
        "admission and own record with the same key: one seat",
        [admitted_record("c", pk("c"), network=NET), own("a"), own("b"), own("c")],
        ["a", "b", "c"],
        [],
    ),
    (
        "admission beats an own record with another key",
        [own("a"), own("b"), own("d", "c"), admitted_record("c", pk("c"), network=NET)],
        ["a", "b", "c"],
        [],
    ),
    (
        "tallies are not verifier seats",
        [own("a"), own("b"), own("c"), own("e", "tally.t1", role=ROLE_TALLY)],
        ["a", "b", "c"],
        [],
    ),
]


@pytest.mark.parametrize(("what", "records", "active", "out"), POOLS, ids=[p[0] for p in POOLS])
def test_build_pool(
    what: str, records: list[MemberRecord], active: list[str], out: list[str]
) -> None:
    latest: dict[str, Entry] = {}  # a later write to a KV key replaces the earlier one
    for rev, r in enumerate(records, start=1):
        latest[r.worker_id] = Entry(r.worker_id, rev, r)
    assert seats(list(latest.values())) == (active, out)


def test_over_cap_and_tallies_are_reported() -> None:
    records = [own(x) for x in "abcd"] + [
        quarantine_record("a", pk("a"), network=NET),
        quarantine_record("b", pk("b"), network=NET),
        own("e", "tally.t1", role=ROLE_TALLY),
    ]
    pool = build_pool(entries(*records), NET)
    assert [s.id for s in pool.quarantined] == ["a"]
    assert pool.over_cap == ("b",)
    assert [(s.id, s.public_key) for s in pool.tallies] == [("tally.t1", pk("e"))]
