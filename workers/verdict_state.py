"""The verdict state as a verifier sees it: decoded records of ``{prefix}_state``.

Pure (no I/O): the verifier's BucketMirror feeds ``decode_state_record`` and
judges every request of a ballot through one ``StateVerdicts`` over the
mirror's items at one revision. Each area's record format and rules belong to
the service that owns it (schemas/keys.py, schemas/trust.py,
schemas/authority.py); this module only routes to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from schemas.errors import SchemaViolation

Decoder = Callable[[str, bytes], object]

#: state-bucket area -> decoder of its records (CodecError on malformed data)
DECODERS: dict[str, Decoder] = {}


def decode_state_record(key: str, value: bytes) -> object:
    area = key.split(".", 1)[0]
    decoder = DECODERS.get(area)
    if decoder is None:
        raise SchemaViolation(f"unknown verdict-state area {area!r}")
    return decoder(key, value)


class StateVerdicts:
    """``workers.judge.VerdictState`` over the decoded records of one revision."""

    def __init__(self, items: Mapping[str, object]) -> None:
        self.items = items

    def key_refusal(self, public_key: bytes, now_ms: int) -> str | None:
        return None

    def chain_refusal(self, leaf_key: bytes, chain: Sequence[bytes],
                      now_ms: int) -> str | None:
        return "CHAIN_NO_ANCHOR"

    def policy_refusal(self, category: str, message: bytes,
                       endorsements: Sequence[tuple[bytes, bytes]],
                       now_ms: int) -> str | None:
        return "POLICY_MISSING"
