"""Table-driven tests of the pure chain builder (workers/trust/chain.py) and its cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from schemas.identity import AgentIdentity
from schemas.trust import (
    PATH_LEN_UNLIMITED,
    PURPOSE_CA,
    PURPOSE_PAYMENT,
    PURPOSE_VERIFIER,
    StoredCert,
    TrustAnchor,
    TrustCertificate,
    issue,
)
from workers.trust import chain
from workers.trust.chain import ChainCache, ChainResult, build_chain, validate_from_state

NOW = 1_700_000_000_000
DAY = 86_400_000


def ident(name: str) -> AgentIdentity:
    return AgentIdentity.from_seed(name.encode().ljust(32, b"."))


ROOT, ROOT2, I1, I2, A, B, LEAF, EVIL = (
    ident(n) for n in ("root", "root2", "i1", "i2", "a", "b", "leaf", "evil")
)
CA = (PURPOSE_CA, PURPOSE_PAYMENT)


def cert(
    issuer: AgentIdentity,
    subject: AgentIdentity,
    serial: str,
    *,
    purposes: tuple[str, ...] = CA,
    path_len: int = PATH_LEN_UNLIMITED,
    nb: int = NOW - DAY,
    na: int = NOW + DAY,
) -> TrustCertificate:
    return issue(
        issuer,
        serial=serial,
        subject_key=subject.public_key,
        not_before_ms=nb,
        not_after_ms=na,
        purposes=purposes,
        path_len=path_len,
    )


def leaf_cert(issuer: AgentIdentity = I2, serial: str = "leaf", **kw: Any) -> TrustCertificate:
    kw.setdefault("purposes", (PURPOSE_PAYMENT,))
    kw.setdefault("path_len", 0)
    return cert(issuer, LEAF, serial, **kw)


@dataclass
class World:
    certs: list[TrustCertificate] = field(
        default_factory=lambda: [leaf_cert(), cert(I1, I2, "i2"), cert(ROOT, I1, "i1")]
    )
    anchors: list[bytes] = field(default_factory=lambda: [ROOT.public_key])
    kwargs: dict[str, Any] = field(default_factory=dict)
    purpose: str = PURPOSE_PAYMENT

    def run(self) -> ChainResult:
        return build_chain(
            LEAF.public_key,
            self.certs,
            self.anchors,
            purpose=self.purpose,
            now_ms=NOW,
            **self.kwargs,
        )

    def swap(self, serial: str, new: TrustCertificate) -> World:
        self.certs = [new if c.serial == serial else c for c in self.certs]
        return self


def refuse(key: bytes) -> Callable[[bytes], str | None]:
    return lambda k: "revoked by key manager" if k == key else None


def _bad_sig(c: TrustCertificate) -> TrustCertificate:
    return replace(c, sig=bytes([c.sig[0] ^ 1]) + c.sig[1:])


@dataclass(frozen=True)
class Row:
    name: str
    setup: Callable[[World], World]
    ok: bool
    code: str | None = None
    link: int | None = None
    path: tuple[str, ...] | None = None


def _loop(w: World) -> World:
    # leaf <- A, A <- B, B <- A (cross-signed loop), and B <- ROOT elsewhere.
    w.certs = [leaf_cert(A), cert(B, A, "a-by-b"), cert(A, B, "b-by-a"), cert(ROOT, B, "b-by-root")]
    return w


def _loop_only(w: World) -> World:
    w.certs = [leaf_cert(A), cert(B, A, "a-by-b"), cert(A, B, "b-by-a")]
    return w


def _long_chain(n: int) -> Callable[[World], World]:
    """A chain of n + 1 certificates: leaf <- k0 <- ... <- k(n-1) <- ROOT."""

    def setup(w: World) -> World:
        keys = [ident(f"chain{i}") for i in range(n)]
        w.certs = [leaf_cert(keys[0])]
        for i in range(n - 1):
            w.certs.append(cert(keys[i + 1], keys[i], f"c{i}"))
        w.certs.append(cert(ROOT, keys[-1], f"c{n - 1}"))
        return w

    return setup


def _two_paths_first_bad(w: World) -> World:
    # I2 has two issuers: "a-i2" (sorted first) via A whose own cert expired, and "i2" via I1.
    w.certs += [cert(A, I2, "a-i2"), cert(ROOT, A, "a", na=NOW - 1)]
    return w


def _two_leaf_certs_first_bad_sig(w: World) -> World:
    w.certs.append(_bad_sig(leaf_cert(serial="aaa-leaf")))
    return w


def _wide(w: World) -> World:
    # 40 issuers for the leaf, none reaches an anchor: each needs a signature check.
    w.certs = [leaf_cert(ident(f"w{i}"), serial=f"w{i:02d}") for i in range(40)]
    w.kwargs["max_signature_checks"] = 10
    return w


ROWS = [
    Row("valid", lambda w: w, True, path=("leaf", "i2", "i1")),
    Row(
        "valid-direct-from-anchor",
        lambda w: setattr(w, "anchors", [I2.public_key]) or w,
        True,
        path=("leaf",),
    ),
    Row(
        "expired-middle-link",
        lambda w: w.swap("i2", cert(I1, I2, "i2", na=NOW)),
        False,
        chain.CHAIN_EXPIRED,
        1,
    ),
    Row(
        "not-yet-valid-top",
        lambda w: w.swap("i1", cert(ROOT, I1, "i1", nb=NOW + 1)),
        False,
        chain.CHAIN_NOT_YET_VALID,
        2,
    ),
    Row(
        "expired-leaf",
        lambda w: w.swap("leaf", leaf_cert(na=NOW - 5)),
        False,
        chain.CHAIN_EXPIRED,
        0,
    ),
    Row(
        "valid-at-not-before",
        lambda w: w.swap("leaf", leaf_cert(nb=NOW)),
        True,
        path=("leaf", "i2", "i1"),
    ),
    Row("cross-signed-loop-then-anchor", _loop, True, path=("leaf", "a-by-b", "b-by-root")),
    Row("cross-signed-loop-only", _loop_only, False, chain.CHAIN_LOOP, 2),
    Row(
        "self-signed-leaf",
        lambda w: setattr(w, "certs", [leaf_cert(LEAF)]) or w,
        False,
        chain.CHAIN_LOOP,
        0,
    ),
    Row(
        "path-too-long",
        lambda w: w.swap("i1", cert(ROOT, I1, "i1", path_len=0)),
        False,
        chain.CHAIN_PATH_LENGTH,
        2,
    ),
    Row(
        "path-len-exactly-enough",
        lambda w: w.swap("i1", cert(ROOT, I1, "i1", path_len=1)),
        True,
        path=("leaf", "i2", "i1"),
    ),
    Row(
        "leaf-wrong-purpose",
        lambda w: w.swap("leaf", leaf_cert(purposes=(PURPOSE_VERIFIER,))),
        False,
        chain.CHAIN_PURPOSE,
        0,
    ),
    Row(
        "intermediate-not-ca",
        lambda w: w.swap("i2", cert(I1, I2, "i2", purposes=(PURPOSE_PAYMENT,))),
        False,
        chain.CHAIN_PURPOSE,
        1,
    ),
    Row(
        "intermediate-lacks-purpose",
        lambda w: w.swap("i1", cert(ROOT, I1, "i1", purposes=(PURPOSE_CA, PURPOSE_VERIFIER))),
        False,
        chain.CHAIN_PURPOSE,
        2,
    ),
    Row(
        "revoked-intermediate-serial",
        lambda w: w.kwargs.update(revoked_serials={"i2": "key compromise"}) or w,
        False,
        chain.CHAIN_REVOKED,
        1,
    ),
    Row(
        "revoked-intermediate-key",
        lambda w: w.kwargs.update(key_refusal=refuse(I1.public_key)) or w,
        False,
        chain.CHAIN_REVOKED,
        1,
    ),
    Row(
        "revoked-anchor-key",
        lambda w: w.kwargs.update(key_refusal=refuse(ROOT.public_key)) or w,
        False,
        chain.CHAIN_REVOKED,
        2,
    ),
    Row(
        "revoked-leaf-key",
        lambda w: w.kwargs.update(key_refusal=refuse(LEAF.public_key)) or w,
        False,
        chain.CHAIN_REVOKED,
        0,
    ),
    Row(
        "bad-signature-middle",
        lambda w: w.swap("i2", _bad_sig(cert(I1, I2, "i2"))),
        False,
        chain.CHAIN_SIGNATURE,
        1,
    ),
    Row(
        "signed-by-wrong-key",
        lambda w: w.swap("i1", replace(cert(EVIL, I1, "i1"), issuer_key=ROOT.public_key)),
        False,
        chain.CHAIN_SIGNATURE,
        2,
    ),
    Row(
        "budget-exhausted",
        lambda w: w.kwargs.update(max_signature_checks=2) or w,
        False,
        chain.CHAIN_BUDGET,
        2,
    ),
    Row(
        "budget-exactly-enough",
        lambda w: w.kwargs.update(max_signature_checks=3) or w,
        True,
        path=("leaf", "i2", "i1"),
    ),
    Row("budget-wide-fanout", _wide, False, chain.CHAIN_BUDGET, 0),
    Row("depth-exceeded", _long_chain(11 - 1), False, chain.CHAIN_DEPTH, 10),
    Row("depth-exactly-max", _long_chain(10 - 1), True),
    Row("depth-custom", lambda w: w.kwargs.update(max_depth=2) or w, False, chain.CHAIN_DEPTH, 2),
    Row(
        "no-anchor",
        lambda w: setattr(w, "anchors", [ROOT2.public_key]) or w,
        False,
        chain.CHAIN_NO_ANCHOR,
        3,
    ),
    Row(
        "no-certificate-for-leaf",
        lambda w: setattr(w, "certs", []) or w,
        False,
        chain.CHAIN_NO_ANCHOR,
        0,
    ),
    Row("first-branch-bad-second-good", _two_paths_first_bad, True, path=("leaf", "i2", "i1")),
    Row(
        "first-leaf-cert-bad-signature",
        _two_leaf_certs_first_bad_sig,
        True,
        path=("leaf", "i2", "i1"),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_build_chain(row: Row) -> None:
    result = row.setup(World()).run()
    assert result.ok is row.ok, result
    assert result.code == row.code
    assert result.failed_link == row.link
    if row.link is not None:
        assert result.reason.startswith(f"link {row.link}:"), result.reason
        assert result.path == ()
    if row.path is not None:
        assert tuple(c.serial for c in result.path) == row.path
    if result.ok:
        assert result.path[0].subject_key == LEAF.public_key
        for lower, upper in zip(result.path, result.path[1:], strict=False):
            assert lower.issuer_key == upper.subject_key


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_deterministic_whatever_the_candidate_order(row: Row) -> None:
    world = row.setup(World())
    first = world.run()
    world.certs = list(reversed(world.certs))
    assert world.run() == first


def test_signatures_checked_once_per_certificate() -> None:
    world = World()
    world.certs = world.certs * 3  # duplicates count once
    result = world.run()
    assert result.ok and result.signature_checks == 3


def test_expires_at_the_earliest_not_after() -> None:
    world = World().swap("i2", cert(I1, I2, "i2", na=NOW + 500, nb=NOW - 7))
    result = world.run()
    assert result.ok
    assert result.expires_ms == NOW + 500
    assert result.valid_from_ms == NOW - 7


def test_result_map_round_trips_the_path() -> None:
    result = World().run()
    wire = result.to_map()
    assert [TrustCertificate.decode(raw) for raw in wire["path"]] == list(result.path)
    assert wire["ok"] is True and wire["code"] is None


# ------------------------------------------------------------------ from state
def _items(world: World, revoked: dict[str, str] | None = None) -> dict[str, object]:
    items: dict[str, object] = {
        f"anchor.{k.hex()}": TrustAnchor(k, "root", 1) for k in world.anchors
    }
    for c in world.certs:
        reason = (revoked or {}).get(c.serial)
        items[f"cert.{c.serial}"] = StoredCert(c, reason is not None, reason or "")
    items["key.00"] = b"someone else's record"
    return items


def test_validate_from_state_valid() -> None:
    result = validate_from_state(
        _items(World()), LEAF.public_key, [], PURPOSE_PAYMENT, NOW, chain.no_refusal
    )
    assert result.ok and len(result.path) == 3


def test_validate_from_state_revoked_record() -> None:
    result = validate_from_state(
        _items(World(), {"i1": "compromised"}),
        LEAF.public_key,
        [],
        PURPOSE_PAYMENT,
        NOW,
        chain.no_refusal,
    )
    assert (result.code, result.failed_link) == (chain.CHAIN_REVOKED, 2)
    assert "compromised" in result.reason


def test_presented_certificate_with_a_revoked_serial_is_revoked() -> None:
    world = World()
    items = _items(world, {"i2": "compromised"})
    presented = [cert(I1, I2, "i2").encode()]  # the same certificate, carried by the request
    result = validate_from_state(
        items, LEAF.public_key, presented, PURPOSE_PAYMENT, NOW, chain.no_refusal
    )
    assert (result.code, result.failed_link) == (chain.CHAIN_REVOKED, 1)


def test_presented_certificates_complete_a_chain() -> None:
    world = World()
    leaf = world.certs[0]
    items = _items(dataclasses.replace(world, certs=world.certs[1:]))
    assert not validate_from_state(items, LEAF.public_key, [], PURPOSE_PAYMENT, NOW).ok
    result = validate_from_state(items, LEAF.public_key, [leaf.encode()], PURPOSE_PAYMENT, NOW)
    assert result.ok and result.path[0] == leaf


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x80", leaf_cert().encode()[:-3]])
def test_malformed_presented_certificate(raw: bytes) -> None:
    result = validate_from_state(_items(World()), LEAF.public_key, [raw], PURPOSE_PAYMENT, NOW)
    assert (result.ok, result.code, result.failed_link) == (False, chain.CHAIN_MALFORMED, None)


# ------------------------------------------------------------------ cache
def test_cache_hit_within_validity() -> None:
    cache = ChainCache()
    result = World().swap("i2", cert(I1, I2, "i2", na=NOW + 100)).run()
    cache.put(7, LEAF.public_key, PURPOSE_PAYMENT, [], result)
    assert cache.get(7, LEAF.public_key, PURPOSE_PAYMENT, [], NOW) is result
    assert cache.get(7, LEAF.public_key, PURPOSE_PAYMENT, [], NOW + 99) is result
    assert cache.hits == 2


@pytest.mark.parametrize(
    ("now", "hit"),
    [(NOW + 99, True), (NOW + 100, False), (NOW + 10 * DAY, False), (NOW - DAY - 1, False)],
)
def test_cache_expires_at_earliest_not_after(now: int, hit: bool) -> None:
    cache = ChainCache()
    result = World().swap("i2", cert(I1, I2, "i2", na=NOW + 100)).run()
    cache.put(7, LEAF.public_key, PURPOSE_PAYMENT, [], result)
    assert (cache.get(7, LEAF.public_key, PURPOSE_PAYMENT, [], now) is not None) is hit


def test_cache_invalidated_by_revision() -> None:
    cache = ChainCache()
    result = World().run()
    cache.put(7, LEAF.public_key, PURPOSE_PAYMENT, [], result)
    assert cache.get(8, LEAF.public_key, PURPOSE_PAYMENT, [], NOW) is None
    assert len(cache) == 0
    assert cache.get(7, LEAF.public_key, PURPOSE_PAYMENT, [], NOW) is None  # gone for good


@pytest.mark.parametrize(
    ("purpose", "presented"), [(PURPOSE_VERIFIER, ()), (PURPOSE_PAYMENT, (b"x",))]
)
def test_cache_keyed_by_purpose_and_presented(purpose: str, presented: tuple[bytes, ...]) -> None:
    cache = ChainCache()
    cache.put(1, LEAF.public_key, PURPOSE_PAYMENT, [], World().run())
    assert cache.get(1, LEAF.public_key, purpose, presented, NOW) is None


def test_cache_keeps_no_failures_and_is_bounded() -> None:
    cache = ChainCache(max_entries=2)
    bad = World().swap("leaf", leaf_cert(na=NOW)).run()
    cache.put(1, LEAF.public_key, PURPOSE_PAYMENT, [], bad)
    assert len(cache) == 0
    good = World().run()
    for i in range(3):
        cache.put(1, bytes([i]) * 32, PURPOSE_PAYMENT, [], good)
    assert len(cache) == 2
    assert cache.get(1, bytes([0]) * 32, PURPOSE_PAYMENT, [], NOW) is None
    assert cache.get(1, bytes([2]) * 32, PURPOSE_PAYMENT, [], NOW) is good


@pytest.mark.parametrize("refused", [LEAF, I2, I1, ROOT])
def test_cache_hit_rechecks_key_refusal(refused: AgentIdentity) -> None:
    cache = ChainCache()
    cache.put(1, LEAF.public_key, PURPOSE_PAYMENT, [], World().run())
    assert cache.get(1, LEAF.public_key, PURPOSE_PAYMENT, [], NOW, chain.no_refusal)
    assert (
        cache.get(1, LEAF.public_key, PURPOSE_PAYMENT, [], NOW, refuse(refused.public_key)) is None
    )
    assert len(cache) == 0


# ------------------------------------------------------------------ index
def test_index_is_reused_and_presented_certificates_do_not_leak_into_it() -> None:
    world = World()
    index = chain.TrustIndex.from_state(_items(dataclasses.replace(world, certs=world.certs[1:])))
    before = dict(index.by_subject)
    leaf = world.certs[0].encode()
    assert index.validate(LEAF.public_key, [leaf], PURPOSE_PAYMENT, NOW).ok
    assert not index.validate(LEAF.public_key, [], PURPOSE_PAYMENT, NOW).ok
    assert dict(index.by_subject) == before


def test_presented_duplicate_of_a_stored_certificate_counts_once() -> None:
    world = World()
    index = chain.TrustIndex.from_state(_items(world))
    result = index.validate(
        LEAF.public_key, [c.encode() for c in world.certs], PURPOSE_PAYMENT, NOW
    )
    assert result.ok and result.signature_checks == 3


def test_index_matches_build_chain_on_every_row() -> None:
    for row in ROWS:
        world = row.setup(World())
        index = chain.TrustIndex.build(
            world.certs, world.anchors, world.kwargs.get("revoked_serials", ())
        )
        kwargs = {k: v for k, v in world.kwargs.items() if k != "revoked_serials"}
        assert (
            index.search(LEAF.public_key, purpose=world.purpose, now_ms=NOW, **kwargs)
            == world.run()
        ), row.name


def test_raise_for_failure() -> None:
    good = World().run()
    assert good.raise_for_failure() is good
    bad = World().swap("leaf", leaf_cert(na=NOW)).run()
    with pytest.raises(chain.ChainInvalid) as info:
        bad.raise_for_failure()
    assert info.value.code == chain.CHAIN_EXPIRED and "link 0" in str(info.value)
