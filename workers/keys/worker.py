"""The key manager worker (``agentic-payments worker keys``).

Serves ``{prefix}.keys.<op>`` (queue group ``keys``, so several instances can
run) with MessagePack ``key_request`` maps; see schemas/keys.py for the
messages and workers/keys/lifecycle.py for the rules. Every change is a
compare-and-set on the key's record in ``{prefix}_keys``; then the public
status of every affected version is written (compare-and-set, never over a
status derived from a newer record) to ``{prefix}_state`` under
``key.<public key hex>``; then, for a revocation, a KeyRevoked event goes to
``{prefix}.keys.event.revoked``; only then is the request answered. So when a
client has the reply, every verifier watching the state bucket is about to
see it (bench/keys_revocation.py measures how soon).

A sweep — on a schedule (default hourly) and on demand (op ``sweep``) —
rotates keys whose latest version is older than their auto-rotation period,
destroys keys whose deletion wait is over, and rewrites any public status that
is missing or stale (repairing a manager that died between its two writes).

Private seeds never leave this process: they are stored sealed (see
workers/keys/crypto.py) and only ``sign`` opens one, for one signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bus.kv import UNCHANGED, KeyValue, NoChange
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.service import Dispatcher, Operation
from bus.state import ensure_bucket, state_bucket, state_key
from bus.subjects import KEYS_QUEUE
from schemas.errors import (
    AgenticPaymentsError,
    CodecError,
    IdentityError,
    KeyExists,
    KeyManagementError,
    KeyNotFound,
    KeyUpdateConflict,
    MasterKeyInvalid,
    WriteConflict,
)
from schemas.identity import AgentIdentity
from schemas.keys import (
    OPS,
    KeyInfo,
    KeyList,
    KeyRecord,
    KeyRequest,
    KeyRevoked,
    KeySignature,
    KeyStatus,
    KeySweep,
    signing_payload,
)
from schemas.messages import WireMessage
from workers.keys import lifecycle as keypolicy
from workers.keys.crypto import MasterKey, wipe

log = logging.getLogger("agentic_payments.keys")
DEFAULT_SWEEP_S = 3600.0
KEYS_HISTORY = 5


class _NotDue(Exception):
    """A sweep found the key no longer due (another manager got there first)."""


class KeysWorker(Worker):
    """Key manager: versioned Ed25519 keys, rotation, revocation, signing."""

    kind = "keys"

    def __init__(
        self,
        runtime: RuntimeConfig,
        master_key: MasterKey,
        *,
        sweep_interval_s: float = DEFAULT_SWEEP_S,
        key_file: Path | None = None,
        identity: AgentIdentity | None = None,
    ) -> None:
        super().__init__(runtime)
        self.master = master_key
        #: The manager's own identity, which signs KeyRevoked events (not a managed key).
        self.key_file = key_file or runtime.data_dir / "keys" / f"keys-{self.worker_id}.key"
        self.identity = identity or AgentIdentity.load_or_create(self.key_file)
        self.sweep_interval_s = sweep_interval_s
        self._store: KeyValue[KeyRecord]  # set by setup: {prefix}_keys
        self._statuses: KeyValue[KeyStatus]  # set by setup: key.* in {prefix}_state
        self._sweeper: asyncio.Task[None] | None = None
        handlers: dict[str, Callable[[KeyRequest], Awaitable[WireMessage]]] = {
            "create": self._create,
            "rotate": self._rotate,
            "revoke": self._revoke,
            "disable": self._disable,
            "enable": self._enable,
            "delete": self._delete,
            "get": self._get_op,
            "list": self._list,
            "sign": self._sign,
            "config": self._config,
            "sweep": self._sweep_op,
        }
        assert set(handlers) == set(OPS)
        # A key request is decoded for its op (which fields it needs); a
        # KeyManagementError is a refusal, any other error (a corrupt stored
        # record, a seal that does not open) an INTERNAL failure.
        self.rpc = Dispatcher(
            "key manager",
            {
                op: Operation(functools.partial(KeyRequest.decode_for, op), handle)
                for op, handle in handlers.items()
            },
            self.stats,
            log,
            refusals=(KeyManagementError,),
        )

    def extra_metadata(self) -> dict[str, str]:
        return {
            "public_key": self.identity.public_key_hex,
            "sweep_interval_s": str(self.sweep_interval_s),
        }

    async def setup(self) -> None:
        keys = await ensure_bucket(
            self.client,
            self.subjects.keys_bucket,
            history=KEYS_HISTORY,
            description="agentic-payments keys (sealed)",
        )
        state = await state_bucket(self.client, self.subjects)
        # a lost race answers KEY_UPDATE_CONFLICT; every lost race is counted
        self._store = KeyValue.of(
            keys,
            KeyRecord,
            conflict=KeyUpdateConflict,
            on_retry=lambda: self.stats.count("cas_retries"),
        )
        self._statuses = KeyValue.of(
            state,
            KeyStatus,
            conflict=KeyUpdateConflict,
            on_retry=lambda: self.stats.count("state_cas_retries"),
        )
        await self._check_master_key()
        for op in OPS:
            await self.subscribe_intake(
                self.subjects.keys_op(op), self.rpc.handler(op), queue=KEYS_QUEUE
            )
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def teardown(self) -> None:
        # the master key is wiped whatever happens to the await (a bounded stop
        # cancels a teardown that runs out of time, bus/runtime.py)
        try:
            if self._sweeper is not None:
                self._sweeper.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.wait({self._sweeper}, timeout=1.0)
        finally:
            self.master.close()

    async def _check_master_key(self) -> None:
        """Refuse to serve (exit 78) under a master key that does not open the stored keys."""
        for record, _ in await self._records():
            for version in record.versions:
                if version.sealed_seed:
                    try:
                        wipe(self.master.open(version.sealed_seed))
                    except IdentityError:
                        raise MasterKeyInvalid(
                            f"the master key from {self.master.source} does not open the keys "
                            f"stored in {self.subjects.keys_bucket} (key {record.name!r})"
                        ) from None
                    return

    async def _forget_history(self, name: str) -> None:
        """Drop the older revisions of a key's record (they still hold erased seeds)."""
        bucket = self.subjects.keys_bucket
        try:
            await self.client.jetstream().purge_stream(
                f"KV_{bucket}", subject=f"$KV.{bucket}.{name}", keep=1
            )
        except Exception:
            self.stats.count("history_purge_failures")
            log.warning("could not purge the history of key %s", name, exc_info=True)

    @staticmethod
    def _corrupt(name: str, exc: CodecError) -> AgenticPaymentsError:
        """Our own store is corrupt: a failure (INTERNAL), not bad input."""
        return AgenticPaymentsError(f"stored record of key {name!r} is corrupt [{exc.code}]")

    async def _read(self, name: str) -> tuple[KeyRecord, int]:
        try:
            entry = await self._store.get(name)
        except CodecError as exc:
            raise self._corrupt(name, exc) from None
        if entry is None:
            raise KeyNotFound(f"no key named {name!r}")
        return entry.value, entry.revision

    async def _modify(
        self, name: str, change: Callable[[KeyRecord], KeyRecord]
    ) -> tuple[KeyRecord, int]:
        """Read, change, compare-and-set; retried while another writer wins."""

        def apply(record: KeyRecord | None) -> KeyRecord:
            if record is None:
                raise KeyNotFound(f"no key named {name!r}")
            return change(record)

        try:
            result = await self._store.update(name, apply)
        except CodecError as exc:
            raise self._corrupt(name, exc) from None
        assert result.value is not None
        return result.value, result.revision

    async def _publish_status(self, record: KeyRecord, revision: int) -> int:
        """Write each version's KeyStatus (CAS) unless unchanged or a newer one is there."""
        written = 0
        for status in keypolicy.statuses(record, revision, now_ms()):

            def change(old: KeyStatus | None, new: KeyStatus = status) -> KeyStatus | NoChange:
                if old is not None and (old.source_revision > revision or old.same_content(new)):
                    return UNCHANGED
                return new  # absent, older, or malformed (replaced)

            key = state_key("key", status.public_key.hex())
            if (await self._statuses.update(key, change, replace_unreadable=True)).changed:
                written += 1
        return written

    async def _commit(self, name: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyInfo:
        record, revision = await self._modify(name, change)
        await self._publish_status(record, revision)
        return record.info()

    # ------------------------------------------------------------ operations
    async def _create(self, req: KeyRequest) -> WireMessage:
        policy = keypolicy.policy_from_request(req)
        public_key, sealed = self.master.generate()
        record = keypolicy.create(req.name, req.purpose, policy, public_key, sealed, now_ms())
        try:
            revision = await self._store.create(req.name, record)
        except WriteConflict:
            raise KeyExists(f"a key named {req.name!r} already exists") from None
        await self._publish_status(record, int(revision))
        log.info("created key %s (%s) version 1", req.name, req.purpose)
        return record.info()

    async def _rotate(self, req: KeyRequest) -> WireMessage:
        public_key, sealed = self.master.generate()
        info = await self._commit(
            req.name, lambda r: keypolicy.rotate(r, public_key, sealed, now_ms())
        )
        log.info("rotated key %s to version %d", req.name, info.record.latest.version)
        return info

    async def _revoke(self, req: KeyRequest) -> WireMessage:
        newly: list[Any] = []

        def change(record: KeyRecord) -> KeyRecord:
            updated, revoked = keypolicy.revoke(record, req.version, req.reason, now_ms())
            newly[:] = revoked
            return updated

        info = await self._commit(req.name, change)
        if newly:  # off the reply's path: the status and event matter first
            self.spawn(self._forget_history(req.name))
        for version in newly:
            event = KeyRevoked(
                name=req.name,
                version=version.version,
                public_key=version.public_key,
                reason=version.revoked_reason,
                revoked_at_ms=version.revoked_at_ms,
                worker_id=self.worker_id,
                signer=self.identity.public_key,
            )
            event = replace(event, sig=self.identity.sign(event.signing_bytes()))
            await self.client.publish(self.subjects.keys_revoked, event.encode())
        log.info(
            "revoked key %s version(s) %s: %s",
            req.name,
            [v.version for v in newly] or "none new",
            req.reason,
        )
        return info

    def _state_op(self, op: str) -> Callable[[KeyRequest], Awaitable[WireMessage]]:
        async def run(req: KeyRequest) -> WireMessage:
            info = await self._commit(req.name, lambda r: keypolicy.set_state(r, op, now_ms()))
            log.info("%s key %s: now %s", op, req.name, info.record.state)
            return info

        return run

    async def _disable(self, req: KeyRequest) -> WireMessage:
        return await self._state_op("disable")(req)

    async def _enable(self, req: KeyRequest) -> WireMessage:
        return await self._state_op("enable")(req)

    async def _delete(self, req: KeyRequest) -> WireMessage:
        return await self._state_op("delete")(req)

    async def _config(self, req: KeyRequest) -> WireMessage:
        return await self._commit(req.name, lambda r: keypolicy.configure(r, req, now_ms()))

    async def _get_op(self, req: KeyRequest) -> WireMessage:
        record, _ = await self._read(req.name)
        return record.info()

    async def _records(self) -> list[tuple[KeyRecord, int]]:
        out = []
        for name in await self._store.keys():
            try:
                out.append(await self._read(name))
            except KeyNotFound:
                continue
            except AgenticPaymentsError as exc:
                self.stats.count("corrupt_records")
                log.warning("skipping key %r: %s", name, exc)
        return out

    async def _list(self, req: KeyRequest) -> WireMessage:
        return KeyList(keys=tuple(record.info() for record, _ in await self._records()))

    async def _sign(self, req: KeyRequest) -> WireMessage:
        record, _ = await self._read(req.name)
        version = keypolicy.signing_version(record, req.version, now_ms())
        # purpose-checked and domain-tagged (#10 hole 9d): an agent key never signs a
        # protocol message, a document key signs under its own domain, others not at all
        payload = signing_payload(record.purpose, req.message)
        signature = self.master.sign(version.sealed_seed, version.public_key, payload)
        return KeySignature(
            name=record.name,
            version=version.version,
            public_key=version.public_key,
            signature=signature,
        )

    # ------------------------------------------------------------ sweep
    async def sweep(self) -> KeySweep:
        rotated: list[str] = []
        destroyed: list[str] = []
        written = 0
        now = now_ms()
        for record, revision in await self._records():
            if keypolicy.rotation_due(record, now):
                public_key, sealed = self.master.generate()

                def rotate(r: KeyRecord, pk: bytes = public_key, s: bytes = sealed) -> KeyRecord:
                    if not keypolicy.rotation_due(r, now_ms()):
                        raise _NotDue
                    return keypolicy.rotate(r, pk, s, now_ms())

                with contextlib.suppress(_NotDue):
                    record, revision = await self._modify(record.name, rotate)
                    rotated.append(record.name)
                    log.info(
                        "auto-rotated key %s to version %d", record.name, record.latest.version
                    )
            elif keypolicy.destruction_due(record, now):

                def destroy(r: KeyRecord) -> KeyRecord:
                    if not keypolicy.destruction_due(r, now_ms()):
                        raise _NotDue
                    return keypolicy.set_state(r, "destroy", now_ms())

                with contextlib.suppress(_NotDue):
                    record, revision = await self._modify(record.name, destroy)
                    destroyed.append(record.name)
                    await self._forget_history(record.name)
                    log.info("destroyed key %s after its deletion wait", record.name)
            written += await self._publish_status(record, revision)
        self.stats.count("sweeps")
        return KeySweep(
            rotated=tuple(rotated), destroyed=tuple(destroyed), statuses_written=written
        )

    async def _sweep_op(self, req: KeyRequest) -> WireMessage:
        return await self.sweep()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.count("sweep_failures")
                log.warning("scheduled sweep failed", exc_info=True)
            await asyncio.sleep(self.sweep_interval_s)
