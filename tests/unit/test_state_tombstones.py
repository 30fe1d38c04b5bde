"""Hole 6c: a deleted, replayed or un-revoked key status never reads as "allowed"
(pure: workers/consensus/verdict_state.merge_state_record and key_refusal)."""

from __future__ import annotations

import pytest

from schemas.codec import Deleted, Unreadable
from schemas.identity import AgentIdentity
from schemas.keys import KeyStatus
from tests.unit.test_verdict_state import NOW, key_status
from workers.consensus.verdict_state import key_refusal, merge_state_record

AGENT = AgentIdentity.generate()
KEY = f"key.{AGENT.public_key.hex()}"
ACTIVE = key_status(AGENT, source_revision=1)
REVOKED = key_status(AGENT, source_revision=2, revoked_at_ms=NOW - 10, revoked_reason="stolen")
DESTROYED = key_status(AGENT, source_revision=3, state="Destroyed", verify_allowed=False)
DISABLED = key_status(AGENT, source_revision=2, state="Disabled")
REENABLED = key_status(AGENT, source_revision=3)
FORGED_ACTIVE = key_status(AGENT, source_revision=99)


def _tomb(previous: object) -> Deleted:
    return Deleted(KEY, 7, previous)


def _fold(*records: object) -> object:
    """The mirror's fold over the records arriving for KEY, in order."""
    current: object = None
    for record in records:
        if record == "DEL":
            before = current.previous if isinstance(current, Deleted) else current
            record = Deleted(KEY, 7, before)
        current = merge_state_record(KEY, current, record)
    return current


@pytest.mark.parametrize(
    ("history", "refusal"),
    [
        ((ACTIVE,), None),
        ((ACTIVE, REVOKED), "KEY_REVOKED"),
        # a delete marker over a revocation (a copy by any JS API user, or keys1's own)
        ((ACTIVE, REVOKED, "DEL"), "KEY_REVOKED"),
        # ... even over an active status: the key manager never deletes a status
        ((ACTIVE, "DEL"), "KEY_REVOKED"),
        # a replay of the older active status (a direct-get copy) after the revocation
        ((ACTIVE, REVOKED, ACTIVE), "KEY_REVOKED"),
        ((ACTIVE, REVOKED, "DEL", ACTIVE), "KEY_REVOKED"),
        # a compromised key manager writing a fresh "active" status over a revocation
        ((ACTIVE, REVOKED, FORGED_ACTIVE), "KEY_REVOKED"),
        ((ACTIVE, DESTROYED, FORGED_ACTIVE), "KEY_DESTROYED"),
        # an honest disable and re-enable stays possible
        ((ACTIVE, DISABLED), "KEY_DISABLED"),
        ((ACTIVE, DISABLED, REENABLED), None),
        # a stale (lower source_revision) status never overwrites a newer one
        ((ACTIVE, DISABLED, ACTIVE), "KEY_DISABLED"),
        # junk over a revocation fails closed
        ((ACTIVE, REVOKED, Unreadable(KEY, "junk")), "STATE_UNREADABLE"),
    ],
)
def test_a_key_status_history_judges_fail_closed(
    history: tuple[object, ...], refusal: str | None
) -> None:
    items = {KEY: _fold(*history)}
    assert key_refusal(items, AGENT.public_key, NOW) == refusal


def test_an_unmanaged_key_is_still_judged_by_its_signature_alone() -> None:
    assert key_refusal({}, AGENT.public_key, NOW) is None


@pytest.mark.parametrize("new", [ACTIVE, Unreadable("anchor.x", "junk"), _tomb(None)])
def test_other_areas_are_taken_as_they_come(new: object) -> None:
    assert merge_state_record("anchor.x", REVOKED, new) is new


def test_a_tombstone_remembers_the_last_status_not_the_last_tombstone() -> None:
    kept = _fold(ACTIVE, REVOKED, "DEL", "DEL")
    assert isinstance(kept, Deleted) and isinstance(kept.previous, KeyStatus)
    assert kept.previous == REVOKED
