"""`agentic-payments status` judges the whole, not just each worker (pure table)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from bus.membership import ACTIVE, QUARANTINED, MemberRecord, PoolView
from workers.cli.operator import status_problems


def pool(*ids: str, quarantined: tuple[str, ...] = ()) -> PoolView:
    members = [MemberRecord(i, i.encode().ljust(32, b"k"), ACTIVE) for i in ids]
    members += [MemberRecord(i, i.encode().ljust(32, b"k"), QUARANTINED) for i in quarantined]
    return PoolView(7, tuple(members))


def rows(*ids: str, health: str = "Healthy", kind: str = "verifier") -> list[dict[str, Any]]:
    return [{"kind": kind, "id": i, "health": health} for i in ids]


@pytest.mark.parametrize(
    ("answering", "view", "expected"),
    [
        (rows("v1", "v2", "v3", "v4"), pool("v1", "v2", "v3", "v4"), []),
        (rows("v1", "v2", "v3"), pool("v1", "v2", "v3", "v4"), ["not serving: v4"]),
        (rows("v1", "v2"), pool("v1", "v2", "v3", "v4"), ["not serving: v3, v4", "q=3"]),
        (
            rows("v1", "v2", "v3", "v4", health="Unhealthy")[:1] + rows("v2", "v3", "v4"),
            pool("v1", "v2", "v3", "v4"),
            ["not serving: v1"],
        ),
        (rows("v1", "v1", "v2", "v3"), pool("v1", "v2", "v3"), ["verifier/v1 is answered by 2"]),
        (rows("v1", "v2", "v3"), pool("v1", "v2", "v3", quarantined=("v4",)), []),
    ],
)
def test_status_problems(
    answering: list[dict[str, Any]], view: PoolView, expected: list[str]
) -> None:
    problems = status_problems(answering, view, Fraction(2, 3))
    assert len(problems) == len(expected), problems
    for problem, needle in zip(problems, expected, strict=True):
        assert needle in problem
