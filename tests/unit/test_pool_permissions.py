"""Who may write which member record (bus/permissions.py), as schemas/pool.py relies on."""

from __future__ import annotations

import pytest

from bus.permissions import ROLES, permissions
from bus.subjects import Subjects

S = Subjects("ap")
BUCKET = S.members_bucket


@pytest.mark.parametrize("role", [r for r in ROLES if r != "admin"])
@pytest.mark.parametrize(
    ("key", "who"),
    [
        ("admitted.v9", set()),  # admissions: the admin role only
        ("admitted.v1", set()),
        ("quarantined.v9", {"anomaly"}),
        ("tally.v9", set()),  # tally.<its own name> only
        ("v9", set()),  # a verifier's own name only
        ("v1", {"verifier"}),
        ("tally.v1", {"tally"}),
    ],
)
def test_only_the_intended_role_writes_a_member_key(role: str, key: str, who: set[str]) -> None:
    grants = permissions(role, "v1", S)
    assert grants.may_publish(f"$KV.{BUCKET}.{key}") is (role in who)


def test_no_role_but_admin_may_purge_or_delete_member_messages() -> None:
    for role in ROLES:
        if role == "admin":
            continue
        grants = permissions(role, "v1", S)
        for api in ("STREAM.PURGE", "STREAM.MSG.DELETE", "STREAM.UPDATE", "STREAM.DELETE"):
            assert not grants.may_publish(f"$JS.API.{api}.KV_{BUCKET}"), (role, api)
