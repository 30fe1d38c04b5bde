"""Policy evaluation tables (workers/authority/policy.py): pure, no NATS."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from fractions import Fraction

import pytest

from schemas.authority import (
    AuthorityRecord,
    Endorsement,
    PolicyGroup,
    QuorumPolicy,
    TrustLevel,
    sign_endorsement,
)
from schemas.identity import AgentIdentity
from workers.authority.policy import (
    POLICY_MISSING,
    POLICY_NOT_MET,
    evaluate,
    evaluate_from_state,
    match_slots,
    qualifies,
    required_count,
    resolve_policy,
    satisfiable,
)

DIGEST = hashlib.sha256(b"pay 10 EUR to merchant-42").digest()
OTHER_DIGEST = hashlib.sha256(b"pay 10000 EUR to merchant-42").digest()
CAT = "payments"

IDS = {
    name: AgentIdentity.from_seed(bytes([i + 1]) * 32)
    for i, name in enumerate(
        ["root", "high", "high2", "med", "med2", "low", "untrusted", "off", "stranger"]
    )
}
LEVELS = {
    "root": "Root",
    "high": "High",
    "high2": "High",
    "med": "Medium",
    "med2": "Medium",
    "low": "Low",
    "untrusted": "Untrusted",
    "off": "High",
}
AUTHORITIES = {
    IDS[n].public_key: AuthorityRecord(IDS[n].public_key, n, level, n != "off")
    for n, level in LEVELS.items()
}


def key(name: str) -> bytes:
    return IDS[name].public_key


def endorse(name: str, mode: str = "good", category: str = CAT) -> Endorsement:
    if mode == "good":
        return sign_endorsement(IDS[name], category, DIGEST)
    if mode == "other-category":
        return sign_endorsement(IDS[name], "refunds", DIGEST)
    if mode == "other-digest":
        return sign_endorsement(IDS[name], category, OTHER_DIGEST)
    if mode == "forged":  # signed by someone else, claimed by name
        return Endorsement(key(name), sign_endorsement(IDS["stranger"], category, DIGEST).signature)
    raise AssertionError(mode)


def policy(
    min_authorities: int = 1,
    level: str = "Low",
    threshold: str = "1/100",
    groups: tuple[PolicyGroup, ...] = (),
    category: str = CAT,
) -> QuorumPolicy:
    num, den = threshold.split("/")
    return QuorumPolicy(category, min_authorities, level, Fraction(int(num), int(den)), groups)


@dataclass(frozen=True)
class Case:
    id: str
    policy: QuorumPolicy
    signers: tuple[tuple[str, str], ...]  # (authority, mode)
    ok: bool
    counted: tuple[str, ...]
    ignored: tuple[tuple[str, str], ...] = ()


def s(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, "good") for n in names)


# Greedy trap: "high" qualifies for both groups, "med" only for the Medium group.
# First-fit in signer order puts high in the Medium slot and leaves the High slot empty.
TRAP = (PolicyGroup(1, "Medium", name="any-medium"), PolicyGroup(1, "High", name="any-high"))

CASES = [
    Case("one-good", policy(), s("med"), True, ("med",)),
    Case(
        "duplicate-signer-counted-once",
        policy(min_authorities=2),
        s("med", "med"),
        False,
        ("med",),
        (("med", "DUPLICATE"),),
    ),
    Case(
        "duplicate-then-second-signer",
        policy(min_authorities=2),
        s("med", "med", "high"),
        True,
        ("med", "high"),
        (("med", "DUPLICATE"),),
    ),
    Case(
        "bad-then-good-from-same-authority",
        policy(),
        (("med", "forged"), ("med", "good")),
        True,
        ("med",),
        (("med", "BAD_SIGNATURE"),),
    ),
    Case(
        "one-signer-cannot-fill-two-slots",
        policy(groups=(PolicyGroup(2, "High"),)),
        s("high", "high"),
        False,
        ("high",),
        (("high", "DUPLICATE"),),
    ),
    Case(
        "one-signer-two-groups",
        policy(groups=(*TRAP[::-1], PolicyGroup(1, "Root"))),
        s("root", "med"),
        False,
        ("root", "med"),
    ),
    Case("inactive-ignored", policy(), s("off"), False, (), (("off", "INACTIVE"),)),
    Case(
        "inactive-does-not-block-others",
        policy(),
        s("off", "low"),
        True,
        ("low",),
        (("off", "INACTIVE"),),
    ),
    Case(
        "below-level-ignored",
        policy(level="Medium"),
        s("low", "untrusted"),
        False,
        (),
        (("low", "BELOW_TRUST_LEVEL"), ("untrusted", "BELOW_TRUST_LEVEL")),
    ),
    Case("at-level-counted", policy(level="Medium"), s("med"), True, ("med",)),
    Case(
        "unknown-ignored", policy(), s("stranger"), False, (), (("stranger", "UNKNOWN_AUTHORITY"),)
    ),
    Case(
        "forged-signature", policy(), (("high", "forged"),), False, (), (("high", "BAD_SIGNATURE"),)
    ),
    Case(
        "wrong-category-signature",
        policy(),
        (("high", "other-category"),),
        False,
        (),
        (("high", "BAD_SIGNATURE"),),
    ),
    Case(
        "wrong-digest-signature",
        policy(),
        (("high", "other-digest"),),
        False,
        (),
        (("high", "BAD_SIGNATURE"),),
    ),
    Case("greedy-trap-passes", policy(groups=TRAP), s("high", "med"), True, ("high", "med")),
    Case(
        "greedy-trap-reversed-order", policy(groups=TRAP), s("med", "high"), True, ("med", "high")
    ),
    Case("trap-without-high-fails", policy(groups=TRAP), s("med", "med2"), False, ("med", "med2")),
    Case(
        "member-list-group",
        policy(groups=(PolicyGroup(2, "Low", (key("low"), key("med"), key("root"))),)),
        s("high", "root", "low"),
        True,
        ("high", "root", "low"),
    ),
    Case(
        "member-list-group-short",
        policy(groups=(PolicyGroup(2, "Low", (key("low"), key("med"))),)),
        s("high", "root", "low"),
        False,
        ("high", "root", "low"),
    ),
    # exact fractions: 7 active at Untrusted+ (off is inactive); 2/3 of 7 -> ceil(14/3) = 5
    Case(
        "two-thirds-of-seven-needs-5",
        policy(threshold="2/3", level="Untrusted"),
        s("root", "high", "high2", "med"),
        False,
        ("root", "high", "high2", "med"),
    ),
    Case(
        "two-thirds-of-seven-with-5",
        policy(threshold="2/3", level="Untrusted"),
        s("root", "high", "high2", "med", "med2"),
        True,
        ("root", "high", "high2", "med", "med2"),
    ),
    # 3 eligible at High+: 2/3 of 3 is exactly 2 (0.67 * 3 = 2.01 -> 3 is the float bug)
    Case(
        "two-thirds-of-three-needs-2",
        policy(level="High", threshold="2/3"),
        s("root", "high"),
        True,
        ("root", "high"),
    ),
    Case(
        "min-authorities-beats-threshold",
        policy(min_authorities=3, level="High", threshold="1/3"),
        s("root", "high"),
        False,
        ("root", "high"),
    ),
    # 6 active at Low+: 2/3 of 6 is 4
    Case(
        "two-thirds-of-six-is-4",
        policy(threshold="2/3"),
        s("root", "high", "high2", "med"),
        True,
        ("root", "high", "high2", "med"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_evaluate_table(case: Case) -> None:
    endorsements = [endorse(name, mode) for name, mode in case.signers]
    result = evaluate(case.policy, AUTHORITIES, endorsements, CAT, DIGEST)
    assert result.ok is case.ok, result.reason
    assert result.code == (None if case.ok else POLICY_NOT_MET)
    assert result.counted == tuple(key(n) for n in case.counted)
    assert result.ignored == tuple((key(n), r) for n, r in case.ignored)
    assert result.policy_category == CAT
    if case.ok:
        for group, filled in zip(case.policy.groups, result.assignment, strict=True):
            assert len(filled) == group.k == len(set(filled))
            assert all(qualifies(AUTHORITIES[k], group) for k in filled)
        used = [k for filled in result.assignment for k in filled]
        assert len(used) == len(set(used)), "one signer filled two slots"


def greedy(slots: list[list[int]]) -> list[int] | None:
    """First fit, what the matching must beat."""
    taken: set[int] = set()
    out = []
    for options in slots:
        free = [o for o in options if o not in taken]
        if not free:
            return None
        taken.add(free[0])
        out.append(free[0])
    return out


@pytest.mark.parametrize(
    ("slots", "signers", "solvable"),
    [
        ([[0, 1], [0]], 2, True),  # greedy takes 0 for slot 0 and fails slot 1
        ([[0, 1, 2], [0, 1], [0]], 3, True),
        ([[0], [0]], 1, False),  # one signer, two slots
        ([[0, 1], [0, 1], [0, 1]], 2, False),
        ([], 0, True),
        ([[1], [0]], 2, True),
    ],
)
def test_matching_is_exact(slots: list[list[int]], signers: int, solvable: bool) -> None:
    matched = match_slots(slots, signers)
    assert (matched is not None) is solvable
    if matched is not None:
        assert len(set(matched)) == len(matched)
        assert all(m in options for m, options in zip(matched, slots, strict=True))


def test_greedy_really_fails_the_trap() -> None:
    assert greedy([[0, 1], [0]]) is None  # the trap is a trap
    assert match_slots([[0, 1], [0]], 2) == [1, 0]


@pytest.mark.parametrize(
    ("threshold", "eligible", "minimum", "expected"),
    [
        (Fraction(2, 3), 3, 1, 2),
        (Fraction(2, 3), 4, 1, 3),
        (Fraction(2, 3), 6, 1, 4),
        (Fraction(2, 3), 7, 1, 5),
        (Fraction(1, 2), 4, 1, 2),
        (Fraction(1, 2), 5, 1, 3),
        (Fraction(1, 1), 5, 1, 5),
        (Fraction(1, 3), 3, 2, 2),
        (Fraction(2, 3), 0, 1, 1),
        (Fraction(67, 100), 3, 1, 3),
        (Fraction(2, 3), 300, 1, 200),
    ],
)
def test_required_count_is_exact(
    threshold: Fraction, eligible: int, minimum: int, expected: int
) -> None:
    assert required_count(minimum, threshold, eligible) == expected


DEFAULT = policy(min_authorities=2, category="default")
OWN = policy(min_authorities=1)
ADMIN = policy(min_authorities=1, level="Root", category="policy-admin")


@pytest.mark.parametrize(
    ("policies", "category", "expected"),
    [
        ({CAT: OWN, "default": DEFAULT}, CAT, OWN),
        ({"default": DEFAULT}, CAT, DEFAULT),  # default fallback
        ({}, CAT, None),  # nothing: refuse
        ({"default": DEFAULT}, "policy-admin", None),  # governance never falls back
        ({"policy-admin": ADMIN, "default": DEFAULT}, "policy-admin", ADMIN),
    ],
)
def test_resolve_policy(
    policies: dict[str, QuorumPolicy], category: str, expected: QuorumPolicy | None
) -> None:
    assert resolve_policy(policies, category) == expected


def _state(*items: AuthorityRecord | QuorumPolicy) -> dict[str, object]:
    out: dict[str, object] = {"key.abcd": "someone else's record", "anchor.ff": None}
    for item in items:
        if isinstance(item, AuthorityRecord):
            out[f"authority.{item.public_key.hex()}"] = item
        else:
            out[f"policy.{item.category}"] = item
    return out


def test_from_state_default_fallback_and_missing() -> None:
    records = list(AUTHORITIES.values())
    state = _state(*records, DEFAULT)
    one = [endorse("med")]
    two = [endorse("med"), endorse("high")]
    result = evaluate_from_state(state, CAT, DIGEST, one)
    assert (result.ok, result.code, result.policy_category) == (False, POLICY_NOT_MET, "default")
    assert evaluate_from_state(state, CAT, DIGEST, two).ok
    missing = evaluate_from_state(_state(*records), CAT, DIGEST, two)
    assert (missing.ok, missing.code, missing.policy_category) == (False, POLICY_MISSING, None)
    own = evaluate_from_state(_state(*records, DEFAULT, OWN), CAT, DIGEST, one)
    assert own.ok and own.policy_category == CAT


def test_endorsement_for_one_category_not_valid_for_another_sharing_default() -> None:
    state = _state(*AUTHORITIES.values(), replace(DEFAULT, min_authorities=1))
    assert evaluate_from_state(state, CAT, DIGEST, [endorse("med")]).ok
    result = evaluate_from_state(state, "refunds", DIGEST, [endorse("med")])
    assert not result.ok and result.ignored == ((key("med"), "BAD_SIGNATURE"),)


def test_deactivated_authority_lowers_eligible_count() -> None:
    strict = policy(level="High", threshold="1/1")  # all of root, high, high2
    assert not evaluate(strict, AUTHORITIES, [endorse("root"), endorse("high")], CAT, DIGEST).ok
    fewer = dict(AUTHORITIES)
    fewer[key("high2")] = replace(fewer[key("high2")], active=False)
    assert evaluate(strict, fewer, [endorse("root"), endorse("high")], CAT, DIGEST).ok


@pytest.mark.parametrize("level", list(TrustLevel))
def test_trust_level_order(level: TrustLevel) -> None:
    group = PolicyGroup(1, level.value)
    ranked = list(TrustLevel)
    for other in ranked:
        record = AuthorityRecord(key("med"), "x", other.value, True)
        assert qualifies(record, group) is (ranked.index(other) >= ranked.index(level))


@pytest.mark.parametrize(
    ("pol", "ok"),
    [
        (policy(min_authorities=1, level="Root"), True),
        (policy(min_authorities=2, level="Root"), False),  # one Root only
        (policy(min_authorities=3, level="High"), True),  # root, high, high2 (off inactive)
        (policy(min_authorities=4, level="High"), False),
        (policy(level="High", threshold="1/1"), True),
        (policy(groups=(PolicyGroup(2, "High"), PolicyGroup(1, "Root"))), True),
        (policy(groups=(PolicyGroup(3, "High"), PolicyGroup(1, "Root"))), False),  # root twice
        (policy(groups=(PolicyGroup(1, "Low", (key("off"),)),)), False),  # only member inactive
    ],
)
def test_satisfiable(pol: QuorumPolicy, ok: bool) -> None:
    assert (satisfiable(pol, AUTHORITIES) is None) is ok
