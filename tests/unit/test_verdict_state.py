"""The whole verdict through real state records of all three services (pure, no NATS):
key status, trust chain and authority policy as a verifier judges them."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import pytest

from schemas.authority import AuthorityRecord, QuorumPolicy, sign_endorsement
from schemas.errors import CodecError
from schemas.identity import AgentIdentity
from schemas.keys import KeyStatus
from schemas.messages import VerificationRequest
from schemas.trust import PURPOSE_CA, PURPOSE_PAYMENT, TrustAnchor, TrustCertRecord, issue
from workers.consensus.judge import judge
from workers.consensus.verdict_state import StateVerdicts, decode_state_record
from workers.trust.chain import ChainCache

NOW = 1_800_000_000_000
ROOT, CA, AGENT = AgentIdentity.generate(), AgentIdentity.generate(), AgentIdentity.generate()
BANK, AUDITOR = AgentIdentity.generate(), AgentIdentity.generate()
MESSAGE = b"pay 10 EUR to merchant-7"


def key_status(identity: AgentIdentity, **changes: object) -> KeyStatus:
    fields: dict[str, object] = dict(
        public_key=identity.public_key,
        name="agent-7",
        version=1,
        purpose="agent_identity",
        state="Enabled",
        verify_allowed=True,
        created_at_ms=NOW - 1000,
        expires_at_ms=0,
        revoked_at_ms=0,
        revoked_reason="",
        updated_at_ms=NOW - 1000,
        source_revision=1,
    )
    fields.update(changes)
    return KeyStatus(**fields)  # type: ignore[arg-type]


def cert(
    serial: str,
    issuer: AgentIdentity,
    subject: AgentIdentity,
    purposes: tuple[str, ...],
    *,
    not_after: int = NOW + 86_400_000,
) -> bytes:
    return issue(
        issuer,
        serial=serial,
        subject_key=subject.public_key,
        not_before_ms=NOW - 86_400_000,
        not_after_ms=not_after,
        purposes=purposes,
        path_len=1,
    ).encode()


CA_CERT = cert("ca-1", ROOT, CA, (PURPOSE_CA, PURPOSE_PAYMENT))
LEAF_CERT = cert("leaf-1", CA, AGENT, (PURPOSE_PAYMENT,))


def base_state() -> dict[str, bytes]:
    policy = QuorumPolicy(
        category="default", min_authorities=2, min_trust_level="Medium", threshold=Fraction(1, 2)
    )
    return {
        f"key.{AGENT.public_key.hex()}": key_status(AGENT).encode(),
        f"anchor.{ROOT.public_key.hex()}": TrustAnchor(ROOT.public_key, "root", NOW).encode(),
        "cert.ca-1": TrustCertRecord(CA_CERT).encode(),
        f"authority.{BANK.public_key.hex()}": AuthorityRecord(
            BANK.public_key, "bank", "High", True
        ).encode(),
        f"authority.{AUDITOR.public_key.hex()}": AuthorityRecord(
            AUDITOR.public_key, "auditor", "Medium", True
        ).encode(),
        "policy.default": policy.encode(),
    }


def endorse(*who: AgentIdentity, category: str = "travel") -> tuple[tuple[bytes, bytes], ...]:
    digest = hashlib.sha256(MESSAGE).digest()
    out = []
    for identity in who:
        e = sign_endorsement(identity, category, digest)
        out.append((e.authority_key, e.signature))
    return tuple(out)


def request(
    *,
    chain: tuple[bytes, ...] = (),
    category: str = "",
    endorsements: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    return VerificationRequest(
        request_id="r1",
        message=MESSAGE,
        signature=AGENT.sign(MESSAGE),
        public_key=AGENT.public_key,
        chain=chain,
        category=category,
        endorsements=endorsements,
    ).encode()


def judged(raw: bytes, **overrides: bytes | None) -> str:
    records = base_state()
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if value is None:
            records.pop(key, None)
        else:
            records[key] = value
    items = {k: decode_state_record(k, v) for k, v in records.items()}
    return judge(raw, StateVerdicts(items, 1), NOW).reason


AGENT_KEY = f"key__{AGENT.public_key.hex()}"
CASES = [
    ("plain request, enabled key", request(), {}, "OK"),
    (
        "revoked key",
        request(),
        {AGENT_KEY: key_status(AGENT, revoked_at_ms=NOW - 5, revoked_reason="leak").encode()},
        "KEY_REVOKED",
    ),
    (
        "disabled key",
        request(),
        {AGENT_KEY: key_status(AGENT, state="Disabled").encode()},
        "KEY_DISABLED",
    ),
    (
        "expired key",
        request(),
        {AGENT_KEY: key_status(AGENT, expires_at_ms=NOW - 1).encode()},
        "KEY_EXPIRED",
    ),
    (
        "retired version",
        request(),
        {AGENT_KEY: key_status(AGENT, verify_allowed=False).encode()},
        "KEY_VERSION_RETIRED",
    ),
    ("unmanaged key", request(), {AGENT_KEY: None}, "OK"),
    ("chain to the anchor", request(chain=(LEAF_CERT,)), {}, "OK"),
    (
        "chain, intermediate revoked",
        request(chain=(LEAF_CERT,)),
        {"cert__ca-1": TrustCertRecord(CA_CERT, True, "compromised", NOW - 1).encode()},
        "CHAIN_REVOKED:1",
    ),
    (
        "chain, no anchor",
        request(chain=(LEAF_CERT,)),
        {f"anchor__{ROOT.public_key.hex()}": None},
        "CHAIN_NO_ANCHOR:2",
    ),
    (
        "chain, expired leaf",
        request(chain=(cert("leaf-2", CA, AGENT, (PURPOSE_PAYMENT,), not_after=NOW - 1),)),
        {},
        "CHAIN_EXPIRED:0",
    ),
    (
        "chain, leaf key revoked",
        request(chain=(LEAF_CERT,)),
        {AGENT_KEY: key_status(AGENT, revoked_at_ms=NOW - 5).encode()},
        "KEY_REVOKED",
    ),
    ("chain, garbage certificate", request(chain=(b"\xc1",)), {}, "CHAIN_MALFORMED"),
    (
        "policy met (default)",
        request(category="travel", endorsements=endorse(BANK, AUDITOR)),
        {},
        "OK",
    ),
    (
        "policy: one endorsement twice",
        request(category="travel", endorsements=endorse(BANK, BANK)),
        {},
        "POLICY_NOT_MET",
    ),
    (
        "policy: endorsed for another category",
        request(category="travel", endorsements=endorse(BANK, AUDITOR, category="food")),
        {},
        "POLICY_NOT_MET",
    ),
    (
        "policy missing",
        request(category="travel", endorsements=endorse(BANK, AUDITOR)),
        {"policy__default": None},
        "POLICY_MISSING",
    ),
    (
        "policy: an endorser's key revoked by the key manager",
        request(category="travel", endorsements=endorse(BANK, AUDITOR)),
        {f"key__{BANK.public_key.hex()}": key_status(BANK, revoked_at_ms=NOW - 5).encode()},
        "POLICY_NOT_MET",
    ),
    (
        "governance category in a payment",
        request(
            category="policy-admin", endorsements=endorse(BANK, AUDITOR, category="policy-admin")
        ),
        {},
        "POLICY_GOVERNANCE_CATEGORY",
    ),
]


@pytest.mark.parametrize(
    ("raw", "overrides", "reason"), [pytest.param(r, o, e, id=name) for name, r, o, e in CASES]
)
def test_verdict(raw: bytes, overrides: dict[str, bytes | None], reason: str) -> None:
    assert judged(raw, **overrides) == reason


def test_a_revision_change_empties_the_chain_cache() -> None:
    cache = ChainCache()
    items = {k: decode_state_record(k, v) for k, v in base_state().items()}
    raw = request(chain=(LEAF_CERT,))
    assert judge(raw, StateVerdicts(items, 1, chain_cache=cache), NOW).reason == "OK"
    assert len(cache) == 1
    items["cert.ca-1"] = decode_state_record(
        "cert.ca-1", TrustCertRecord(CA_CERT, True, "compromised", NOW).encode()
    )
    assert judge(raw, StateVerdicts(items, 2, chain_cache=cache), NOW).reason == "CHAIN_REVOKED:1"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nope.x", b"\x80"),
        (f"key.{BANK.public_key.hex()}", key_status(AGENT).encode()),  # stored under another key
        ("policy.travel", base_state()["policy.default"]),
        ("anchor.00", b"\xc1"),
    ],
)
def test_malformed_or_misplaced_records_are_refused(key: str, value: bytes) -> None:
    with pytest.raises(CodecError):
        decode_state_record(key, value)


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        (f"key.{AGENT.public_key.hex()}", request(), "STATE_UNREADABLE"),
        ("cert.ca-1", request(chain=(LEAF_CERT,)), "STATE_UNREADABLE"),
        ("cert.ca-1", request(), "OK"),  # a plain request does not depend on trust records
        (
            "policy.default",
            request(category="travel", endorsements=endorse(BANK, AUDITOR)),
            "STATE_UNREADABLE",
        ),
    ],
)
def test_unreadable_records_fail_closed(key: str, raw: bytes, reason: str) -> None:
    """A record a newer writer (or corruption) made undecodable must never read as
    'no record, so allowed' — e.g. a revocation in a format this build cannot read."""
    from schemas.codec import Unreadable

    items: dict[str, object] = {k: decode_state_record(k, v) for k, v in base_state().items()}
    items[key] = Unreadable(key, "v2 record")
    assert judge(raw, StateVerdicts(items, 1), NOW).reason == reason
