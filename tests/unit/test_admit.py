"""workers/cli/admit.py: the public key an operator types is parsed strictly."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from schemas.identity import AgentIdentity, did_key
from workers.cli.admit import parse_public_key

KEY = AgentIdentity.from_seed(bytes(range(32))).public_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KEY.hex(), KEY),
        (KEY.hex().upper(), KEY),
        (did_key(KEY), KEY),
        ("", None),
        (KEY.hex()[:-2], None),
        (KEY.hex() + "00", None),
        ("zz" * 32, None),
        ("did:key:zNotBase58!", None),
        ("did:web:example.com", None),
    ],
)
def test_parse_public_key(text: str, expected: bytes | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError):
            parse_public_key(text)
    else:
        assert parse_public_key(text) == expected
