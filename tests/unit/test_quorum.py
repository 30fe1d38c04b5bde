"""Quorum math table: n = 3..10 × thresholds 1/2, 2/3, 3/4, 1."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from schemas.errors import ConfigError
from schemas.quorum import Decision, QuorumRule, fault_tolerance, parse_threshold, quorum_size

THRESHOLDS = [Fraction(1, 2), Fraction(2, 3), Fraction(3, 4), Fraction(1)]
# Expected q written out by hand (not computed with the code under test).
EXPECTED_Q = {
    Fraction(1, 2): {3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 5, 10: 5},
    Fraction(2, 3): {3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 6, 9: 6, 10: 7},
    Fraction(3, 4): {3: 3, 4: 3, 5: 4, 6: 5, 7: 6, 8: 6, 9: 7, 10: 8},
    Fraction(1): {3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10},
}
EXPECTED_F = {3: 0, 4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 3}


@pytest.mark.parametrize("threshold", THRESHOLDS, ids=str)
@pytest.mark.parametrize("n", range(3, 11))
def test_q_and_f(n: int, threshold: Fraction) -> None:
    rule = QuorumRule(n, threshold)
    assert rule.q == EXPECTED_Q[threshold][n]
    assert rule.f == EXPECTED_F[n]
    assert quorum_size(n, threshold) == math.ceil(threshold.numerator * n / threshold.denominator)


def test_float_rounding_bug_is_avoided() -> None:
    # 0.67 * 3 = 2.01 -> ceil 3 would make n=3 need unanimity
    assert QuorumRule(3, Fraction(2, 3)).q == 2
    assert math.ceil(0.67 * 3) == 3


@pytest.mark.parametrize("threshold", THRESHOLDS, ids=str)
@pytest.mark.parametrize("n", range(3, 11))
def test_early_decision_exactly_at_q(n: int, threshold: Fraction) -> None:
    rule = QuorumRule(n, threshold)
    q = rule.q
    assert rule.decide(q - 1, 0) is None or rule.decide(q - 1, 0) is Decision.NO_QUORUM
    assert rule.decide(q, 0) is Decision.VALID
    if q <= n:
        assert rule.decide(0, q) is Decision.INVALID


@pytest.mark.parametrize(
    ("n", "threshold", "valid", "invalid", "timed_out", "expected"),
    [
        # n=4, q=3: one liar cannot block either side
        (4, Fraction(2, 3), 3, 1, False, Decision.VALID),
        (4, Fraction(2, 3), 1, 3, False, Decision.INVALID),
        (4, Fraction(2, 3), 2, 1, False, None),  # one vote missing, VALID still reachable
        (4, Fraction(2, 3), 2, 2, False, Decision.NO_QUORUM),  # 2 liars: neither can reach 3
        (4, Fraction(2, 3), 2, 0, True, Decision.TIMEOUT),
        (4, Fraction(2, 3), 0, 0, True, Decision.TIMEOUT),
        (3, Fraction(2, 3), 1, 1, False, None),
        (3, Fraction(2, 3), 2, 1, False, Decision.VALID),
        (3, Fraction(1), 2, 1, False, Decision.NO_QUORUM),
        (7, Fraction(2, 3), 4, 2, False, None),
        (7, Fraction(2, 3), 3, 3, False, Decision.NO_QUORUM),
        (10, Fraction(3, 4), 7, 3, False, Decision.NO_QUORUM),
        (10, Fraction(3, 4), 8, 0, False, Decision.VALID),
        (5, Fraction(1, 2), 2, 2, True, Decision.TIMEOUT),
        (5, Fraction(1, 2), 3, 2, False, Decision.VALID),
    ],
)
def test_decision_table(
    n: int,
    threshold: Fraction,
    valid: int,
    invalid: int,
    timed_out: bool,
    expected: Decision | None,
) -> None:
    assert QuorumRule(n, threshold).decide(valid, invalid, timed_out=timed_out) is expected


@pytest.mark.parametrize(
    ("n", "threshold", "safe"),
    [
        (4, Fraction(1, 2), False),
        (5, Fraction(1, 2), True),
        (4, Fraction(2, 3), True),
        (10, Fraction(1, 2), False),
        (3, Fraction(1), True),
    ],
)
def test_safety_flag(n: int, threshold: Fraction, safe: bool) -> None:
    assert QuorumRule(n, threshold).safe is safe


def test_impossible_counts_rejected() -> None:
    with pytest.raises(ValueError):
        QuorumRule(4).decide(3, 2)


@pytest.mark.parametrize(
    ("decision", "valid", "invalid", "ok"),
    [
        (Decision.VALID, 3, 0, True),
        (Decision.VALID, 2, 0, False),
        (Decision.INVALID, 0, 3, True),
        (Decision.INVALID, 1, 2, False),
        (Decision.NO_QUORUM, 2, 2, True),
        (Decision.NO_QUORUM, 2, 1, False),
        (Decision.TIMEOUT, 2, 0, True),
        (Decision.TIMEOUT, 3, 0, False),
    ],
)
def test_consistency_check(decision: Decision, valid: int, invalid: int, ok: bool) -> None:
    assert QuorumRule(4).consistent(decision, valid, invalid) is ok


@pytest.mark.parametrize(
    ("text", "value"), [("2/3", Fraction(2, 3)), ("1", Fraction(1)), (" 3/4 ", Fraction(3, 4))]
)
def test_parse_threshold(text: str, value: Fraction) -> None:
    assert parse_threshold(text) == value


@pytest.mark.parametrize("text", ["0.67", "2/0", "0", "4/3", "abc", "1e0", "-1/2"])
def test_parse_threshold_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_threshold(text)


def test_fault_tolerance_small() -> None:
    assert [fault_tolerance(n) for n in range(0, 5)] == [0, 0, 0, 0, 1]
