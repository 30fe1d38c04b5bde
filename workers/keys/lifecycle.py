"""Key manager domain logic: state transitions, rotation, revocation, policy.

Pure functions over :class:`schemas.keys.KeyRecord` — no I/O, no nats, no
cryptography (new versions arrive already generated and sealed). The worker
(workers/keys/worker.py) reads a record, applies one of these, and writes the result
back with compare-and-set.

State machine (op -> allowed from -> to)::

  disable   Enabled                      -> Disabled
  enable    Disabled, PendingDeletion    -> Enabled   (enable cancels a deletion)
  delete    Enabled, Disabled            -> PendingDeletion (only if policy.deletion_allowed;
                                                             due after deletion_wait_ms)
  destroy   PendingDeletion (when due)   -> Destroyed (sealed seeds erased; terminal)
  rotate    Enabled                      -> Enabled (+1 version)
  sign      Enabled                      -> (no change)
  revoke    Enabled, Disabled, PendingDeletion -> (same state; versions revoked, their
                                                    sealed seeds erased: revocation is final)
  config    Enabled, Disabled, PendingDeletion -> (same state; policy changed)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from schemas.errors import KeyPolicyDenied, KeyStateConflict, KeyVersionInvalid
from schemas.keys import (
    MAX_VERSIONS,
    KeyPolicy,
    KeyRecord,
    KeyRequest,
    KeyState,
    KeyStatus,
    KeyVersion,
)

E, D, P, X = (KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_DELETION, KeyState.DESTROYED)
#: op -> (states it is allowed from, resulting state or None for "unchanged").
TRANSITIONS: dict[str, tuple[frozenset[KeyState], KeyState | None]] = {
    "disable": (frozenset({E}), D),
    "enable": (frozenset({D, P}), E),
    "delete": (frozenset({E, D}), P),
    "destroy": (frozenset({P}), X),
    "rotate": (frozenset({E}), None),
    "sign": (frozenset({E}), None),
    "revoke": (frozenset({E, D, P}), None),
    "config": (frozenset({E, D, P}), None),
}
MS = 1000


def transition(state: str, op: str) -> KeyState:
    """The state after ``op`` from ``state``, or KeyStateConflict."""
    allowed, target = TRANSITIONS[op]
    current = KeyState(state)
    if current not in allowed:
        raise KeyStateConflict(
            f"cannot {op} a key in state {current.value} "
            f"(allowed from: {', '.join(sorted(s.value for s in allowed))})"
        )
    return target if target is not None else current


def new_version(
    record_versions: int, public_key: bytes, sealed_seed: bytes, now_ms: int, policy: KeyPolicy
) -> KeyVersion:
    if record_versions >= MAX_VERSIONS:
        raise KeyVersionInvalid(f"a key keeps at most {MAX_VERSIONS} versions")
    expires = now_ms + policy.expires_after_ms if policy.expires_after_ms else 0
    return KeyVersion(
        version=record_versions + 1,
        public_key=public_key,
        sealed_seed=sealed_seed,
        created_at_ms=now_ms,
        expires_at_ms=expires,
    )


def policy_from_request(req: KeyRequest, base: KeyPolicy | None = None) -> KeyPolicy:
    """Apply the policy fields present in ``req`` (seconds) to ``base`` (ms)."""
    policy = base or KeyPolicy()
    changes: dict[str, object] = {}
    if req.auto_rotate_period_s is not None:
        changes["auto_rotate_period_ms"] = req.auto_rotate_period_s * MS
    if req.expires_after_s is not None:
        changes["expires_after_ms"] = req.expires_after_s * MS
    if req.deletion_allowed is not None:
        changes["deletion_allowed"] = req.deletion_allowed
    if req.deletion_wait_s is not None:
        changes["deletion_wait_ms"] = req.deletion_wait_s * MS
    if req.min_verify_version is not None:
        changes["min_verify_version"] = req.min_verify_version
    if req.min_sign_version is not None:
        changes["min_sign_version"] = req.min_sign_version
    return replace(policy, **changes)  # type: ignore[arg-type]


def create(
    name: str, purpose: str, policy: KeyPolicy, public_key: bytes, sealed_seed: bytes, now_ms: int
) -> KeyRecord:
    first = new_version(0, public_key, sealed_seed, now_ms, policy)
    return KeyRecord(
        name=name,
        purpose=purpose,
        state=E.value,
        created_at_ms=now_ms,
        policy=policy,
        versions=(first,),
        updated_at_ms=now_ms,
    )


def rotate(rec: KeyRecord, public_key: bytes, sealed_seed: bytes, now_ms: int) -> KeyRecord:
    transition(rec.state, "rotate")
    version = new_version(len(rec.versions), public_key, sealed_seed, now_ms, rec.policy)
    return replace(rec, versions=(*rec.versions, version), updated_at_ms=now_ms)


def revoke(
    rec: KeyRecord, version: int, reason: str, now_ms: int
) -> tuple[KeyRecord, list[KeyVersion]]:
    """Revoke one version (or every version with ``version`` 0); returns the
    record and the versions newly revoked (already revoked ones are kept as
    they were: revocation is idempotent and its first reason stands)."""
    transition(rec.state, "revoke")
    if version and rec.version(version) is None:
        raise KeyVersionInvalid(f"key {rec.name} has no version {version}")
    revoked: list[KeyVersion] = []
    versions = []
    for ver in rec.versions:
        if (version in (0, ver.version)) and not ver.revoked:
            # a revocation is final, so the sealed seed is erased with it
            ver = replace(ver, revoked_at_ms=now_ms, revoked_reason=reason, sealed_seed=b"")
            revoked.append(ver)
        versions.append(ver)
    return replace(rec, versions=tuple(versions), updated_at_ms=now_ms), revoked


def set_state(rec: KeyRecord, op: str, now_ms: int) -> KeyRecord:
    """disable / enable / delete / destroy."""
    target = transition(rec.state, op)
    if op == "delete":
        if not rec.policy.deletion_allowed:
            raise KeyPolicyDenied(
                f"the policy of key {rec.name} does not allow deletion "
                "(set deletion_allowed with config first)"
            )
        return replace(
            rec,
            state=target.value,
            updated_at_ms=now_ms,
            deletion_due_ms=now_ms + rec.policy.deletion_wait_ms,
        )
    if op == "destroy":
        if not rec.policy.deletion_allowed:
            raise KeyPolicyDenied(f"the policy of key {rec.name} does not allow deletion")
        if now_ms < rec.deletion_due_ms:
            raise KeyStateConflict(f"key {rec.name} is not due for destruction yet")
        return replace(
            rec,
            state=target.value,
            updated_at_ms=now_ms,
            versions=tuple(replace(v, sealed_seed=b"") for v in rec.versions),
        )
    return replace(rec, state=target.value, updated_at_ms=now_ms, deletion_due_ms=0)


def configure(rec: KeyRecord, req: KeyRequest, now_ms: int) -> KeyRecord:
    transition(rec.state, "config")
    policy = policy_from_request(req, rec.policy)
    latest = rec.latest.version
    if policy.min_verify_version > latest or policy.min_sign_version > latest:
        raise KeyVersionInvalid(f"min versions must be <= the latest version {latest}")
    if policy.min_sign_version < policy.min_verify_version:
        raise KeyVersionInvalid(
            "min_sign_version must be >= min_verify_version "
            "(no signing with a version verifiers refuse)"
        )
    if policy.min_verify_version < rec.policy.min_verify_version:
        raise KeyVersionInvalid("min_verify_version cannot go down (retired versions stay retired)")
    return replace(rec, policy=policy, updated_at_ms=now_ms)


def signing_version(rec: KeyRecord, version: int, now_ms: int) -> KeyVersion:
    """The version to sign with (``version`` 0: the latest), or why not."""
    transition(rec.state, "sign")
    ver = rec.latest if version == 0 else rec.version(version)
    if ver is None:
        raise KeyVersionInvalid(f"key {rec.name} has no version {version}")
    if ver.version < rec.policy.min_sign_version:
        raise KeyVersionInvalid(
            f"version {ver.version} is below min_sign_version {rec.policy.min_sign_version}"
        )
    if ver.revoked:
        raise KeyVersionInvalid(f"version {ver.version} of key {rec.name} is revoked")
    if ver.expires_at_ms and now_ms >= ver.expires_at_ms:
        raise KeyVersionInvalid(
            f"version {ver.version} of key {rec.name} has expired (rotate the key)"
        )
    return ver


def rotation_due(rec: KeyRecord, now_ms: int) -> bool:
    """An Enabled key with auto-rotation whose latest version is at least one
    period old, or whose latest version has expired or been revoked."""
    if rec.state != KeyState.ENABLED or not rec.policy.auto_rotate_period_ms:
        return False
    latest = rec.latest
    if latest.revoked or (latest.expires_at_ms and now_ms >= latest.expires_at_ms):
        return len(rec.versions) < MAX_VERSIONS
    return (
        now_ms - latest.created_at_ms >= rec.policy.auto_rotate_period_ms
        and len(rec.versions) < MAX_VERSIONS
    )


def destruction_due(rec: KeyRecord, now_ms: int) -> bool:
    return (
        rec.state == KeyState.PENDING_DELETION
        and rec.policy.deletion_allowed
        and now_ms >= rec.deletion_due_ms
    )


def due_for_rotation(records: Iterable[KeyRecord], now_ms: int) -> list[str]:
    return sorted(r.name for r in records if rotation_due(r, now_ms))


def due_for_destruction(records: Iterable[KeyRecord], now_ms: int) -> list[str]:
    return sorted(r.name for r in records if destruction_due(r, now_ms))


def statuses(rec: KeyRecord, source_revision: int, now_ms: int) -> list[KeyStatus]:
    """The public status of every version of ``rec``."""
    return [
        KeyStatus(
            public_key=v.public_key,
            name=rec.name,
            version=v.version,
            purpose=rec.purpose,
            state=rec.state,
            verify_allowed=v.version >= rec.policy.min_verify_version,
            created_at_ms=v.created_at_ms,
            expires_at_ms=v.expires_at_ms,
            revoked_at_ms=v.revoked_at_ms,
            revoked_reason=v.revoked_reason,
            updated_at_ms=now_ms,
            source_revision=source_revision,
        )
        for v in rec.versions
    ]
