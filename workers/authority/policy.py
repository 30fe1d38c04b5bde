"""Quorum-policy evaluation: pure, exact, no I/O.

``evaluate(policy, authorities, endorsements, category, message_digest)``:

1. Each endorsement is checked in order. It is ignored (and reported) when its
   key is not a registered authority (UNKNOWN_AUTHORITY), the authority is
   inactive (INACTIVE), below the policy's ``min_trust_level``
   (BELOW_TRUST_LEVEL), the signature over
   ``endorsement_signing_bytes(category, message_digest)`` does not verify
   (BAD_SIGNATURE), or the authority was already counted (DUPLICATE). Each
   authority counts once however many signatures it sends.
2. ``required = max(min_authorities, ceil(threshold × E))`` with E the number
   of active registered authorities at or above ``min_trust_level`` —
   integer arithmetic on a Fraction, so 2/3 of 3 is 2, never 3.
3. Nested k-of-n groups: every group needs ``k`` slots filled by distinct
   counted authorities that qualify for it. This is a bipartite matching of
   slots to signers, solved exactly with augmenting paths (Kuhn), so a
   signer that qualifies for two slots never fills both and a greedy
   first-fit that would fail cannot make a satisfiable policy fail.

``resolve_policy`` picks the category's own policy, else the ``default``
policy — except for governance categories (``policy-admin``), which never
fall back. No policy at all means POLICY_MISSING: refuse, never allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from schemas.authority import (
    DEFAULT_CATEGORY,
    GOVERNANCE_CATEGORIES,
    AuthorityRecord,
    Endorsement,
    IgnoredReason,
    PolicyGroup,
    QuorumPolicy,
    endorsement_signing_bytes,
    rank,
)
from schemas.identity import verify_signature

POLICY_NOT_MET = "POLICY_NOT_MET"
POLICY_MISSING = "POLICY_MISSING"


@dataclass(frozen=True)
class PolicyResult:
    ok: bool
    code: str | None
    reason: str
    category: str
    policy_category: str | None = None
    required: int = 0
    counted: tuple[bytes, ...] = ()
    ignored: tuple[tuple[bytes, str], ...] = ()
    #: For each group (in policy order), the keys that filled its slots.
    assignment: tuple[tuple[bytes, ...], ...] = field(default=())


def required_count(min_authorities: int, threshold: Fraction, eligible: int) -> int:
    """max(min_authorities, ceil(threshold × eligible)) in integers."""
    by_threshold = -(-threshold.numerator * eligible // threshold.denominator)
    return max(min_authorities, by_threshold)


def resolve_policy(policies: Mapping[str, QuorumPolicy], category: str) -> QuorumPolicy | None:
    own = policies.get(category)
    if own is not None or category in GOVERNANCE_CATEGORIES:
        return own
    return policies.get(DEFAULT_CATEGORY)


def qualifies(record: AuthorityRecord, group: PolicyGroup) -> bool:
    if rank(record.trust_level) < rank(group.min_trust_level):
        return False
    return not group.members or record.public_key in group.members


def match_slots(slots: Sequence[Iterable[int]], signers: int) -> list[int] | None:
    """Maximum bipartite matching (augmenting paths): ``slots[i]`` lists the signers
    slot i accepts. Returns the signer of every slot if all can be filled with
    distinct signers, else None."""
    owner: list[int | None] = [None] * signers  # signer -> slot
    options = [list(s) for s in slots]

    def augment(slot: int, seen: list[bool]) -> bool:
        for signer in options[slot]:
            if seen[signer]:
                continue
            seen[signer] = True
            current = owner[signer]
            if current is None or augment(current, seen):
                owner[signer] = slot
                return True
        return False

    for slot in range(len(options)):
        if not augment(slot, [False] * signers):
            return None
    result = [-1] * len(options)
    for signer, filled in enumerate(owner):
        if filled is not None:
            result[filled] = signer
    return result


def evaluate(
    policy: QuorumPolicy | None,
    authorities: Mapping[bytes, AuthorityRecord],
    endorsements: Sequence[Endorsement],
    category: str,
    message_digest: bytes,
) -> PolicyResult:
    if policy is None:
        return PolicyResult(
            False,
            POLICY_MISSING,
            f"no policy for category {category!r} and no {DEFAULT_CATEGORY!r} policy: refused",
            category,
        )
    signing = endorsement_signing_bytes(category, message_digest)
    level = rank(policy.min_trust_level)
    counted: list[AuthorityRecord] = []
    seen: set[bytes] = set()
    ignored: list[tuple[bytes, str]] = []
    for endorsement in endorsements:
        key = endorsement.authority_key
        record = authorities.get(key)
        if key in seen:
            ignored.append((key, IgnoredReason.DUPLICATE.value))
        elif record is None:
            ignored.append((key, IgnoredReason.UNKNOWN_AUTHORITY.value))
        elif not record.active:
            ignored.append((key, IgnoredReason.INACTIVE.value))
        elif rank(record.trust_level) < level:
            ignored.append((key, IgnoredReason.BELOW_TRUST_LEVEL.value))
        elif not verify_signature(key, signing, endorsement.signature):
            ignored.append((key, IgnoredReason.BAD_SIGNATURE.value))
        else:
            seen.add(key)
            counted.append(record)
    eligible = sum(1 for r in authorities.values() if r.active and rank(r.trust_level) >= level)
    required = required_count(policy.min_authorities, policy.threshold, eligible)
    keys = tuple(r.public_key for r in counted)

    def result(
        ok: bool, reason: str, assignment: tuple[tuple[bytes, ...], ...] = ()
    ) -> PolicyResult:
        return PolicyResult(
            ok,
            None if ok else POLICY_NOT_MET,
            reason,
            category,
            policy.category,
            required,
            keys,
            tuple(ignored),
            assignment,
        )

    if len(counted) < required:
        return result(
            False,
            f"{len(counted)} of {required} required authorities endorsed "
            f"(threshold {policy.threshold} of {eligible} eligible, minimum "
            f"{policy.min_authorities}, level {policy.min_trust_level}+)",
        )
    assignment = fill_groups(policy.groups, counted)
    slots = sum(group.k for group in policy.groups)
    if assignment is None:
        return result(
            False,
            f"the {len(counted)} counted authorities cannot fill the "
            f"{slots} group slots with distinct signers",
        )
    return result(
        True,
        f"{len(counted)} of {required} required authorities endorsed"
        + (f"; {slots} group slots filled" if slots else ""),
        assignment,
    )


def fill_groups(
    groups: Sequence[PolicyGroup], signers: Sequence[AuthorityRecord]
) -> tuple[tuple[bytes, ...], ...] | None:
    """The keys filling each group's slots (distinct signers), or None if impossible."""
    slots: list[list[int]] = []
    slot_group: list[int] = []
    for gi, group in enumerate(groups):
        fits = [i for i, r in enumerate(signers) if qualifies(r, group)]
        for _ in range(group.k):
            slots.append(fits)
            slot_group.append(gi)
    matched = match_slots(slots, len(signers))
    if matched is None:
        return None
    return tuple(
        tuple(signers[matched[s]].public_key for s in range(len(slots)) if slot_group[s] == gi)
        for gi in range(len(groups))
    )


def satisfiable(policy: QuorumPolicy, authorities: Mapping[bytes, AuthorityRecord]) -> str | None:
    """None if the registry can meet ``policy`` (every eligible authority endorsing), else
    why not — used to refuse changes that would lock the policy-admin policy out."""
    level = rank(policy.min_trust_level)
    eligible = [r for r in authorities.values() if r.active and rank(r.trust_level) >= level]
    required = required_count(policy.min_authorities, policy.threshold, len(eligible))
    if len(eligible) < required:
        return (
            f"{policy.category} would need {required} active authorities at "
            f"{policy.min_trust_level}+ and only {len(eligible)} exist"
        )
    if fill_groups(policy.groups, eligible) is None:
        return f"{policy.category}'s groups cannot be filled by distinct eligible authorities"
    return None


def split_state(
    items: Mapping[str, object],
) -> tuple[dict[bytes, AuthorityRecord], dict[str, QuorumPolicy]]:
    """Authorities by key and policies by category from decoded state records."""
    authorities: dict[bytes, AuthorityRecord] = {}
    policies: dict[str, QuorumPolicy] = {}
    for key, value in items.items():
        if key.startswith("authority.") and isinstance(value, AuthorityRecord):
            authorities[value.public_key] = value
        elif key.startswith("policy.") and isinstance(value, QuorumPolicy):
            policies[value.category] = value
    return authorities, policies


def evaluate_from_state(
    items: Mapping[str, object],
    category: str,
    message_digest: bytes,
    endorsements: Sequence[Endorsement],
) -> PolicyResult:
    """What a verifier calls: ``items`` is its decoded mirror of ``{prefix}_state``
    (values from ``schemas.authority.decode_state_record``; other areas ignored)."""
    authorities, policies = split_state(items)
    return evaluate(
        resolve_policy(policies, category), authorities, endorsements, category, message_digest
    )
