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

from nats.micro.service import EndpointConfig

from bus.kv import UNCHANGED, KeyValue, NoChange
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.service import Dispatcher, operation
from bus.state import BucketMirror, state_bucket, state_key
from bus.subjects import TRUST_QUEUE
from schemas.errors import (
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
        self._anchors: KeyValue[TrustAnchor]  # set by setup (the state bucket)
        self._certs: KeyValue[TrustCertRecord]
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
        kv = await state_bucket(self.client, self.subjects)
        # one bucket, one typed handle per record type; a lost race answers TRUST_CONFLICT
        self._anchors = KeyValue.of(kv, TrustAnchor, conflict=TrustConflict)
        self._certs = KeyValue.of(kv, TrustCertRecord, conflict=TrustConflict)
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

    # ------------------------------------------------------------ operations
    async def _add_anchor(self, req: AddAnchorRequest) -> TrustAck:
        key = state_key("anchor", req.public_key.hex())

        def change(current: TrustAnchor | None) -> TrustAnchor | NoChange:
            record = TrustAnchor(req.public_key, req.label, now_ms())
            if current is None:  # absent, or a malformed record being replaced
                return record
            if current.label == req.label:
                return UNCHANGED
            return replace(record, added_ms=current.added_ms)

        result = await self._anchors.update(key, change, replace_unreadable=True)
        if not result.changed:
            return self._ack("add-anchor", key, False, result.revision, "anchor already present")
        await self._applied(result.revision)
        detail = "anchor added" if result.created else "anchor label updated"
        return self._ack("add-anchor", key, True, result.revision, detail)

    async def _remove_anchor(self, req: RemoveAnchorRequest) -> TrustAck:
        key = state_key("anchor", req.public_key.hex())
        revision = await self._anchors.delete(key)
        if revision is None:
            raise TrustNotFound(f"no trust anchor {req.public_key.hex()}")
        await self._applied(revision)
        return self._ack("remove-anchor", key, True, revision, "anchor removed")

    async def _add_cert(self, req: AddCertRequest) -> TrustAck:
        cert = TrustCertificate.decode(req.cert)
        if not cert.signature_ok():
            raise TrustBadSignature(
                f"certificate {cert.serial!r} is not signed by its issuer {cert.issuer_key.hex()}"
            )
        raw = cert.encode()
        key = state_key("cert", cert.serial)

        def change(current: TrustCertRecord | None) -> TrustCertRecord | NoChange:
            if current is None:  # absent, or a malformed record being replaced
                return TrustCertRecord(cert=raw)
            if current.cert == raw:
                return UNCHANGED
            raise TrustConflict(f"serial {cert.serial!r} is taken by another certificate")

        result = await self._certs.update(key, change, replace_unreadable=True)
        if not result.changed:
            assert result.value is not None
            state = "revoked" if result.value.revoked else "stored"
            return self._ack(
                "add-cert", key, False, result.revision, f"certificate already {state}"
            )
        await self._applied(result.revision)
        return self._ack("add-cert", key, True, result.revision, "certificate stored")

    async def _revoke_cert(self, req: RevokeCertRequest) -> TrustAck:
        key = state_key("cert", req.serial)

        def change(current: TrustCertRecord | None) -> TrustCertRecord | NoChange:
            if current is None:
                raise TrustNotFound(f"no certificate with serial {req.serial!r}")
            if current.revoked:
                return UNCHANGED
            return replace(
                current, revoked=True, reason=req.reason or "revoked", revoked_ms=now_ms()
            )

        # a malformed record is not replaced: its CodecError is the answer (fail closed)
        result = await self._certs.update(key, change)
        if not result.changed:
            assert result.value is not None
            return self._ack(
                "revoke-cert",
                key,
                False,
                result.revision,
                f"already revoked: {result.value.reason}",
            )
        await self._applied(result.revision)
        return self._ack("revoke-cert", key, True, result.revision, "certificate revoked")

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
