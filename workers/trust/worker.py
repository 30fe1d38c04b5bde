"""The trust-chain validator worker (``agentic-payments worker trust``).

Service operations, request/reply on ``{prefix}.trust.<op>`` in the queue
group ``trust`` (so several instances can run), one micro-service endpoint
each (see :data:`schemas.trust.OPS` for the request message of each op):

  add-anchor     store a trust anchor (root key)                     -> TrustAck
  remove-anchor  delete a trust anchor                               -> TrustAck
  add-cert       store a certificate after checking its signature   -> TrustAck
  revoke-cert    mark a stored certificate revoked                   -> TrustAck
  validate       build a chain leaf -> anchor (pure workers/trust/chain.py) -> ChainReply
  list           every anchor and stored certificate                 -> TrustListing

State lives in the verdict-state bucket ``{prefix}_state`` (bus/state.py):
``anchor.<public key hex>`` and ``cert.<serial>``, written with
compare-and-set; every instance answers ``validate`` from a BucketMirror of
that bucket and a :class:`~workers.trust.chain.ChainCache` keyed by the mirror's
state revision. Writes reply only once this instance's mirror has applied
them; a ``validate`` carrying ``min_revision`` waits for that revision, so a
client reads its own writes through any instance.

Bad input gets an ErrorReply with a stable code (MALFORMED_PAYLOAD,
SCHEMA_VIOLATION, UNSUPPORTED_VERSION, PAYLOAD_TOO_LARGE, TRUST_NOT_FOUND,
TRUST_CONFLICT, TRUST_BAD_SIGNATURE) and the worker keeps serving.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.micro.service import EndpointConfig

from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.service import Dispatcher, operation
from bus.state import BucketMirror, state_bucket, state_key
from bus.subjects import TRUST_QUEUE
from schemas.errors import (
    CodecError,
    ConfigError,
    TrustBadSignature,
    TrustConflict,
    TrustError,
    TrustNotFound,
)
from schemas.trust import (
    MAX_LISTED,
    OPS,
    AddAnchorRequest,
    AddCertRequest,
    ChainReply,
    ListRequest,
    RemoveAnchorRequest,
    RevokeCertRequest,
    StoredCert,
    TrustAck,
    TrustAnchor,
    TrustCertificate,
    TrustCertRecord,
    TrustListing,
    ValidateRequest,
)
from workers.consensus.verdict_state import decode_state_record, key_refusal
from workers.trust.chain import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_SIGNATURE_CHECKS,
    ChainCache,
    KeyRefusal,
    TrustIndex,
    no_refusal,
)

log = logging.getLogger("agentic_payments.trust")
CAS_ATTEMPTS = 8
MIRROR_WAIT_S = 5.0


class TrustWorker(Worker):
    """Trust-chain validator: anchors, certificates, chain validation."""

    kind = "trust"

    def __init__(
        self,
        runtime: RuntimeConfig,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_signature_checks: int = DEFAULT_MAX_SIGNATURE_CHECKS,
        key_refusal: KeyRefusal = no_refusal,
        cache_entries: int = 4096,
    ) -> None:
        super().__init__(runtime)
        if max_depth < 1 or max_signature_checks < 1:
            raise ConfigError("max depth and signature budget must be at least 1")
        self.max_depth = max_depth
        self.max_signature_checks = max_signature_checks
        #: The key manager's status of a public key (None: usable). By default it
        #: is read from the key manager's KeyStatus records in the same state
        #: bucket, at the validation's ``now`` (a revoked key breaks every chain).
        self.key_refusal = key_refusal
        self.cache = ChainCache(cache_entries)
        self.mirror: BucketMirror[object] | None = None
        self._index: tuple[int, TrustIndex] | None = None
        self._kv: Any = None
        # bad input and trust refusals are verdicts, not failures
        self.rpc = Dispatcher(
            "trust",
            {
                "add-anchor": operation(AddAnchorRequest, self._add_anchor),
                "remove-anchor": operation(RemoveAnchorRequest, self._remove_anchor),
                "add-cert": operation(AddCertRequest, self._add_cert),
                "revoke-cert": operation(RevokeCertRequest, self._revoke_cert),
                "validate": operation(ValidateRequest, self._validate),
                "list": operation(ListRequest, self._list),
            },
            self.stats,
            log,
            refusals=(TrustError,),
        )
        assert set(self.rpc.operations) == set(OPS)

    def extra_metadata(self) -> dict[str, str]:
        return {
            "max_depth": str(self.max_depth),
            "max_signature_checks": str(self.max_signature_checks),
        }

    async def setup(self) -> None:
        self._kv = await state_bucket(self.client, self.subjects)
        # every area decoded: its own records and the key manager's statuses
        self.mirror = BucketMirror(self.client, self.subjects.state_bucket, decode_state_record)
        await self.mirror.start()
        assert self.service is not None
        for op in OPS:
            await self.service.add_endpoint(
                EndpointConfig(
                    name=op,
                    subject=self.subjects.trust(op),
                    queue_group=TRUST_QUEUE,
                    handler=self.rpc.handler(op),
                )
            )

    async def teardown(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop()

    # ------------------------------------------------------------ plumbing
    def _ack(self, op: str, key: str, changed: bool, revision: int, detail: str) -> TrustAck:
        return TrustAck(op=op, key=key, changed=changed, revision=revision, detail=detail)

    async def _applied(self, revision: int) -> None:
        assert self.mirror is not None
        await self.mirror.wait_for_revision(revision, MIRROR_WAIT_S)

    async def _get(self, key: str) -> Any | None:
        try:
            return await self._kv.get(key)
        except KeyNotFoundError:  # includes deleted keys
            return None

    # ------------------------------------------------------------ operations
    async def _add_anchor(self, req: AddAnchorRequest) -> TrustAck:
        key = state_key("anchor", req.public_key.hex())
        for _ in range(CAS_ATTEMPTS):
            entry = await self._get(key)
            record = TrustAnchor(req.public_key, req.label, now_ms())
            try:
                if entry is None:
                    revision = await self._kv.create(key, record.encode())
                    await self._applied(revision)
                    return self._ack("add-anchor", key, True, revision, "anchor added")
                try:
                    current = TrustAnchor.decode(entry.value or b"")
                    if current.label == req.label:
                        return self._ack(
                            "add-anchor", key, False, entry.revision, "anchor already present"
                        )
                    record = replace(record, added_ms=current.added_ms)
                except CodecError:
                    log.warning("replacing malformed anchor record %s", key)
                revision = await self._kv.update(key, record.encode(), last=entry.revision)
                await self._applied(revision)
                return self._ack("add-anchor", key, True, revision, "anchor label updated")
            except KeyWrongLastSequenceError:
                continue
        raise TrustConflict(f"{key} kept changing; retry")

    async def _remove_anchor(self, req: RemoveAnchorRequest) -> TrustAck:
        key = state_key("anchor", req.public_key.hex())
        for _ in range(CAS_ATTEMPTS):
            entry = await self._get(key)
            if entry is None:
                raise TrustNotFound(f"no trust anchor {req.public_key.hex()}")
            try:
                await self._kv.delete(key, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            status = await self._kv.status()
            revision = int(status.stream_info.state.last_seq)
            await self._applied(revision)
            return self._ack("remove-anchor", key, True, revision, "anchor removed")
        raise TrustConflict(f"{key} kept changing; retry")

    async def _add_cert(self, req: AddCertRequest) -> TrustAck:
        cert = TrustCertificate.decode(req.cert)
        if not cert.signature_ok():
            raise TrustBadSignature(
                f"certificate {cert.serial!r} is not signed by its issuer {cert.issuer_key.hex()}"
            )
        raw = cert.encode()
        key = state_key("cert", cert.serial)
        for _ in range(CAS_ATTEMPTS):
            entry = await self._get(key)
            if entry is not None:
                try:
                    current = TrustCertRecord.decode(entry.value or b"")
                except CodecError:
                    current = None
                if current is not None and current.cert == raw:
                    state = "revoked" if current.revoked else "stored"
                    return self._ack(
                        "add-cert", key, False, entry.revision, f"certificate already {state}"
                    )
                if current is not None:
                    raise TrustConflict(f"serial {cert.serial!r} is taken by another certificate")
            try:
                record = TrustCertRecord(cert=raw).encode()
                revision = (
                    await self._kv.create(key, record)
                    if entry is None
                    else await self._kv.update(key, record, last=entry.revision)
                )
            except KeyWrongLastSequenceError:
                continue
            await self._applied(revision)
            return self._ack("add-cert", key, True, revision, "certificate stored")
        raise TrustConflict(f"{key} kept changing; retry")

    async def _revoke_cert(self, req: RevokeCertRequest) -> TrustAck:
        key = state_key("cert", req.serial)
        for _ in range(CAS_ATTEMPTS):
            entry = await self._get(key)
            if entry is None:
                raise TrustNotFound(f"no certificate with serial {req.serial!r}")
            current = TrustCertRecord.decode(entry.value or b"")
            if current.revoked:
                return self._ack(
                    "revoke-cert", key, False, entry.revision, f"already revoked: {current.reason}"
                )
            updated = replace(
                current, revoked=True, reason=req.reason or "revoked", revoked_ms=now_ms()
            )
            try:
                revision = await self._kv.update(key, updated.encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            await self._applied(revision)
            return self._ack("revoke-cert", key, True, revision, "certificate revoked")
        raise TrustConflict(f"{key} kept changing; retry")

    def _refusal_at(self, now: int) -> KeyRefusal:
        """The configured key refusal, else the key manager's statuses at ``now``."""
        if self.key_refusal is not no_refusal:
            return self.key_refusal
        items = self.mirror.items if self.mirror is not None else {}
        return functools.partial(key_refusal, items, now_ms=now)

    async def _validate(self, req: ValidateRequest) -> ChainReply:
        assert self.mirror is not None
        if req.min_revision is not None:
            await self.mirror.wait_for_revision(req.min_revision, MIRROR_WAIT_S)
        revision = self.mirror.revision
        now = req.now_ms if req.now_ms is not None else now_ms()
        refusal = self._refusal_at(now)
        result = self.cache.get(revision, req.leaf_key, req.purpose, req.presented, now, refusal)
        if result is None:
            result = self._index_at(revision).validate(
                req.leaf_key,
                req.presented,
                req.purpose,
                now,
                refusal,
                max_depth=self.max_depth,
                max_signature_checks=self.max_signature_checks,
            )
            self.cache.put(revision, req.leaf_key, req.purpose, req.presented, result)
        else:
            self.stats.count("validate_cache_hit")
        self.stats.count("chain_ok" if result.ok else f"chain_{result.code}")
        return ChainReply(
            ok=result.ok,
            code=result.code,
            reason=result.reason,
            failed_link=result.failed_link,
            path=tuple(c.encode() for c in result.path),
            signature_checks=result.signature_checks,
            expires_ms=result.expires_ms,
            revision=revision,
            now_ms=now,
        )

    def _index_at(self, revision: int) -> TrustIndex:
        """The candidate index of the mirror, rebuilt only when the state revision moves."""
        assert self.mirror is not None
        if self._index is None or self._index[0] != revision:
            self._index = (revision, TrustIndex.from_state(self.mirror.items))
        return self._index[1]

    async def _list(self, req: ListRequest) -> TrustListing:
        assert self.mirror is not None
        items = dict(self.mirror.items)
        anchors = [v for k, v in sorted(items.items()) if isinstance(v, TrustAnchor)]
        certs = [
            TrustCertRecord(v.cert.encode(), v.revoked, v.reason, v.revoked_ms)
            for k, v in sorted(items.items())
            if isinstance(v, StoredCert)
        ]
        return TrustListing(
            anchors=tuple(anchors[:MAX_LISTED]),
            certs=tuple(certs[:MAX_LISTED]),
            revision=self.mirror.revision,
            truncated=len(anchors) > MAX_LISTED or len(certs) > MAX_LISTED,
        )
