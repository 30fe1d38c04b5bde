"""One valid encoding of every message and record the project decodes.

The fuzz suites mutate these (a mutation of a valid encoding reaches much deeper
into a decoder than random bytes, which the codec refuses at the first byte).
Built deterministically from fixed seeds, with the project's own code, so a
sample is exactly what a worker would send or store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from schemas import alerts, authority, keys, pool, recovery, trust
from schemas.identity import AgentIdentity
from schemas.messages import (
    Ballot,
    ConsensusResult,
    ErrorReply,
    Heartbeat,
    MetricsSnapshot,
    VerificationRequest,
    Vote,
    WireMessage,
)

NETWORK = "ap"
T0 = 1_700_000_000_000
VECTOR = Path(__file__).resolve().parents[2] / "schemas" / "vectors" / "certificate-v3.json"


def identity(label: str) -> AgentIdentity:
    return AgentIdentity.from_seed(hashlib.sha256(f"fuzz {label}".encode()).digest())


AGENT = identity("agent")
SIGNER = identity("signer")
KEY_A = identity("a").public_key
KEY_B = identity("b").public_key
SIG = bytes(range(64))
DIGEST = hashlib.sha256(b"digest").digest()


@dataclass(frozen=True)
class Vector:
    """The certificate vector: a VALID certificate, its pool, and its raw parts."""

    certificate: bytes
    ballot: bytes
    votes: tuple[bytes, ...]
    requests: tuple[bytes, ...]
    pool_keys: tuple[bytes, ...]
    tally_key: bytes
    network: str
    request_id: str
    request_digest: bytes


def vector() -> Vector:
    data = json.loads(VECTOR.read_text())
    return Vector(
        certificate=bytes.fromhex(data["certificate_hex"]),
        ballot=bytes.fromhex(data["ballot"]["msgpack_hex"]),
        votes=tuple(bytes.fromhex(v) for v in data["votes_hex"]),
        requests=tuple(bytes.fromhex(r) for r in data["requests_hex"]),
        pool_keys=tuple(bytes.fromhex(k) for k in data["pool_keys_hex"]),
        tally_key=bytes.fromhex(data["tally_key_hex"]),
        network=data["network"],
        request_id=data["request_id"],
        request_digest=bytes.fromhex(data["request_digest_hex"]),
    )


def verification_requests() -> list[bytes]:
    message = b"pay 12.50 EUR to merchant-42"
    plain = VerificationRequest(
        request_id="req-fuzz",
        message=message,
        signature=AGENT.sign(message),
        public_key=AGENT.public_key,
    )
    full = VerificationRequest(
        request_id="req-fuzz-full",
        message=message,
        signature=AGENT.sign(message),
        public_key=AGENT.public_key,
        metadata={"merchant": "m-42", "amount": 1250, "rate": 1.5, "flag": True, "none": None},
        chain=(trust_certificate().encode(),),
        category="payments",
        endorsements=((KEY_A, SIG), (KEY_B, SIG)),
    )
    return [plain.encode(), full.encode()]


def key_requests() -> dict[str, bytes]:
    """A valid request of every key manager operation (schemas.keys.OPS)."""
    k = keys.KeyRequest
    name = "agent-1"
    return {
        "create": k(
            name=name, purpose="agent_identity", auto_rotate_period_s=60, deletion_allowed=True
        ).encode(),
        "rotate": k(name=name).encode(),
        "revoke": k(name=name, reason="lost", version=1).encode(),
        "disable": k(name=name).encode(),
        "enable": k(name=name).encode(),
        "delete": k(name=name).encode(),
        "get": k(name=name).encode(),
        "list": k().encode(),
        "sign": k(name=name, message=b"pay 1", version=2).encode(),
        "config": k(
            name=name, min_verify_version=2, min_sign_version=2, deletion_wait_s=9
        ).encode(),
        "sweep": k().encode(),
    }


def trust_certificate() -> trust.TrustCertificate:
    return trust.issue(
        SIGNER,
        serial="serial-1",
        subject_key=AGENT.public_key,
        not_before_ms=T0,
        not_after_ms=T0 + 86_400_000,
        purposes=("ca", "payment"),
        path_len=2,
    )


def key_record() -> keys.KeyRecord:
    return keys.KeyRecord(
        name="agent-1",
        purpose=keys.KeyPurpose.AGENT_IDENTITY.value,
        state=keys.KeyState.ENABLED.value,
        created_at_ms=T0,
        policy=keys.KeyPolicy(auto_rotate_period_ms=3_600_000, deletion_allowed=True),
        versions=(
            keys.KeyVersion(1, KEY_A, bytes(72), T0, 0, T0 + 5, "compromised"),
            keys.KeyVersion(2, KEY_B, bytes(72), T0 + 10, T0 + 99_999),
        ),
        deletion_due_ms=0,
        updated_at_ms=T0 + 10,
    )


def key_status() -> keys.KeyStatus:
    return keys.KeyStatus(
        public_key=KEY_A,
        name="agent-1",
        version=1,
        purpose="agent_identity",
        state="Enabled",
        verify_allowed=True,
        created_at_ms=T0,
        expires_at_ms=0,
        revoked_at_ms=T0 + 5,
        revoked_reason="compromised",
        updated_at_ms=T0 + 5,
        source_revision=3,
    )


def authority_record() -> authority.AuthorityRecord:
    return authority.AuthorityRecord(KEY_A, "bank", "High", True, 2)


def quorum_policy() -> authority.QuorumPolicy:
    return authority.QuorumPolicy(
        category="payments",
        min_authorities=2,
        min_trust_level="Medium",
        threshold=Fraction(2, 3),
        groups=(authority.PolicyGroup(1, "High", (KEY_A, KEY_B), "banks"),),
        serial=3,
    )


def endorsement() -> authority.Endorsement:
    return authority.sign_endorsement(SIGNER, "payments", DIGEST)


def recovery_attempt() -> recovery.RecoveryAttempt:
    return recovery.RecoveryAttempt(
        kind="verifier",
        worker_id="v1",
        attempt=1,
        dead_generation=T0,
        outcome=recovery.Outcome.RECOVERED.value,
        backend="local",
        recovery_id="rec-1",
        last_seen_ms=T0,
        detected_ms=T0 + 1,
        requested_ms=T0 + 2,
        respawned_ms=T0 + 3,
        first_heartbeat_ms=T0 + 4,
        new_generation=T0 + 3,
        detail="respawned",
    )


def messages() -> dict[type[WireMessage], list[bytes]]:
    """Valid encodings of every WireMessage class (tests check the table is complete)."""
    vec = vector()
    trust_record = trust.TrustCertRecord(trust_certificate().encode(), True, "superseded", T0 + 7)
    alert = alerts.sign_alert(
        SIGNER,
        alert_id="al-1",
        severity=alerts.Severity.CRITICAL,
        code="EQUIVOCATION",
        subject_kind="verifier",
        subject_id="v3",
        summary="two votes",
        ts_ms=T0,
        source_kind="anomaly",
        source_id="anomaly1",
        details={"ballot": "b1", "count": 2},
    )
    return {
        VerificationRequest: verification_requests(),
        Ballot: [vec.ballot],
        Vote: list(vec.votes),
        ConsensusResult: [vec.certificate],
        Heartbeat: [
            Heartbeat("verifier", "v1", "i-1", 7, T0, 1.0, "Healthy", 4242, "host", T0).encode()
        ],
        MetricsSnapshot: [
            MetricsSnapshot(
                "tally", "t1", "i-1", T0, 10, 9, 1, 1.5, 9.25, "Degraded", {"op_x": 3}
            ).encode()
        ],
        ErrorReply: [
            ErrorReply("SCHEMA_VIOLATION", "bad", "req-1").encode(),
            ErrorReply("OVERLOADED", "").encode(),
        ],
        alerts.Alert: [alert.encode()],
        keys.KeyRequest: sorted(set(key_requests().values())),
        keys.KeyStatus: [key_status().encode()],
        keys.KeyInfo: [key_record().info().encode()],
        keys.KeyList: [keys.KeyList((key_record().info(),)).encode()],
        keys.KeySignature: [keys.KeySignature("agent-1", 2, KEY_B, SIG).encode()],
        keys.KeySweep: [keys.KeySweep(("agent-1",), ("old-key",), 4).encode()],
        keys.KeyRevoked: [
            keys.KeyRevoked("agent-1", 1, KEY_A, "lost", T0, "keys1", KEY_B, SIG).encode()
        ],
        trust.TrustCertificate: [trust_certificate().encode()],
        trust.TrustAnchor: [trust.TrustAnchor(KEY_A, "root", T0).encode()],
        trust.TrustCertRecord: [trust_record.encode()],
        trust.AddAnchorRequest: [trust.AddAnchorRequest(KEY_A, "root").encode()],
        trust.RemoveAnchorRequest: [trust.RemoveAnchorRequest(KEY_A).encode()],
        trust.AddCertRequest: [trust.AddCertRequest(trust_certificate().encode()).encode()],
        trust.RevokeCertRequest: [trust.RevokeCertRequest("serial-1", "superseded").encode()],
        trust.ValidateRequest: [
            trust.ValidateRequest(
                AGENT.public_key, "payment", (trust_certificate().encode(),), T0 + 1, 5
            ).encode()
        ],
        trust.ListRequest: [trust.ListRequest().encode()],
        trust.TrustAck: [trust.TrustAck("add-anchor", "anchor.x", True, 4, "added").encode()],
        trust.ChainReply: [
            trust.ChainReply(
                False, "CHAIN_EXPIRED", "expired", 1, (KEY_A, KEY_B), 2, T0, 9, T0 + 1
            ).encode(),
            trust.ChainReply(True, None, "", None, (KEY_A,), 1, None, 9, T0).encode(),
        ],
        trust.TrustListing: [
            trust.TrustListing((trust.TrustAnchor(KEY_A, "root", T0),), (trust_record,), 9).encode()
        ],
        authority.AuthorityRecord: [authority_record().encode()],
        authority.QuorumPolicy: [quorum_policy().encode()],
        authority.Endorsement: [endorsement().encode()],
        authority.AuthorityChange: [
            authority.AuthorityChange(authority_record(), (endorsement(),)).encode()
        ],
        authority.PolicyChange: [
            authority.PolicyChange(quorum_policy(), (endorsement(),)).encode()
        ],
        authority.PolicyQuery: [authority.PolicyQuery("payments").encode()],
        authority.ListRequest: [authority.ListRequest().encode()],
        authority.AuthorityList: [
            authority.AuthorityList((authority_record(),), (quorum_policy(),), 7).encode()
        ],
        authority.EvaluateRequest: [
            authority.EvaluateRequest("payments", DIGEST, (endorsement(),)).encode()
        ],
        authority.PolicyVerdict: [
            authority.PolicyVerdict(
                False,
                "POLICY_NOT_MET",
                "1 of 2",
                "payments",
                "payments",
                2,
                (KEY_A,),
                ((KEY_B, "INACTIVE"),),
                7,
            ).encode()
        ],
        recovery.RecoveryAttempt: [recovery_attempt().encode()],
        recovery.HistoryQuery: [recovery.HistoryQuery("verifier", "v1", 10).encode()],
        recovery.HistoryReply: [recovery.HistoryReply((recovery_attempt(),)).encode()],
        recovery.RestartRequest: [recovery.RestartRequest("verifier", "v1", T0, "stale").encode()],
        recovery.RestartReply: [
            recovery.RestartReply(True, "RESTARTED", "verifier", "v1", 99, T0 + 3, "ok").encode()
        ],
    }


def member_records() -> list[bytes]:
    """A verifier's, a tally's, an admission and a quarantine record."""
    verifier = identity("v1")
    tally = identity("t1")
    return [
        pool.self_record(verifier, network=NETWORK, key="v1", at_ms=T0).encode(),
        pool.self_record(
            tally, network=NETWORK, key=pool.tally_record_key("t1"), role=pool.ROLE_TALLY
        ).encode(),
        pool.admitted_record("v9", KEY_A, network=NETWORK, at_ms=T0).encode(),
        pool.quarantine_record("v1", verifier.public_key, network=NETWORK, at_ms=T0).encode(),
    ]


def state_records() -> list[tuple[str, bytes]]:
    """(key, value) of every area of the verdict-state bucket."""
    status = key_status()
    cert = trust_certificate()
    anchor = trust.TrustAnchor(KEY_A, "root", T0)
    return [
        (f"key.{status.public_key.hex()}", status.encode()),
        (f"anchor.{KEY_A.hex()}", anchor.encode()),
        (f"cert.{cert.serial}", trust.TrustCertRecord(cert.encode()).encode()),
        (f"authority.{KEY_A.hex()}", authority_record().encode()),
        ("policy.payments", quorum_policy().encode()),
    ]
