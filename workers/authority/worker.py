"""The authority coordinator: authority registry and per-category quorum policies.

Operations are request/reply on ``{prefix}.authority.<op>`` in queue group
``authority`` (several instances can run; they share nothing but the state
bucket). State lives in ``{prefix}_state`` under ``authority.<public key
hex>`` and ``policy.<category>``; every write is compare-and-set (``create``
for a new key, ``update`` with the revision read), and every new record's
``serial`` must be the current one plus one, so an endorsed change can be
applied once and never replayed.

Governance: once a ``policy-admin`` policy exists, every change — a policy
(including policy-admin itself) or an authority record — must carry
endorsements satisfying it over the SHA-256 of the new record's bytes
(category ``policy-admin``). Bootstrap: while no policy-admin policy exists,
authority changes are open and the only policy that can be set is
policy-admin itself (create-only, so exactly one bootstrap wins); setting it
closes the system. Other categories' policies are refused until then.
A change after which the policy-admin policy could no longer be met by the
registry (too few eligible authorities, groups that cannot be filled) is
refused with CHANGE_INVALID, so the system cannot lock itself out — which
also means authorities are added before the policy-admin policy is set.

Reads (get-policy, list, evaluate) and the governance check answer from an
in-memory mirror of the bucket (``BucketMirror``), first caught up to the
bucket's last revision so a client reads its own writes.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from bus.kv import KeyValue
from bus.runtime import RuntimeConfig, Worker
from bus.service import Dispatcher, operation, printable
from bus.state import BucketMirror, state_bucket, state_key
from schemas.authority import (
    ADMIN_CATEGORY,
    OPERATIONS,
    AuthorityChange,
    AuthorityList,
    AuthorityRecord,
    Endorsement,
    EvaluateRequest,
    PolicyChange,
    PolicyQuery,
    PolicyVerdict,
    QuorumPolicy,
    decode_state_record,
)
from schemas.codec import Unreadable
from schemas.errors import (
    AuthorityError,
    AuthorityExists,
    AuthorityUnknown,
    ChangeInvalid,
    ConfigError,
    NotConnected,
    PolicyMissing,
    PolicyNotMet,
    StateConflict,
)
from schemas.messages import WireMessage
from workers.authority.policy import evaluate, evaluate_from_state, satisfiable, split_state

log = logging.getLogger("agentic_payments.authority")
AUTHORITY_QUEUE = "authority"
SYNC_TIMEOUT_S = 5.0


class AuthorityWorker(Worker):
    """Authority registry and per-category quorum policies; evaluates endorsements."""

    kind = "authority"

    def __init__(self, runtime: RuntimeConfig) -> None:
        super().__init__(runtime)
        self._kv: Any = None
        self._authorities: KeyValue[AuthorityRecord]  # set by setup (the state bucket)
        self._policies: KeyValue[QuorumPolicy]
        self._mirror: BucketMirror[object] | None = None
        # bad input, policy refusals and bad settings in a request are verdicts; NATS
        # trouble while reading or writing state is this worker's failure (INTERNAL)
        self.rpc = Dispatcher(
            "authority",
            {
                op: operation(request, functools.partial(self._handle, op))
                for op, request in OPERATIONS.items()
            },
            self.stats,
            log,
            refusals=(AuthorityError, ConfigError),
        )

    async def setup(self) -> None:
        self._kv = await state_bucket(self.client, self.subjects)
        # a lost compare-and-set answers STATE_CONFLICT
        self._authorities = KeyValue.of(self._kv, AuthorityRecord, conflict=StateConflict)
        self._policies = KeyValue.of(self._kv, QuorumPolicy, conflict=StateConflict)
        self._mirror = BucketMirror(
            self.client, self.subjects.state_bucket, decode_state_record, keep_unreadable=True
        )
        await self._mirror.start()
        for op in OPERATIONS:
            await self.subscribe_intake(
                self.subjects.authority(op),
                self.rpc.handler(op),
                queue=AUTHORITY_QUEUE,
            )
        # (Worker.start ends with a subscription barrier for every worker.)

    async def teardown(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    @property
    def mirror(self) -> BucketMirror[object]:
        if self._mirror is None:
            raise NotConnected("authority worker is not started")
        return self._mirror

    # ------------------------------------------------------------ operations
    async def _handle(self, op: str, request: WireMessage) -> WireMessage:
        await self._sync()
        if isinstance(request, AuthorityChange):
            return await self._change(op, request)
        if isinstance(request, PolicyChange):
            return await self._set_policy(request)
        if isinstance(request, PolicyQuery):
            policy = split_state(self.mirror.items)[1].get(request.category)
            if policy is None:
                raise PolicyMissing(f"category {request.category!r} has no policy of its own")
            return policy
        if isinstance(request, EvaluateRequest):
            result = evaluate_from_state(
                self.mirror.items, request.category, request.message_digest, request.endorsements
            )
            return PolicyVerdict(
                ok=result.ok,
                code=result.code or "OK",
                reason=printable(result.reason, 1024),
                category=request.category,
                policy_category=result.policy_category or "",
                required=result.required,
                counted=result.counted,
                ignored=result.ignored,
                revision=self.mirror.revision,
            )
        authorities, policies = split_state(self.mirror.items)
        return AuthorityList(
            authorities=tuple(sorted(authorities.values(), key=lambda r: r.public_key)),
            policies=tuple(policies[c] for c in sorted(policies)),
            revision=self.mirror.revision,
        )

    async def _sync(self) -> None:
        """Catch the mirror up to the bucket's last revision (read your writes)."""
        status = await self._kv.status()
        last = status.stream_info.state.last_seq
        if not await self.mirror.wait_for_revision(last, SYNC_TIMEOUT_S):
            raise StateConflict(f"state mirror did not reach revision {last} in time; retry")

    # ------------------------------------------------------------ governance
    def _govern(self, digest: bytes, endorsements: tuple[Endorsement, ...], what: str) -> bool:
        """Check the policy-admin policy; False when none exists yet (bootstrap)."""
        unreadable = [
            key
            for key, value in self.mirror.items.items()
            if isinstance(value, Unreadable) and key.split(".", 1)[0] in ("authority", "policy")
        ]
        if unreadable:  # fail closed: an unreadable policy-admin must not reopen bootstrap
            raise ChangeInvalid(
                f"refused: unreadable governance records {unreadable[:3]} "
                "(written by a newer version?); repair them first"
            )
        authorities, policies = split_state(self.mirror.items)
        admin = policies.get(ADMIN_CATEGORY)
        if admin is None:
            return False
        result = evaluate(admin, authorities, endorsements, ADMIN_CATEGORY, digest)
        if not result.ok:
            raise PolicyNotMet(
                f"{what} needs {ADMIN_CATEGORY} endorsements over {digest.hex()}: {result.reason}"
            )
        return True

    @staticmethod
    def _no_lockout(admin: QuorumPolicy | None, authorities: dict[bytes, AuthorityRecord]) -> None:
        """Refuse a change after which the policy-admin policy could never be met again."""
        if admin is None:
            return
        why = satisfiable(admin, authorities)
        if why is not None:
            raise ChangeInvalid(f"refused: it would lock out {ADMIN_CATEGORY} ({why})")

    # ------------------------------------------------------------ writes
    async def _change(self, op: str, request: AuthorityChange) -> AuthorityRecord:
        new = request.record
        key = state_key("authority", new.public_key.hex())
        if op == "add":
            revision = await self._authorities.revision(key)  # any record, even unreadable
            if revision is not None:
                raise AuthorityExists(f"authority {new.public_key.hex()} is already registered")
            if new.serial != 1:
                raise ChangeInvalid("a new authority record has serial 1")
        else:
            entry = await self._authorities.get(key)  # unreadable: its CodecError answers
            if entry is None:
                raise AuthorityUnknown(f"no authority {new.public_key.hex()}")
            current, revision = entry.value, entry.revision
            if new.serial != current.serial + 1:
                raise ChangeInvalid(
                    f"serial must be {current.serial + 1} (current "
                    f"{current.serial}), got {new.serial}"
                )
            if new.name != current.name:
                raise ChangeInvalid(f"{op} cannot rename an authority")
            if op == "activate" and not (new.active and new.trust_level == current.trust_level):
                raise ChangeInvalid("activate sets active=true and nothing else")
            if op == "deactivate" and (new.active or new.trust_level != current.trust_level):
                raise ChangeInvalid("deactivate sets active=false and nothing else")
            if op == "set-level" and new.active != current.active:
                raise ChangeInvalid("set-level changes the trust level and nothing else")
        governed = self._govern(
            new.digest(), request.endorsements, f"{op} of authority {new.public_key.hex()[:16]}"
        )
        authorities, policies = split_state(self.mirror.items)
        self._no_lockout(policies.get(ADMIN_CATEGORY), {**authorities, new.public_key: new})
        # one compare-and-set at the revision checked: the endorsements cover this exact
        # change, so a lost race is STATE_CONFLICT for the client to re-read, never retried
        await self._authorities.put(key, new, last=revision or 0)
        log.info(
            "%s authority %s (%s, %s, active=%s, serial %d, %s)",
            op,
            new.public_key.hex(),
            new.name,
            new.trust_level,
            new.active,
            new.serial,
            "endorsed" if governed else "bootstrap: no policy-admin policy yet",
        )
        return new

    async def _set_policy(self, request: PolicyChange) -> QuorumPolicy:
        new = request.policy
        key = state_key("policy", new.category)
        entry = await self._policies.get(key)  # unreadable: its CodecError answers
        current = entry.value if entry is not None else None
        expected = current.serial + 1 if current is not None else 1
        if new.serial != expected:
            raise ChangeInvalid(f"serial must be {expected}, got {new.serial}")
        governed = self._govern(new.digest(), request.endorsements, f"policy of {new.category!r}")
        if not governed and new.category != ADMIN_CATEGORY:
            raise PolicyMissing(
                f"set the {ADMIN_CATEGORY!r} policy first: it governs every other policy change"
            )
        if new.category == ADMIN_CATEGORY:
            self._no_lockout(new, split_state(self.mirror.items)[0])
        await self._policies.put(key, new, last=entry.revision if entry is not None else 0)
        log.info(
            "policy %s serial %d set (%s)",
            new.category,
            new.serial,
            "endorsed" if governed else "bootstrap",
        )
        return new
