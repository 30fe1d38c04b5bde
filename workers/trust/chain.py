"""Trust-chain building: pure, deterministic, no I/O.

:func:`build_chain` searches depth-first from a leaf key towards any trust
anchor over candidate certificates (those a request presents plus the stored
ones). A path is ``(c0, c1, ..., ck)`` where ``c0`` certifies the leaf key,
``c(i+1)`` certifies the issuer of ``ci``, and the issuer of ``ck`` is an
anchor. "Link i" is certificate ``ci``. Every link is checked, at one fixed
``now_ms``:

  * revocation: the certificate's serial is not revoked, and neither its
    subject nor its issuer key is refused by ``key_refusal`` (the key
    manager's status) — so a revoked certificate or key breaks every chain
    through it;                                                  CHAIN_REVOKED
  * validity window ``not_before_ms <= now_ms < not_after_ms``;  CHAIN_NOT_YET_VALID /
                                                                 CHAIN_EXPIRED
  * purpose: the leaf carries the purpose asked for; every link above it
    carries ``ca`` and that purpose;                             CHAIN_PURPOSE
  * path length: link i (i >= 1) has i - 1 intermediates below it, which must
    not exceed its ``path_len`` (-1 = unlimited);                CHAIN_PATH_LENGTH
  * cycles by *key*: an issuer key already on the path (a self-signed
    certificate, or A signs B signs A under different serials) is a loop; CHAIN_LOOP
  * depth: at most ``max_depth`` certificates (default 10);       CHAIN_DEPTH
  * the signature, last (the expensive check), within a budget of
    ``max_signature_checks`` per call (each distinct certificate is
    verified at most once per call);                             CHAIN_SIGNATURE /
                                                                 CHAIN_BUDGET
  * a dead end (an issuer that is neither an anchor nor certified) CHAIN_NO_ANCHOR

The budget also bounds the certificates *examined* (``STEPS_PER_CHECK`` per
allowed signature check), since memoised signatures alone would not stop a
crafted graph from making the search exponential.

When no path works, the result reports the failure that got *furthest* (the
highest link index; the first one found among equals), naming that link and
the reason. Candidates are tried in a fixed order (serial, then bytes), so
the same inputs always give the same result. An exhausted budget stops the
whole search at once.

:class:`ChainCache` remembers successful results keyed by the state revision
and expiring at the earliest ``not_after_ms`` of the path, so a cached answer
can outlive neither a validity window nor a revocation (a revocation changes
the state revision).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ChainInvalid, CodecError
from schemas.trust import (
    ANCHOR_AREA,
    CERT_AREA,
    PATH_LEN_UNLIMITED,
    PURPOSE_CA,
    StoredCert,
    TrustAnchor,
    TrustCertificate,
)

DEFAULT_MAX_DEPTH = 10
DEFAULT_MAX_SIGNATURE_CHECKS = 64
#: Certificates examined (cheap checks included) per allowed signature check:
#: memoised signatures must not let a crafted graph make the search exponential.
STEPS_PER_CHECK = 8

CHAIN_EXPIRED = "CHAIN_EXPIRED"
CHAIN_NOT_YET_VALID = "CHAIN_NOT_YET_VALID"
CHAIN_SIGNATURE = "CHAIN_SIGNATURE"
CHAIN_LOOP = "CHAIN_LOOP"
CHAIN_PATH_LENGTH = "CHAIN_PATH_LENGTH"
CHAIN_PURPOSE = "CHAIN_PURPOSE"
CHAIN_REVOKED = "CHAIN_REVOKED"
CHAIN_BUDGET = "CHAIN_BUDGET"
CHAIN_DEPTH = "CHAIN_DEPTH"
CHAIN_NO_ANCHOR = "CHAIN_NO_ANCHOR"
CHAIN_MALFORMED = "CHAIN_MALFORMED"

KeyRefusal = Callable[[bytes], "str | None"]


def no_refusal(public_key: bytes) -> str | None:
    """A ``key_refusal`` that refuses nothing (no key manager status at hand)."""
    return None


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    code: str | None
    reason: str
    failed_link: int | None
    path: tuple[TrustCertificate, ...] = ()
    signature_checks: int = 0

    @property
    def expires_ms(self) -> int | None:
        """The earliest not_after of the path: when this answer stops being true."""
        return min((c.not_after_ms for c in self.path), default=None) if self.ok else None

    @property
    def valid_from_ms(self) -> int | None:
        return max((c.not_before_ms for c in self.path), default=None) if self.ok else None

    def raise_for_failure(self) -> ChainResult:
        """Return self if ok, else raise ChainInvalid carrying this result's code and reason."""
        if not self.ok:
            raise ChainInvalid(self.reason, code=self.code)
        return self

    def to_map(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "code": self.code,
            "reason": self.reason,
            "failed_link": self.failed_link,
            "path": [c.encode() for c in self.path],
            "signature_checks": self.signature_checks,
            "expires_ms": self.expires_ms,
        }


class _BudgetExhausted(Exception):
    def __init__(self, link: int) -> None:
        super().__init__(link)
        self.link = link


@dataclass
class _Search:
    anchors: frozenset[bytes]
    lookup: Callable[[bytes], tuple[TrustCertificate, ...]]
    revoked: Mapping[str, str]
    key_refusal: KeyRefusal
    purpose: str
    now_ms: int
    max_depth: int
    budget: int
    checks: int = 0
    steps: int = 0
    max_steps: int = 0
    verified: dict[TrustCertificate, bool] = field(default_factory=dict)
    best: ChainResult | None = None

    def fail(self, link: int, code: str, reason: str) -> None:
        if self.best is None or (self.best.failed_link or 0) < link:
            self.best = ChainResult(False, code, f"link {link}: {reason}", link)

    def refused(self, key: bytes) -> str | None:
        reason = self.key_refusal(key)
        return None if reason is None else f"key {key.hex()[:16]}… refused: {reason}"

    def check_link(self, cert: TrustCertificate, link: int, on_path: set[bytes]) -> bool:
        """Everything about one certificate but its signature; records a failure."""
        name = f"certificate {cert.serial!r}"
        if cert.issuer_key in on_path:
            self.fail(
                link,
                CHAIN_LOOP,
                f"{name} is issued by key {cert.issuer_key.hex()[:16]}… "
                "already on the path (cycle)",
            )
            return False
        if cert.serial in self.revoked:
            self.fail(link, CHAIN_REVOKED, f"{name} is revoked: {self.revoked[cert.serial]}")
            return False
        for key in (cert.subject_key, cert.issuer_key):
            refusal = self.refused(key)
            if refusal is not None:
                self.fail(link, CHAIN_REVOKED, f"{name}: {refusal}")
                return False
        if self.now_ms < cert.not_before_ms:
            self.fail(
                link,
                CHAIN_NOT_YET_VALID,
                f"{name} is not valid before {cert.not_before_ms} (now {self.now_ms})",
            )
            return False
        if self.now_ms >= cert.not_after_ms:
            self.fail(
                link, CHAIN_EXPIRED, f"{name} expired at {cert.not_after_ms} (now {self.now_ms})"
            )
            return False
        if self.purpose not in cert.purposes:
            self.fail(
                link,
                CHAIN_PURPOSE,
                f"{name} does not carry purpose {self.purpose!r} (has {', '.join(cert.purposes)})",
            )
            return False
        if link >= 1:
            if PURPOSE_CA not in cert.purposes:
                self.fail(
                    link,
                    CHAIN_PURPOSE,
                    f"{name} issued link {link - 1} but does not carry purpose {PURPOSE_CA!r}",
                )
                return False
            if cert.path_len != PATH_LEN_UNLIMITED and link - 1 > cert.path_len:
                self.fail(
                    link,
                    CHAIN_PATH_LENGTH,
                    f"{name} allows {cert.path_len} intermediate(s) below it, "
                    f"the path has {link - 1}",
                )
                return False
        if link >= self.max_depth:
            self.fail(link, CHAIN_DEPTH, f"the path would exceed {self.max_depth} certificates")
            return False
        return True

    def signature(self, cert: TrustCertificate, link: int) -> bool:
        known = self.verified.get(cert)
        if known is not None:
            return known
        if self.checks >= self.budget:
            raise _BudgetExhausted(link)
        self.checks += 1
        ok = cert.signature_ok()
        self.verified[cert] = ok
        if not ok:
            self.fail(
                link,
                CHAIN_SIGNATURE,
                f"certificate {cert.serial!r}: signature does not "
                f"verify under issuer {cert.issuer_key.hex()[:16]}…",
            )
        return ok

    def search(
        self, key: bytes, path: list[TrustCertificate], on_path: set[bytes]
    ) -> tuple[TrustCertificate, ...] | None:
        link = len(path)
        candidates = self.lookup(key)
        if not candidates:
            what = "the leaf key" if link == 0 else f"issuer of link {link - 1}"
            self.fail(
                link,
                CHAIN_NO_ANCHOR,
                f"{what} {key.hex()[:16]}… is not an anchor and has no certificate",
            )
            return None
        for cert in candidates:
            self.steps += 1
            if self.steps > self.max_steps:
                raise _BudgetExhausted(link)
            if not self.check_link(cert, link, on_path):
                continue
            if not self.signature(cert, link):
                continue
            path.append(cert)
            if cert.issuer_key in self.anchors:  # its refusal was checked with the link
                return tuple(path)
            else:
                on_path.add(cert.issuer_key)
                found = self.search(cert.issuer_key, path, on_path)
                if found is not None:
                    return found
                on_path.discard(cert.issuer_key)
            path.pop()
        return None


def _order(cert: TrustCertificate) -> tuple[Any, ...]:
    """Total order on certificates (every field), so the search order is input-independent."""
    return (
        cert.serial,
        cert.sig,
        cert.subject_key,
        cert.issuer_key,
        cert.not_before_ms,
        cert.not_after_ms,
        cert.purposes,
        cert.path_len,
    )


def _group(certs: Iterable[TrustCertificate]) -> dict[bytes, tuple[TrustCertificate, ...]]:
    groups: dict[bytes, set[TrustCertificate]] = {}
    for cert in certs:
        groups.setdefault(cert.subject_key, set()).add(cert)  # equal certificates count once
    return {key: tuple(sorted(group, key=_order)) for key, group in groups.items()}


@dataclass(frozen=True)
class TrustIndex:
    """Anchors, candidate certificates by subject key, and revoked serials.

    Build it once per state revision (:meth:`from_state`) and validate many
    requests against it; certificates a request presents are merged in per
    lookup, never into the index.
    """

    anchors: frozenset[bytes] = frozenset()
    by_subject: Mapping[bytes, tuple[TrustCertificate, ...]] = field(default_factory=dict)
    revoked: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        candidates: Iterable[TrustCertificate],
        anchors: Iterable[bytes],
        revoked_serials: Mapping[str, str] | Iterable[str] = (),
    ) -> TrustIndex:
        revoked = (
            dict(revoked_serials)
            if isinstance(revoked_serials, Mapping)
            else {s: "revoked" for s in revoked_serials}
        )
        return cls(frozenset(anchors), _group(candidates), revoked)

    @classmethod
    def from_state(cls, items: Mapping[str, object]) -> TrustIndex:
        """From state-bucket records decoded by ``decode_state_record`` (other areas ignored).

        A revoked certificate stays a candidate so that the error names the revoked link.
        """
        anchors: list[bytes] = []
        candidates: list[TrustCertificate] = []
        revoked: dict[str, str] = {}
        for key, record in items.items():
            area = key.partition(".")[0]
            if area == ANCHOR_AREA and isinstance(record, TrustAnchor):
                anchors.append(record.public_key)
            elif area == CERT_AREA and isinstance(record, StoredCert):
                if record.revoked:
                    revoked[record.cert.serial] = record.reason or "revoked"
                candidates.append(record.cert)
        return cls.build(candidates, anchors, revoked)

    def validate(
        self,
        leaf_key: bytes,
        presented: Sequence[bytes],
        purpose: str,
        now_ms: int,
        key_refusal: KeyRefusal = no_refusal,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_signature_checks: int = DEFAULT_MAX_SIGNATURE_CHECKS,
    ) -> ChainResult:
        """Decode ``presented`` (encoded certificates; a malformed one is CHAIN_MALFORMED,
        failed_link None) and search with them merged into this index."""
        extra: list[TrustCertificate] = []
        for index, raw in enumerate(presented):
            try:
                extra.append(TrustCertificate.decode(raw))
            except CodecError as exc:
                return ChainResult(
                    False,
                    CHAIN_MALFORMED,
                    f"presented certificate {index} is malformed [{exc.code}]: {exc}",
                    None,
                )
        return self.search(
            leaf_key,
            extra,
            purpose=purpose,
            now_ms=now_ms,
            key_refusal=key_refusal,
            max_depth=max_depth,
            max_signature_checks=max_signature_checks,
        )

    def search(
        self,
        leaf_key: bytes,
        extra: Iterable[TrustCertificate] = (),
        *,
        purpose: str,
        now_ms: int,
        key_refusal: KeyRefusal = no_refusal,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_signature_checks: int = DEFAULT_MAX_SIGNATURE_CHECKS,
    ) -> ChainResult:
        """The depth-first search of the module doc over this index plus ``extra``."""
        added = _group(extra)
        base = self.by_subject

        def lookup(key: bytes) -> tuple[TrustCertificate, ...]:
            mine, theirs = base.get(key, ()), added.get(key)
            if not theirs:
                return mine
            return tuple(sorted(set(mine) | set(theirs), key=_order))

        search = _Search(
            anchors=self.anchors,
            lookup=lookup,
            revoked=self.revoked,
            key_refusal=key_refusal,
            purpose=purpose,
            now_ms=now_ms,
            max_depth=max_depth,
            budget=max_signature_checks,
            max_steps=STEPS_PER_CHECK * max_signature_checks,
        )
        refusal = search.refused(leaf_key)
        if refusal is not None:
            return ChainResult(False, CHAIN_REVOKED, f"link 0: leaf {refusal}", 0)
        try:
            path = search.search(leaf_key, [], {leaf_key})
        except _BudgetExhausted as exc:
            return ChainResult(
                False,
                CHAIN_BUDGET,
                f"link {exc.link}: budget of {max_signature_checks} signature "
                f"checks ({STEPS_PER_CHECK * max_signature_checks} certificates "
                "examined) exhausted",
                exc.link,
                signature_checks=search.checks,
            )
        if path is not None:
            return ChainResult(
                True,
                None,
                f"chain of {len(path)} certificate(s) to anchor {path[-1].issuer_key.hex()[:16]}…",
                None,
                path,
                search.checks,
            )
        assert search.best is not None
        best = search.best
        return ChainResult(
            False, best.code, best.reason, best.failed_link, signature_checks=search.checks
        )


def build_chain(
    leaf_key: bytes,
    candidates: Iterable[TrustCertificate],
    anchors: Iterable[bytes],
    *,
    purpose: str,
    now_ms: int,
    revoked_serials: Mapping[str, str] | Iterable[str] = (),
    key_refusal: KeyRefusal = no_refusal,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_signature_checks: int = DEFAULT_MAX_SIGNATURE_CHECKS,
) -> ChainResult:
    """Find a valid chain from ``leaf_key`` to any of ``anchors``; see the module doc.

    ``revoked_serials`` maps a revoked serial to its reason (an iterable of
    serials is accepted too). Equal candidates count once.
    """
    return TrustIndex.build(candidates, anchors, revoked_serials).search(
        leaf_key,
        purpose=purpose,
        now_ms=now_ms,
        key_refusal=key_refusal,
        max_depth=max_depth,
        max_signature_checks=max_signature_checks,
    )


# ------------------------------------------------------------------ from state
def validate_from_state(
    items: Mapping[str, object],
    leaf_key: bytes,
    presented: Sequence[bytes],
    purpose: str,
    now_ms: int,
    key_refusal: KeyRefusal = no_refusal,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_signature_checks: int = DEFAULT_MAX_SIGNATURE_CHECKS,
) -> ChainResult:
    """Validate against state-bucket records decoded by ``decode_state_record``.

    ``items`` maps state keys to decoded records (a BucketMirror's items):
    ``anchor.*`` -> TrustAnchor, ``cert.*`` -> StoredCert; other areas are
    ignored. ``presented`` are encoded certificates a request carries; a
    malformed one makes the result CHAIN_MALFORMED (failed_link None). A
    presented certificate whose serial is revoked in the state is revoked too.
    To validate many requests against one state, build a :class:`TrustIndex`
    once (``TrustIndex.from_state(items)``) and call its ``validate``.
    """
    return TrustIndex.from_state(items).validate(
        leaf_key,
        presented,
        purpose,
        now_ms,
        key_refusal,
        max_depth=max_depth,
        max_signature_checks=max_signature_checks,
    )


# ------------------------------------------------------------------ cache
class ChainCache:
    """Successful chain results, bounded, that cannot outlive validity or revocation.

    An entry is keyed by (state revision, leaf key, purpose, digest of the
    presented certificates) and is served only while ``valid_from_ms <= now
    < expires_ms`` of its path. A new state revision (any add, revoke or key
    status change) empties the cache. Failures are not cached (several are
    time-dependent and cheap to recompute once the budget is bounded).
    A hit re-asks ``key_refusal`` about the keys of its path.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self.revision = -1
        self._entries: OrderedDict[tuple[bytes, str, bytes], ChainResult] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(leaf_key: bytes, purpose: str, presented: Sequence[bytes]) -> tuple[bytes, str, bytes]:
        h = hashlib.sha256()
        for raw in presented:
            h.update(len(raw).to_bytes(4, "big") + raw)
        return (leaf_key, purpose, h.digest())

    def _at(self, revision: int) -> None:
        if revision != self.revision:
            self._entries.clear()
            self.revision = revision

    def get(
        self,
        revision: int,
        leaf_key: bytes,
        purpose: str,
        presented: Sequence[bytes],
        now_ms: int,
        key_refusal: KeyRefusal = no_refusal,
    ) -> ChainResult | None:
        """A cached success still true at ``now_ms``, else None.

        ``key_refusal`` is asked again for every key of the path on a hit, so a
        key status that changes with time alone (a key manager's expiry)
        cannot be outlived either.
        """
        self._at(revision)
        key = self._key(leaf_key, purpose, presented)
        result = self._entries.get(key)
        if result is not None:
            expires, valid_from = result.expires_ms, result.valid_from_ms
            assert expires is not None and valid_from is not None
            keys = [c.subject_key for c in result.path] + [result.path[-1].issuer_key]
            if now_ms >= expires or any(key_refusal(k) is not None for k in keys):
                del self._entries[key]
            elif valid_from <= now_ms:
                self._entries.move_to_end(key)
                self.hits += 1
                return result
        self.misses += 1
        return None

    def put(
        self,
        revision: int,
        leaf_key: bytes,
        purpose: str,
        presented: Sequence[bytes],
        result: ChainResult,
    ) -> None:
        self._at(revision)
        if not result.ok:
            return
        self._entries[self._key(leaf_key, purpose, presented)] = result
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
