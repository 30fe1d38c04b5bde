"""Quorum math: exact fractions, never floats.

q = ceil(threshold × n) computed with integers, f = floor((n − 1) / 3).
With threshold 2/3 and n = 3, q is 2 — the float 0.67 × 3 = 2.01 → 3 is the
classic bug this module exists to avoid. A decision is reached as early as one
side has q votes; NO_QUORUM as soon as neither side can still get there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fractions import Fraction

from schemas.errors import ConfigError

MIN_POOL = 3
DEFAULT_THRESHOLD = Fraction(2, 3)


class Decision(enum.StrEnum):
    VALID = "VALID"
    INVALID = "INVALID"
    NO_QUORUM = "NO_QUORUM"
    TIMEOUT = "TIMEOUT"


def parse_threshold(text: str | Fraction) -> Fraction:
    """Parse "2/3" (or "1", "3/4"); reject floats like "0.67", which hide rounding."""
    if isinstance(text, Fraction):
        value = text
    else:
        text = text.strip()
        if "." in text or "e" in text.lower():
            raise ConfigError(f"threshold {text!r} must be an exact fraction like 2/3, not a float")
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"threshold {text!r} is not a fraction like 2/3") from None
    if not 0 < value <= 1:
        raise ConfigError(f"threshold {value} must be in (0, 1]")
    return value


def quorum_size(n: int, threshold: Fraction) -> int:
    """ceil(threshold × n) in integer arithmetic."""
    if n < 0:
        raise ValueError("pool size cannot be negative")
    return -(-threshold.numerator * n // threshold.denominator)


def fault_tolerance(n: int) -> int:
    """f = floor((n − 1) / 3): Byzantine verifiers a pool of n survives."""
    return max(0, (n - 1) // 3)


@dataclass(frozen=True)
class QuorumRule:
    """The quorum for one pool size and threshold."""

    n: int
    threshold: Fraction = DEFAULT_THRESHOLD

    @property
    def q(self) -> int:
        return quorum_size(self.n, self.threshold)

    @property
    def f(self) -> int:
        return fault_tolerance(self.n)

    @property
    def safe(self) -> bool:
        """Two quorums always intersect (2q > n): VALID and INVALID can't both be reached."""
        return 2 * self.q > self.n

    def decide(self, valid: int, invalid: int, *, timed_out: bool = False) -> Decision | None:
        """The decision for these counts, or None while the round is still open.

        Callers re-evaluate after every counted vote, so the first side to reach
        q wins; with a safe rule the other side can never reach it as well.
        """
        if valid < 0 or invalid < 0 or valid + invalid > self.n:
            raise ValueError(f"impossible counts valid={valid} invalid={invalid} n={self.n}")
        q = self.q
        if valid >= q:
            return Decision.VALID
        if invalid >= q:
            return Decision.INVALID
        remaining = self.n - valid - invalid
        if valid + remaining < q and invalid + remaining < q:
            return Decision.NO_QUORUM
        if timed_out:
            return Decision.TIMEOUT
        return None

    def consistent(self, decision: Decision, valid: int, invalid: int) -> bool:
        """Whether a stated decision is justified by final counts (certificate check)."""
        if valid < 0 or invalid < 0 or valid + invalid > self.n:
            return False
        q = self.q
        if decision is Decision.VALID:
            return valid >= q
        if decision is Decision.INVALID:
            return invalid >= q
        remaining = self.n - valid - invalid
        no_quorum = valid + remaining < q and invalid + remaining < q
        if decision is Decision.NO_QUORUM:
            return no_quorum and valid < q and invalid < q
        return valid < q and invalid < q  # TIMEOUT: nobody had reached q
