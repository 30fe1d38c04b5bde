"""Regressions for what the fuzz suites found, each pinned to its smallest input.

Each case failed on the code before its fix (the commit says with what).
"""

from __future__ import annotations

import pytest

from bus.liveness import LivenessRecord
from schemas.errors import SchemaViolation
from schemas.keys import KeyRequest, check_key_name

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize(
    "name",
    [
        "agent-.",  # the wire fuzz: keys.rotate answered INTERNAL (nats-py InvalidKeyError)
        "a..b",  # an empty subject token: $KV.<bucket>.a..b is no valid subject
        ".a",
        "",
        "a" * 65,
        "a b",
    ],
)
def test_a_key_name_that_is_no_kv_key_is_a_schema_violation(name: str) -> None:
    with pytest.raises(SchemaViolation):
        check_key_name(name)
    with pytest.raises(SchemaViolation):
        KeyRequest.decode_for("rotate", KeyRequest(name=name).encode() if name else b"\x80")


@pytest.mark.parametrize("name", ["agent-1", "a.b", "A_b-c.d", "x" * 64])
def test_valid_key_names_still_pass(name: str) -> None:
    assert check_key_name(name) == name


@pytest.mark.parametrize("data", [b"[" * 1100, b"[" * 4096, b'{"v":1,"kind":' + b"[" * 2000])
def test_a_deeply_nested_liveness_file_is_a_value_error(data: bytes) -> None:
    """The liveness contract is ValueError (bus/liveness.read turns it into "no file");
    json.loads raised RecursionError for ~1000 nested '[', which the supervisor's
    restart handler (workers/recovery/supervisor.py) did not catch."""
    with pytest.raises(ValueError):
        LivenessRecord.parse(data)
