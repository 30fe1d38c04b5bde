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

import bisect
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
from schemas.errors import CodecError, SchemaViolation
from schemas.keys import KeyState, KeyStatus, Refusal
from workers.authority.policy import evaluate, resolve_policy, split_state
from workers.trust.chain import ChainCache, TrustIndex

Decoder = Callable[[str, bytes], object]
#: Refusal when a record the check depends on could not be decoded (a newer
#: writer, corruption): failing closed, never "no record, so allowed".
UNREADABLE = "STATE_UNREADABLE"
POLICY_MEMO_SIZE = 4096
CHAIN_FAILURE_MEMO_SIZE = 4096

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


def _chain_digest(chain: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for raw in chain:
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.digest()


def _time_bounds(items: Mapping[str, object]) -> tuple[int, ...]:
    """Every time at which a chain check over ``items`` can change its answer: the
    validity bounds of stored certificates and the expiry of key statuses."""
    bounds: set[int] = set()
    for record in items.values():
        if isinstance(record, trust_schema.StoredCert):
            bounds.update((record.cert.not_before_ms, record.cert.not_after_ms))
        elif isinstance(record, KeyStatus) and record.expires_at_ms:
            bounds.add(record.expires_at_ms)
    return tuple(sorted(bounds))


def _presented_bounds(chain: Sequence[bytes]) -> list[int]:
    out: list[int] = []
    for raw in chain:
        try:
            cert = trust_schema.TrustCertificate.decode(raw)
        except CodecError:
            continue  # malformed: that failure does not depend on time
        out.extend((cert.not_before_ms, cert.not_after_ms))
    return out


class StateVerdicts:
    """``workers.consensus.judge.VerdictState`` over the decoded records of one revision.

    Build one per revision and reuse it for every ballot judged at that
    revision: the trust index and the authority registry are derived once.
    ``chain_cache`` (optional) keeps successful chains across ballots safely
    (it empties itself when the revision changes); failed chains are remembered
    here, for this revision, between the validity boundaries around the time
    they were judged at.
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
        self._time_bounds: tuple[int, ...] | None = None
        #: failed chains at this revision: (leaf, digest of the chain) -> (lo, hi, code),
        #: true for every judging time in [lo, hi) (no validity boundary inside)
        self._chain_failures: dict[tuple[bytes, bytes], tuple[int, int, str]] = {}
        self.chain_failure_hits = 0

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
        failure_key = (leaf_key, _chain_digest(chain))
        failed = self._chain_failures.get(failure_key)
        if failed is not None and failed[0] <= now_ms < failed[1]:
            self.chain_failure_hits += 1
            return failed[2]
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
        answer = code if result.failed_link is None else f"{code}:{result.failed_link}"
        # a failure is as costly to find as a success (signature checks): remember it
        # too, at this revision only and only between the validity boundaries around
        # ``now_ms``, so it can outlive neither a state change nor a time boundary
        lo, hi = self._interval(chain, now_ms)
        if len(self._chain_failures) >= CHAIN_FAILURE_MEMO_SIZE:
            self._chain_failures.clear()
        self._chain_failures[failure_key] = (lo, hi, answer)
        return answer

    def _interval(self, chain: Sequence[bytes], now_ms: int) -> tuple[int, int]:
        """The widest [lo, hi) around ``now_ms`` in which no certificate (of the state
        or presented) starts or stops being valid and no key status expires."""
        if self._time_bounds is None:
            self._time_bounds = _time_bounds(self.items)
        bounds = self._time_bounds
        extra = _presented_bounds(chain)
        at = bisect.bisect_right(bounds, now_ms)
        lo = max([bounds[at - 1] if at else -1, *(b for b in extra if b <= now_ms)])
        hi = min([bounds[at] if at < len(bounds) else 2**63, *(b for b in extra if b > now_ms)])
        return lo, hi

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
        # the same inputs (a flood, a ballot repeating a request) must not cost their
        # signature checks again: the evaluation depends on nothing else at one revision
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
