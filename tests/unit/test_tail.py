"""The pure parts of bus/tail.py: stored headers, store times, server-copy marks."""

from __future__ import annotations

import pytest

from bus.tail import StoredMsg, _parse_headers, is_server_copy


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b"", {}),
        (b"NATS/1.0\r\n\r\n", {}),
        (b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n", {"KV-Operation": "DEL"}),
        # the first value of a repeated header wins
        (b"NATS/1.0\r\nA: 1\r\nA: 2\r\n\r\n", {"A": "1"}),
        (b"NATS/1.0\r\nNats-Subject: $KV.b.k\r\n\r\n", {"Nats-Subject": "$KV.b.k"}),
    ],
)
def test_stored_headers_parse(raw: bytes, headers: dict[str, str]) -> None:
    assert _parse_headers(raw) == headers


@pytest.mark.parametrize(
    ("headers", "copy"),
    [
        ({}, False),
        ({"KV-Operation": "DEL"}, False),
        ({"KV-Operation": "PURGE", "Nats-Rollup": "sub"}, False),  # nats-py's purge
        ({"KV-Operation": "DEL", "Nats-Stream": "KV_x"}, True),  # a direct-get answer
        ({"Nats-Sequence": "3"}, True),
    ],
)
def test_server_copies_are_told_by_their_stored_headers(
    headers: dict[str, str], copy: bool
) -> None:
    assert is_server_copy(headers) is copy


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2026-12-04T01:21:12Z", 1796347272.0),
        ("2026-12-04T01:21:12.52040112Z", 1796347272.52040112),
        ("", None),
        ("not a time", None),
    ],
)
def test_store_times(time: str, expected: float | None) -> None:
    got = StoredMsg(1, "s", b"", {}, time).timestamp()
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_operation_defaults_to_put() -> None:
    assert StoredMsg(1, "s", b"").operation == "PUT"
    assert StoredMsg(1, "s", b"", {"KV-Operation": "DEL"}).operation == "DEL"
