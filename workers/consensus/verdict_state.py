"""The verdict state as a verifier sees it: decoded records of ``{prefix}_state``.

Pure (no I/O): the verifier's BucketMirror decodes records with
``decode_state_record`` and judges every request of a ballot through one
``StateVerdicts`` built over the mirror's items at one revision. Each area's
record format and rules belong to the service that owns it; this module only
routes to them:

  key.*                  schemas/keys.py       KeyStatus.refusal(now)
  anchor.*, cert.*       schemas/trust.py      workers/trust/chain.py TrustIndex (purpose "payment")
  authority.*, policy.*  schemas/authority.py  workers/authority/policy.py evaluate
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from schemas import authority as authority_schema
from schemas import keys as keys_schema
from schemas import trust as trust_schema
from schemas.authority import (
    GOVERNANCE_CATEGORIES,
    AuthorityRecord,
    Endorsement,
    QuorumPolicy,
)
from schemas.codec import Deleted, Unreadable
from schemas.errors import SchemaViolation
from schemas.keys import KeyState, KeyStatus, Refusal
from workers.authority.policy import evaluate, resolve_policy, split_state
from workers.trust.chain import ChainCache, TrustIndex

Decoder = Callable[[str, bytes], object]
#: Refusal when a record the check depends on could not be decoded (a newer
#: writer, corruption): failing closed, never "no record, so allowed".
UNREADABLE = "STATE_UNREADABLE"
POLICY_MEMO_SIZE = 4096

#: state-bucket area -> decoder of its records (CodecError on malformed data)
DECODERS: dict[str, Decoder] = {
    "key": keys_schema.decode_state_record,
    "anchor": trust_schema.decode_state_record,
    "cert": trust_schema.decode_state_record,
    "authority": authority_schema.decode_state_record,
    "policy": authority_schema.decode_state_record,
}


def decode_state_record(key: str, value: bytes) -> object:
    area = key.split(".", 1)[0]
    decoder = DECODERS.get(area)
    if decoder is None:
        raise SchemaViolation(f"unknown verdict-state area {area!r}")
    return decoder(key, value)


def key_refusal(items: Mapping[str, object], public_key: bytes, now_ms: int) -> str | None:
    """The key manager's verdict on ``public_key`` at ``now_ms`` from decoded state records."""
    status = items.get(f"key.{public_key.hex()}")
    if isinstance(status, KeyStatus):
        return status.refusal(now_ms)
    if isinstance(status, Unreadable):
        return UNREADABLE  # fail closed: it may be a revocation we cannot read
    if isinstance(status, Deleted):
        # the key manager never deletes a status (it writes a terminal one): a
        # delete marker is an attack on a revocation, so it reads as one
        return Refusal.REVOKED.value
    return None  # a key the key manager never managed: its signature is the check


def _terminal(status: KeyStatus) -> bool:
    """Revoked or destroyed: no honest status ever follows these for the same key."""
    return status.revoked or status.state == KeyState.DESTROYED


def merge_state_record(key: str, current: object, new: object) -> object:
    """What the verifier's mirror keeps when ``new`` arrives over ``current`` for ``key``.

    Anyone who may send a JetStream API request can have the server write a copy of
    a stored message (an older "active" status, a delete marker) onto a key status
    subject, and the key manager's own user may write there: neither may revive a
    key. So, for ``key.*`` records, once a status is seen:

    * a status with a lower ``source_revision`` than the one kept is a replay: kept;
    * after a revoked or destroyed status, any status that is not terminal is kept
      out (revocation is final);
    * a delete marker stays a :class:`Deleted` tombstone (which reads as revoked).

    Other areas are taken as they come (their readers fail closed on absence).
    """
    if not key.startswith("key."):
        return new
    before = current.previous if isinstance(current, Deleted) else current
    if not isinstance(before, KeyStatus) or not isinstance(new, KeyStatus):
        return new
    if new.source_revision < before.source_revision:
        return current
    if _terminal(before) and not _terminal(new):
        return current
    return new


class StateVerdicts:
    """``workers.consensus.judge.VerdictState`` over the decoded records of one revision.

    Build one per revision and reuse it for every ballot judged at that
    revision: the trust index and the authority registry are derived once.
    ``chain_cache`` (optional) keeps successful chains across revisions safely
    (it empties itself when the revision changes).
    """

    def __init__(
        self,
        items: Mapping[str, object],
        revision: int = 0,
        *,
        chain_cache: ChainCache | None = None,
    ) -> None:
        self.items = items
        self.revision = revision
        self._chain_cache = chain_cache
        self._trust: TrustIndex | None = None
        self._authority: tuple[dict[bytes, AuthorityRecord], dict[str, QuorumPolicy]] | None = None
        self._unreadable_areas: frozenset[str] | None = None
        self._policy_memo: dict[tuple[str, bytes, tuple[tuple[bytes, bytes], ...]], str | None] = {}

    def key_refusal(self, public_key: bytes, now_ms: int) -> str | None:
        return key_refusal(self.items, public_key, now_ms)

    def _unreadable(self, *areas: str) -> bool:
        """Whether any record of these areas could not be decoded (then refuse)."""
        if self._unreadable_areas is None:
            self._unreadable_areas = frozenset(
                key.split(".", 1)[0]
                for key, value in self.items.items()
                if isinstance(value, Unreadable)
            )
        return any(area in self._unreadable_areas for area in areas)

    def chain_refusal(self, leaf_key: bytes, chain: Sequence[bytes], now_ms: int) -> str | None:
        def refusal(key: bytes) -> str | None:
            return self.key_refusal(key, now_ms)

        if self._unreadable("anchor", "cert"):
            return UNREADABLE
        purpose = trust_schema.PURPOSE_PAYMENT
        cache = self._chain_cache
        if (
            cache is not None
            and cache.get(self.revision, leaf_key, purpose, chain, now_ms, refusal) is not None
        ):
            return None
        if self._trust is None:
            self._trust = TrustIndex.from_state(self.items)
        result = self._trust.validate(leaf_key, chain, purpose, now_ms, refusal)
        if result.ok:
            if cache is not None:
                cache.put(self.revision, leaf_key, purpose, chain, result)
            return None
        code = result.code or "CHAIN_INVALID"
        return code if result.failed_link is None else f"{code}:{result.failed_link}"

    def policy_refusal(
        self,
        category: str,
        message: bytes,
        endorsements: Sequence[tuple[bytes, bytes]],
        now_ms: int,
    ) -> str | None:
        if category in GOVERNANCE_CATEGORIES:
            # governance endorsements approve registry and policy changes, never payments
            return "POLICY_GOVERNANCE_CATEGORY"
        if self._unreadable("authority", "policy"):
            return UNREADABLE
        if self._authority is None:
            self._authority = split_state(self.items)
        authorities, policies = self._authority
        # an authority whose key the key manager refuses (revoked, expired...) endorses nothing
        usable = tuple((k, s) for k, s in endorsements if self.key_refusal(k, now_ms) is None)
        # judged at two times (judge_at_both), the same inputs must not cost their
        # signature checks twice: the evaluation depends on nothing else at one revision
        memo_key = (category, hashlib.sha256(message).digest(), usable)
        if memo_key in self._policy_memo:
            return self._policy_memo[memo_key]
        result = evaluate(
            resolve_policy(policies, category),
            authorities,
            [Endorsement(authority_key=k, signature=s) for k, s in usable],
            category,
            memo_key[1],
        )
        code = None if result.ok else (result.code or "POLICY_NOT_MET")
        if len(self._policy_memo) >= POLICY_MEMO_SIZE:
            self._policy_memo.clear()
        self._policy_memo[memo_key] = code
        return code
