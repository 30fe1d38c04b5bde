"""Hole 7d: a failed chain check is remembered (pure: workers/consensus/verdict_state.py).

A chain that fails costs as many signature checks to find as one that succeeds,
so a flood of requests repeating a bad chain must not re-run the search. A
remembered failure must still not outlive its revision (one StateVerdicts per
revision) nor a validity boundary (a certificate starting or ending, a key
status expiring): it holds only between the boundaries around its judging time.
"""

from __future__ import annotations

import pytest

from schemas.identity import AgentIdentity
from schemas.trust import PURPOSE_PAYMENT
from tests.unit.test_verdict_state import AGENT, CA, NOW, base_state, cert, request
from workers.consensus.judge import judge
from workers.consensus.verdict_state import StateVerdicts, decode_state_record
from workers.trust.chain import ChainCache

#: a leaf certificate valid until NOW + 1000
SHORT_LEAF = cert("leaf-s", CA, AGENT, (PURPOSE_PAYMENT,), not_after=NOW + 1000)
#: a leaf certificate from an issuer nobody certified: fails at every time
STRAY_LEAF = cert("leaf-x", AgentIdentity.generate(), AGENT, (PURPOSE_PAYMENT,))


def verdicts() -> StateVerdicts:
    items = {k: decode_state_record(k, v) for k, v in base_state().items()}
    return StateVerdicts(items, 1, chain_cache=ChainCache())


@pytest.mark.parametrize(
    ("leaf", "first_ms", "second_ms", "first", "second", "hits"),
    [
        # the same failure at the same time: answered from memory
        (STRAY_LEAF, NOW, NOW, "CHAIN_NO_ANCHOR:1", "CHAIN_NO_ANCHOR:1", 1),
        # ... and later, while no validity boundary is crossed
        (STRAY_LEAF, NOW, NOW + 1000, "CHAIN_NO_ANCHOR:1", "CHAIN_NO_ANCHOR:1", 1),
        # past the presented leaf's not_after the answer changes: judged afresh
        (STRAY_LEAF, NOW, NOW + 86_400_000 * 30, "CHAIN_NO_ANCHOR:1", "CHAIN_EXPIRED:0", 0),
        # an expiry remembered at NOW+1000 holds later ...
        (SHORT_LEAF, NOW + 1000, NOW + 5000, "CHAIN_EXPIRED:0", "CHAIN_EXPIRED:0", 1),
        # ... but not before the leaf's not_after: judged again, and valid there
        (SHORT_LEAF, NOW + 1000, NOW + 999, "CHAIN_EXPIRED:0", "OK", 0),
    ],
)
def test_a_failed_chain_is_remembered_within_its_validity_interval(
    leaf: bytes, first_ms: int, second_ms: int, first: str, second: str, hits: int
) -> None:
    state = verdicts()
    raw = request(chain=(leaf,))
    assert judge(raw, state, first_ms).reason == first
    assert judge(raw, state, second_ms).reason == second
    assert state.chain_failure_hits == hits


def test_a_remembered_failure_does_not_outlive_its_revision() -> None:
    raw = request(chain=(SHORT_LEAF,))
    first = verdicts()
    assert judge(raw, first, NOW + 1000).reason == "CHAIN_EXPIRED:0"
    # the next revision (a new StateVerdicts) judges afresh
    again = verdicts()
    assert judge(raw, again, NOW).reason == "OK"
    assert again.chain_failure_hits == 0
