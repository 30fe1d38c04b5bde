"""AP_JS_REPLICAS: replicas of the streams and buckets the workers create."""

from __future__ import annotations

import pytest

from bus.config import js_replicas
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 1),
        ("", 1),
        ("1", 1),
        ("3", 3),
        (" 3 ", 3),
        ("5", 5),
        ("0", None),
        ("6", None),
        ("-1", None),
        ("three", None),
        ("2.5", None),
    ],
)
def test_js_replicas(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: int | None
) -> None:
    if raw is None:
        monkeypatch.delenv("AP_JS_REPLICAS", raising=False)
    else:
        monkeypatch.setenv("AP_JS_REPLICAS", raw)
    if expected is None:
        with pytest.raises(ConfigError, match="AP_JS_REPLICAS"):
            js_replicas()
    else:
        assert js_replicas() == expected
