"""The tally worker: batches requests into ballots, counts votes, certifies.

Flow for one request::

    client ──request──▶ tally (queue group 'tally')
                          │ strict decode; idempotency (memory, then KV)
                          ▼
                        queue ──▶ ballot (1..max_batch requests, pool frozen at its epoch)
                          │        signed by the tally, published to {p}.ballot;
                          │        verifiers vote to {p}.vote.{tally_id}
                          ▼
    verifiers ──vote──▶ BallotRound.offer (pure admission rules + early decision)
                          ▼
                        certificate signed by the tally ──▶ reply, cache, KV

A ballot is judged only at the pool epoch it names (verifiers refuse others),
so when this tally's pool view moves to a new epoch, the open requests of
older-epoch ballots are re-balloted at the new one rather than left to time out.

Batching is adaptive: a request goes out at once while fewer than
``max_inflight`` ballots are open (idle → ballot of one); under load requests
queue and the next free slot takes up to ``max_batch`` of them in one ballot,
so one vote signature per verifier covers many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from bus.decisions import DecisionStore, claims_scope, ensure_audit_stream, scope_id
from bus.membership import PoolView, PoolWatcher, register_tally
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.state import BucketMirror
from bus.subjects import TALLY_QUEUE
from bus.tracing import (
    TRACEPARENTS_HEADER,
    extract_context,
    format_traceparent,
    format_traceparents,
    inject_headers,
    parse_traceparents,
    start_messaging_span,
    tracing_active,
)
from schemas.certificate import certificate_signed_by, sign_certificate, verify_certificate
from schemas.codec import encode
from schemas.errors import (
    CertificateInvalid,
    CodecError,
    ConfigError,
    ConsensusError,
    Overloaded,
    PoolTooSmall,
    RequestIdConflict,
    ShuttingDown,
    TransportError,
    VoteRejected,
)
from schemas.identity import AgentIdentity, verify_signature
from schemas.messages import (
    MAX_BALLOT_REQUESTS,
    Ballot,
    ConsensusResult,
    ErrorReply,
    Health,
    VerificationRequest,
    Vote,
)
from schemas.quorum import DEFAULT_THRESHOLD, MIN_POOL, Decision, QuorumRule
from schemas.signing import request_digest, sign_ballot
from workers.consensus.ballot import BallotRound

log = logging.getLogger("agentic_payments.tally")
#: Low-cardinality name of reply inboxes in span names (nats-py's inbox prefix).
INBOX_TEMPLATE = "_INBOX"
MAX_BALLOT_BYTES = 512 * 1024
STORE_DEGRADED_S = 60.0  # a store/lookup error keeps health Degraded this long
#: A request is re-balloted at most this many times because the verdict state
#: changed under its round; after that its round runs to its deadline.
MAX_STATE_REBALLOTS = 2
#: ... and at most this many times because the pool epoch moved under its round.
MAX_EPOCH_REBALLOTS = 3
STATE_CATCH_UP_S = 1.0
#: Hashes of recent vote bytes (16 bytes each): exact copies are dropped before
#: they are decoded. Oldest first out; the round's own checks stay the backstop.
MAX_SEEN_VOTES = 65_536
#: Callers one request id may hold waiting (one per reply subject); more are
#: answered OVERLOADED at once, so identical requests cannot grow memory.
MAX_WAITERS = 32


#: An idempotency scope (bus/decisions.scope_id): the signer's (key, id), or exact bytes.
Scope = str


@dataclass
class Pending:
    request_id: str
    raw: bytes
    digest: bytes
    received: float
    waiters: list[str] = field(default_factory=list)
    #: the request's public key; ``scope`` is where it is registered in ``_pending``
    public_key: bytes = b""
    scope: Scope = ""
    #: whether its signature verifies under ``public_key`` (checked only on a clash)
    signed: bool | None = None
    #: The tally's ``process`` span of this request (receipt → reply), when tracing.
    span: Span | None = None
    lookup: asyncio.Task[None] | None = None
    done: bool = False
    queued: bool = True
    reballots: int = 0
    epoch_reballots: int = 0


@dataclass
class LiveBallot:
    round: BallotRound
    pendings: list[Pending]
    timer: asyncio.TimerHandle
    traced: bool = False
    first_vote_ns: int = 0
    #: per verifier key: its per-request span contexts (``ap-traceparents`` of its vote)
    vote_traces: dict[bytes, list[SpanContext | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class TallyOptions:
    threshold: Fraction = DEFAULT_THRESHOLD
    deadline_s: float = 5.0
    max_batch: int = 64
    max_inflight: int = 4
    max_pending: int = 20_000
    max_pending_bytes: int = 64 * 1024 * 1024
    cache_size: int = 100_000
    durable_idempotency: bool = True
    audit_days: float = 30.0
    #: the pool floor: no ballot opens while fewer active verifiers are in the pool
    #: (POOL_TOO_SMALL), so a pool shrunk by quarantines or removals decides nothing
    min_pool: int = MIN_POOL

    def __post_init__(self) -> None:
        if self.min_pool < MIN_POOL:
            raise ConfigError(f"min pool {self.min_pool} is below the protocol minimum {MIN_POOL}")
        if not Fraction(1, 2) < self.threshold <= 1:
            raise ConfigError(
                f"threshold {self.threshold} must be in (1/2, 1] so that "
                "VALID and INVALID quorums always intersect"
            )
        if self.deadline_s <= 0 or self.max_batch < 1 or self.max_inflight < 1:
            raise ConfigError("deadline, max batch and max in-flight ballots must be positive")
        if self.max_batch > MAX_BALLOT_REQUESTS:
            raise ConfigError(
                f"max batch {self.max_batch} exceeds the {MAX_BALLOT_REQUESTS} "
                "requests a verifier accepts in one ballot"
            )
        if not 0 <= self.audit_days < 100_000:
            raise ConfigError("audit retention must be 0 (no stream) or a number of days")
        if self.max_pending < 1 or self.max_pending_bytes < 1 or self.cache_size < 1:
            raise ConfigError("max pending, max pending bytes and cache size must be positive")


class TallyWorker(Worker):
    """Batches verification requests into ballots and certifies the BFT decision."""

    kind = "tally"

    def __init__(
        self,
        runtime: RuntimeConfig,
        options: TallyOptions | None = None,
        *,
        key_file: Path | None = None,
    ) -> None:
        super().__init__(runtime)
        self.options = options or TallyOptions()
        self.key_file = key_file or runtime.data_dir / "keys" / f"tally-{self.worker_id}.key"
        self.identity = AgentIdentity.load_or_create(self.key_file)
        self._pool: PoolWatcher | None = None
        self._state: BucketMirror[None] | None = None
        self._store: DecisionStore | None = None
        self._lookups: list[Pending] = []
        self._lookup_scheduled = False
        self._queue: deque[Pending] = deque()
        self._pending: dict[Scope, Pending] = {}
        self._ballots: dict[str, LiveBallot] = {}
        self._results: OrderedDict[Scope, tuple[bytes, bytes]] = OrderedDict()
        self._seen_votes: OrderedDict[bytes, None] = OrderedDict()
        self._flush_scheduled = False
        self._open_ballots = 0
        self._pending_bytes = 0
        self._store_error_at = -STORE_DEGRADED_S

    def gauges(self) -> dict[str, float]:
        return {
            **super().gauges(),
            "pending": len(self._pending),
            "queued": len(self._queue),
            "pending_bytes": self._pending_bytes,
            "open_ballots": self._open_ballots,
            "pool_size": len(self._pool.view.keys) if self._pool is not None else 0,
        }

    def extra_metadata(self) -> dict[str, str]:
        t = self.options.threshold
        return {
            "public_key": self.identity.public_key_hex,
            "threshold": f"{t.numerator}/{t.denominator}",
        }

    # ------------------------------------------------------------------ setup
    async def setup(self) -> None:
        await register_tally(self.client, self.subjects, self.worker_id, self.identity)
        # re-ballot as soon as a re-read of the pool moves its epoch (no polling)
        self._pool = PoolWatcher(self.client, self.subjects, on_change=self._epoch_moved)
        await self._pool.start()
        # Only the revision matters here: each ballot is judged under the verdict
        # state the tally last saw (votes at another revision are not counted).
        self._state = BucketMirror(self.client, self.subjects.state_bucket, lambda _k, _v: None)
        await self._state.start()
        if self.options.durable_idempotency:
            self._store = DecisionStore(self.client, self.subjects, self._store_error)
            await self._store.start()
        if self.options.audit_days > 0:
            await ensure_audit_stream(self.client, self.subjects, self.options.audit_days)
        await self.subscribe(self.subjects.votes(self.worker_id), self._on_vote)
        await self.subscribe_intake(
            self.subjects.request, self._on_request, queue=TALLY_QUEUE, replies=True
        )

    def _epoch_moved(self, view: PoolView) -> None:
        """PoolWatcher's change hook: re-ballot when the pool epoch moves, because
        verifiers vote only at their current epoch, so a ballot at an older one
        gets no more votes."""
        self._reballot_new_epoch(view.epoch)

    def _reballot_new_epoch(self, epoch: int) -> None:
        requeue: list[Pending] = []
        for live in list(self._ballots.values()):
            if live.round.epoch >= epoch or live.round.open_count == 0:
                continue
            indexes = [
                i
                for i in live.round.open_indexes()
                if live.pendings[i].epoch_reballots < MAX_EPOCH_REBALLOTS
                and not live.pendings[i].done
            ]
            if not indexes:
                continue
            live.round.abandon(indexes)
            if live.round.open_count == 0:
                self._open_ballots -= 1
            requeue.extend(live.pendings[i] for i in indexes)
        if not requeue:
            return
        self.stats.count("reballots_new_epoch", len(requeue))
        log.info("pool epoch %d: re-balloting %d open requests", epoch, len(requeue))
        for pending in reversed(requeue):
            pending.epoch_reballots += 1
            pending.queued = True
            self._queue.appendleft(pending)
        self._flush()

    async def wait_idle(self) -> None:
        # polled only during shutdown; an Event per counter would cost on the hot path
        while self._pending or self._open_ballots or self._tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def teardown(self) -> None:
        """After the bounded drain: whoever still waits gets SHUTTING_DOWN, not silence."""
        for live in self._ballots.values():
            live.timer.cancel()
        for pending in list(self._pending.values()):
            self._drop_pending(pending)
            span, pending.span = pending.span, None
            _end_span(span, "error.type", ShuttingDown.code)
            self.stats.count("request_rejected_SHUTTING_DOWN")
            for reply in pending.waiters:
                with contextlib.suppress(Exception):
                    await self._reply_error(
                        reply,
                        ShuttingDown.code,
                        "tally stopped before a decision; retry with the same request id",
                        pending.request_id,
                    )
        if self._pool is not None:
            await self._pool.stop()
        if self._state is not None:
            await self._state.stop()
        if self._store is not None:
            await self._store.stop()
        # last: a flush waits for a PONG that a gone or hung NATS never sends, and a
        # bounded stop cancels it there (bus/runtime.py); local state is released first
        with contextlib.suppress(Exception):
            await self.client.flush()

    # ------------------------------------------------------------------ intake
    async def _on_request(self, msg: Msg) -> None:
        """Intake callback: never raises; an unexpected failure answers INTERNAL."""
        if not msg.reply:
            self.stats.count("request_without_reply")
            return
        try:
            await self._accept(msg)
        except Exception:
            log.exception("internal error on a request")
            self.stats.record(0.0, ok=False)
            with contextlib.suppress(Exception):
                await self._reply_error(
                    msg.reply, "INTERNAL", "internal error; retry with the same request id"
                )

    async def _accept(self, msg: Msg) -> None:
        received = time.perf_counter()
        try:
            request = VerificationRequest.decode(msg.data)
        except CodecError as exc:
            self.stats.count(f"request_rejected_{exc.code}")
            await self._reply_error(msg.reply, exc.code, str(exc))
            return
        rid = request.request_id
        digest = request_digest(msg.data)
        # Idempotency is scoped to the signer (bus/decisions.py): (key, id) for the
        # requests its key signed, the exact bytes for those whose signature fails.
        scope = scope_id(request.public_key, rid)
        exact = scope_id(request.public_key, rid, digest)
        span = self._request_span(msg, rid) if tracing_active() else None
        cached_key = exact if exact in self._results else scope
        cached = self._results.get(cached_key)
        if cached is not None:  # under the scope, only a decision that holds it
            _end_span(span, "agentic_payments.idempotent", "cached")
            if cached[0] == digest or self._signed(request):
                self._answer_cached(msg.reply, rid, cached_key, digest, cached)
            else:  # its signature fails: only its own earlier decision answers it
                self.spawn(self._answer_unclaimed(msg.reply, rid, exact, digest))
            return
        pending = self._pending.get(exact) or self._pending.get(scope)
        if pending is not None and pending.digest != digest:
            if self._holds_scope(pending):
                _end_span(span, "error.type", RequestIdConflict.code)
                if self._signed(request):
                    await self._reply_conflict(msg.reply, rid)
                else:
                    self.spawn(self._answer_unclaimed(msg.reply, rid, exact, digest))
                return
            # its signature fails: it keeps only its own bytes, and the id stays free
            self.stats.count("request_scope_unclaimed")
            self._rescope(pending, scope_id(pending.public_key, rid, pending.digest))
            pending = None
        if pending is not None:
            if len(pending.waiters) >= MAX_WAITERS:
                _end_span(span, "error.type", Overloaded.code)
                self.stats.count("request_rejected_waiters_full")
                await self._reply_error(
                    msg.reply,
                    Overloaded.code,
                    f"{MAX_WAITERS} callers already wait for this request id; "
                    "retry with the same request id",
                    rid,
                )
            else:
                _end_span(span, "agentic_payments.idempotent", "joined")
                pending.waiters.append(msg.reply)
                self.stats.count("idempotent_joined")
            return
        if (
            len(self._pending) >= self.options.max_pending
            or self._pending_bytes + len(msg.data) > self.options.max_pending_bytes
        ):
            _end_span(span, "error.type", Overloaded.code)
            self.stats.count("request_rejected_OVERLOADED")
            await self._reply_error(
                msg.reply,
                Overloaded.code,
                "tally holds its maximum of pending requests or bytes; "
                "retry with the same request id",
                rid,
            )
            return
        pending = Pending(
            rid,
            msg.data,
            digest,
            received,
            [msg.reply],
            public_key=request.public_key,
            scope=scope,
            span=span,
        )
        self._pending[scope] = pending
        self._pending_bytes += len(msg.data)
        self._enqueue(pending)
        if self._store is not None:  # runs alongside the round; adds no latency
            self._lookups.append(pending)
            if not self._lookup_scheduled:
                self._lookup_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_lookups)

    async def _answer_unclaimed(self, reply: str, rid: str, exact: Scope, digest: bytes) -> None:
        """A request whose signature fails, for an id its key's holder already uses:
        its own stored decision if it has one (a retry gets the same answer), else
        REQUEST_ID_CONFLICT. It never starts a round that could take the id."""
        data = None
        if self._store is not None:
            try:
                data = (await self._store.get_many([exact])).get(exact)
            except TransportError as exc:
                self._store_trouble("decision_lookup_errors", exc)
        stored = self._trusted_stored(rid, data) if data else None
        if stored is not None and data is not None and stored.request_digest == digest:
            self.stats.count("idempotent_hits_durable")
            self._remember(exact, digest, data)
            await self.client.publish(reply, data)
            return
        await self._reply_conflict(reply, rid)

    def _signed(self, request: VerificationRequest) -> bool:
        """Whether a request's signature verifies under its own key (checked only
        when it clashes with another request for the same id)."""
        self.stats.count("request_signature_checks")
        return verify_signature(request.public_key, request.message, request.signature)

    def _holds_scope(self, pending: Pending) -> bool:
        """Whether ``pending`` holds its (key, id): its signature verifies under its key.

        Checked only when another request clashes with it (a signature check here,
        not per request), and remembered."""
        if pending.signed is None:
            pending.signed = self._signed(VerificationRequest.decode(pending.raw))
        return pending.signed

    def _rescope(self, pending: Pending, scope: Scope) -> None:
        """Move a pending request to another idempotency scope (its exact bytes)."""
        if self._pending.get(pending.scope) is pending:
            del self._pending[pending.scope]
        pending.scope = scope
        self._pending[scope] = pending

    def _request_span(self, msg: Msg, rid: str) -> Span | None:
        """The ``process`` span of one request, child of the client's ``send`` span;
        None when the sampler drops it (then nothing downstream is traced either)."""
        span = start_messaging_span(
            "process",
            msg.subject,
            kind=SpanKind.CONSUMER,
            parent=extract_context(msg.headers),
            attributes={
                "messaging.consumer.group.name": TALLY_QUEUE,
                "messaging.message.conversation_id": rid,
                "messaging.message.body.size": len(msg.data),
                "messaging.client.id": self.worker_id,
            },
        )
        return span if span.is_recording() else None

    def _answer_cached(
        self, reply: str, rid: str, scope: Scope, digest: bytes, cached: tuple[bytes, bytes]
    ) -> None:
        """A remembered answer: under a signer's scope only decisions that hold it are
        remembered (``_remember``), so other bytes there are a conflict."""
        if cached[0] != digest:
            self.spawn(self._reply_conflict(reply, rid))
            return
        self._results.move_to_end(scope)
        self.stats.count("idempotent_hits")
        self.spawn(self.client.publish(reply, cached[1]))

    def _flush_lookups(self) -> None:
        """One batched decisions-bucket read for every request that arrived this tick."""
        self._lookup_scheduled = False
        batch, self._lookups = self._lookups, []
        if batch:
            task = self.spawn(self._lookup(batch))
            for pending in batch:
                pending.lookup = task

    async def _lookup(self, batch: list[Pending]) -> None:
        """Were these requests decided before, by any tally or an earlier run of this one?

        Runs concurrently with the requests' round. A stored certificate is the
        answer (the new round's result is dropped); a round that finishes first
        waits for this lookup before answering. Each request is looked up under
        its exact bytes and under its signer's scope: a certificate there for other
        bytes is a conflict only if it holds the scope (bus/decisions.claims_scope).
        """
        assert self._store is not None
        scopes: list[str] = []
        for p in batch:
            scopes += [scope_id(p.public_key, p.request_id, p.digest), p.scope]
        try:
            found = await self._store.get_many(scopes)
        except TransportError as exc:  # prefer availability, but say so
            self._store_trouble("decision_lookup_errors", exc)
            return
        for pending in batch:
            if pending.done:
                continue
            exact = scope_id(pending.public_key, pending.request_id, pending.digest)
            for key in dict.fromkeys((exact, pending.scope)):
                data = found.get(key)
                stored = self._trusted_stored(pending.request_id, data) if data else None
                if stored is None or data is None:
                    continue
                if stored.request_digest != pending.digest and (
                    key == exact or not claims_scope(stored)
                ):
                    continue  # not an answer, and it blocks nobody
                self.stats.count("idempotent_hits_durable")
                self._complete(pending, data, stored, store=False)
                break

    def _trusted_stored(self, request_id: str, data: bytes) -> ConsensusResult | None:
        """A stored certificate we may hand out, or None (counted and logged).

        The bucket is shared, so its content is checked like any certificate:
        for this request id, and either verifiable against the current pool
        with our threshold, or signed by this tally's own key (for an older
        epoch whose pool we no longer know).
        """
        try:
            stored = ConsensusResult.decode(data)
            if stored.request_id != request_id:
                raise CertificateInvalid("stored under another request id")
            if stored.decision == Decision.TIMEOUT:  # never stored by us: not final
                raise CertificateInvalid("a TIMEOUT is not a final decision")
            assert self._pool is not None
            view = self._pool.view
            network = self.subjects.prefix
            if stored.epoch == view.epoch:
                verify_certificate(
                    stored, view.keys, threshold=self.options.threshold, network=network
                )
            elif not certificate_signed_by(stored, self.identity.public_key, network=network):
                raise CertificateInvalid(
                    f"epoch {stored.epoch} is not the current {view.epoch} and it is not our own"
                )
        except (CodecError, CertificateInvalid) as exc:
            self.stats.count("decision_lookup_rejected")
            log.warning("ignoring stored certificate for %r: %s", request_id, exc)
            return None
        return stored

    def _enqueue(self, pending: Pending) -> None:
        self._queue.append(pending)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    # ------------------------------------------------------------------ ballots
    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queue and self._open_ballots < self.options.max_inflight:
            batch: list[Pending] = []
            size = 0
            while (
                self._queue
                and len(batch) < self.options.max_batch
                and size + len(self._queue[0].raw) <= MAX_BALLOT_BYTES
            ):
                pending = self._dequeue()
                if pending is not None:
                    batch.append(pending)
                    size += len(pending.raw)
            if not batch and self._queue:  # a request larger than the budget goes alone
                pending = self._dequeue()
                if pending is not None:
                    batch.append(pending)
            if batch:
                self._start_ballot(batch)

    def _dequeue(self) -> Pending | None:
        """Next queued request, or None if it was answered meanwhile (from the bucket)."""
        pending = self._queue.popleft()
        pending.queued = False
        if pending.done:  # its bytes were kept in the budget until it left the queue
            self._pending_bytes -= len(pending.raw)
            return None
        return pending

    def _start_ballot(self, batch: list[Pending]) -> None:
        assert self._pool is not None
        view = self._pool.view
        rule = QuorumRule(len(view.keys), self.options.threshold)
        if rule.n < self.options.min_pool:
            error = PoolTooSmall(f"{rule.n} active verifiers, minimum {self.options.min_pool}")
            for pending in batch:
                self._fail(pending, error)
            return
        ballot_id = uuid.uuid4().hex
        issued_ms = now_ms()
        deadline_ms = issued_ms + int(self.options.deadline_s * 1000)
        state_rev = self._state.revision if self._state is not None else 0
        ballot_round = BallotRound(
            ballot_id=ballot_id,
            epoch=view.epoch,
            tally_id=self.worker_id,
            pool=view.keys,
            rule=rule,
            request_ids=tuple(p.request_id for p in batch),
            digests=tuple(p.digest for p in batch),
            network=self.subjects.prefix,
            state_rev=state_rev,
        )
        ballot = sign_ballot(
            self.identity,
            Ballot(
                ballot_id=ballot_id,
                epoch=view.epoch,
                tally_id=self.worker_id,
                deadline_ms=deadline_ms,
                requests=tuple(p.raw for p in batch),
                state_rev=state_rev,
                issued_ms=issued_ms,
            ),
            network=self.subjects.prefix,
        )
        timer = asyncio.get_running_loop().call_later(
            self.options.deadline_s, self._expire, ballot_id
        )
        traced = any(p.span is not None for p in batch)
        self._ballots[ballot_id] = LiveBallot(ballot_round, batch, timer, traced)
        self._open_ballots += 1
        spans: list[Span | None] = []
        headers: dict[str, str] | None = None
        if traced:
            spans = self._ballot_spans(ballot_id, view.epoch, batch)
            headers = _ballot_headers([s.get_span_context() if s else None for s in spans])
        self.spawn(self._publish_ballot(ballot.encode(), headers, spans))

    def _ballot_spans(self, ballot_id: str, epoch: int, batch: list[Pending]) -> list[Span | None]:
        """One ``send`` span per request, under that request's own ``process`` span.

        Each request's trace thus shows the ballot that carried it; the spans of
        one ballot share ``messaging.message.id`` (the ballot id)."""
        spans: list[Span | None] = []
        for index, pending in enumerate(batch):
            if pending.span is None:
                spans.append(None)
                continue
            spans.append(
                start_messaging_span(
                    "send",
                    self.subjects.ballot,
                    kind=SpanKind.PRODUCER,
                    parent=trace.set_span_in_context(pending.span),
                    attributes={
                        "messaging.message.id": ballot_id,
                        "messaging.message.conversation_id": pending.request_id,
                        "messaging.batch.message_count": len(batch),
                        "agentic_payments.ballot_index": index,
                        "agentic_payments.epoch": epoch,
                    },
                )
            )
        return spans

    async def _publish_ballot(
        self, data: bytes, headers: dict[str, str] | None, spans: list[Span | None]
    ) -> None:
        try:
            # no reply subject: verifiers send votes to {p}.vote.<tally_id> of the
            # signed ballot, never to a subject whoever delivered the bytes chose
            await self.client.publish(self.subjects.ballot, data, headers=headers)
        finally:
            for span in spans:
                if span is not None:
                    span.end()

    async def _on_vote(self, msg: Msg) -> None:
        """Vote intake. Exact copies are dropped by a hash of their bytes before they
        are even decoded; the round drops re-encoded copies, re-signings of the same
        verdicts and further votes of a known equivocator before any signature check
        (workers/consensus/ballot.py). ``vote_signature_checks`` counts the checks."""
        seen = hashlib.blake2b(msg.data, digest_size=16).digest()
        if seen in self._seen_votes:
            self.stats.count("vote_dropped_duplicate_bytes")
            return
        self._seen_votes[seen] = None
        if len(self._seen_votes) > MAX_SEEN_VOTES:
            self._seen_votes.popitem(last=False)
        try:
            vote = Vote.decode(msg.data)
        except CodecError as exc:
            self.stats.count(f"vote_rejected_{exc.code}")
            return
        live = self._ballots.get(vote.ballot_id)
        if live is None:
            self.stats.count("vote_rejected_VOTE_UNKNOWN_BALLOT")
            return
        was_open = live.round.open_count > 0
        checks = live.round.signature_checks
        try:
            newly = live.round.offer(vote)
        except VoteRejected as exc:
            self.stats.count(f"vote_rejected_{exc.code}")
            if exc.code == "VOTE_EQUIVOCATION":
                await self._report_equivocation(live.round)
            elif exc.code == "VOTE_STATE_MISMATCH" and was_open and live.round.stale_state:
                self._reballot_newer_state(live)
            return
        finally:
            if live.round.signature_checks != checks:
                self.stats.count("vote_signature_checks", live.round.signature_checks - checks)
        if not was_open:
            self.stats.count("votes_after_decision")
        if live.traced:
            self._note_vote_trace(live, vote, msg.headers)
        self._finish(live, newly)
        if was_open and live.round.open_count == 0:
            self._open_ballots -= 1
            self._flush()

    def _reballot_newer_state(self, live: LiveBallot) -> None:
        """Too many verifiers judged under a newer verdict state for this round to
        reach q: close its open requests and ballot them again once this tally has
        caught up with that state, rather than mixing revisions or waiting for the
        deadline. Bounded per request (MAX_STATE_REBALLOTS)."""
        indexes = [
            i
            for i in live.round.open_indexes()
            if live.pendings[i].reballots < MAX_STATE_REBALLOTS and not live.pendings[i].done
        ]
        if not indexes:
            return
        live.round.abandon(indexes)
        self.stats.count("reballots_newer_state", len(indexes))
        if live.round.open_count == 0:
            self._open_ballots -= 1
        # a revision at least n-q+1 signed votes reached: one Byzantine key cannot
        # make us wait for a revision that does not exist
        rule = live.round.rule
        target = sorted(live.round.newer_state.values(), reverse=True)[rule.n - rule.q]
        self.spawn(self._requeue_after_catch_up([live.pendings[i] for i in indexes], target))

    async def _requeue_after_catch_up(self, pendings: list[Pending], target: int) -> None:
        if self._state is not None:
            await self._state.wait_for_revision(target, STATE_CATCH_UP_S)
        for pending in reversed(pendings):
            pending.reballots += 1
            pending.queued = True
            self._queue.appendleft(pending)
        self._flush()

    @staticmethod
    def _note_vote_trace(live: LiveBallot, vote: Vote, headers: dict[str, str] | None) -> None:
        if not live.first_vote_ns:
            live.first_vote_ns = time.time_ns()
        value = headers.get(TRACEPARENTS_HEADER) if headers else None
        if value:
            live.vote_traces[vote.verifier_key] = parse_traceparents(value, len(live.pendings))

    def _trace_decision(
        self, live: LiveBallot, index: int, pending: Pending, cert: ConsensusResult
    ) -> None:
        """The ``process`` span of the votes that decided request ``index``, linked to
        each counted verifier's span for this request (from its vote's headers)."""
        assert pending.span is not None
        links = []
        for proof in cert.votes:
            contexts = live.vote_traces.get(proof.verifier_key)
            ctx = contexts[index] if contexts else None
            if ctx is not None:
                links.append(
                    Link(
                        ctx,
                        {
                            "agentic_payments.verifier_key": proof.verifier_key.hex(),
                            "agentic_payments.valid": proof.valid,
                        },
                    )
                )
        decision_attrs: dict[str, str | int] = {
            "agentic_payments.decision": cert.decision,
            "agentic_payments.votes_for": cert.votes_for,
            "agentic_payments.votes_against": cert.votes_against,
            "agentic_payments.n": cert.n,
            "agentic_payments.q": cert.q,
            "agentic_payments.epoch": cert.epoch,
        }
        start_messaging_span(
            "process",
            self.subjects.votes(self.worker_id),
            kind=SpanKind.CONSUMER,
            parent=trace.set_span_in_context(pending.span),
            links=links,
            start_time=live.first_vote_ns or None,
            attributes={
                "messaging.message.id": cert.ballot_id,
                "messaging.message.conversation_id": cert.request_id,
                "messaging.batch.message_count": len(cert.votes),
                **decision_attrs,
            },
        ).end()
        pending.span.set_attributes(
            {"agentic_payments.ballot_id": cert.ballot_id, **decision_attrs}
        )

    def _expire(self, ballot_id: str) -> None:
        """Deadline: undecided requests become TIMEOUT/NO_QUORUM; the round is forgotten.

        A fully decided round is kept until its deadline so that late votes are
        still checked (equivocation and forgery are caught even after the
        decision) — only then is the ballot id unknown.
        """
        live = self._ballots.pop(ballot_id, None)
        if live is None:
            return
        if live.round.open_count > 0:
            self.stats.count("ballots_expired")
            self._open_ballots -= 1
            self._finish(live, live.round.expire())
            self._flush()

    def _finish(self, live: LiveBallot, indexes: list[int]) -> None:
        audit: list[tuple[str, bytes]] = []
        for i in indexes:
            pending = live.pendings[i]
            latency_ms = (time.perf_counter() - pending.received) * 1000
            self.stats.record(latency_ms, ok=True)
            if pending.done:  # already answered from the decisions bucket
                continue
            cert = sign_certificate(
                self.identity,
                live.round.certificate(
                    i,
                    tally_key=self.identity.public_key,
                    decided_at_ms=now_ms(),
                    latency_us=round(latency_ms * 1000),
                ),
                network=self.subjects.prefix,
            )
            self.stats.count(f"decision_{cert.decision}")
            if pending.span is not None:
                self._trace_decision(live, i, pending, cert)
            # A TIMEOUT is an answer for now, not the final word: a retry runs a new round.
            final = cert.decision != Decision.TIMEOUT
            data = cert.encode()
            audit.append((self.subjects.decision(cert.decision), data))
            if pending.lookup is not None and not pending.lookup.done():
                self.spawn(self._complete_after_lookup(pending, data, cert, final))
            else:
                self._complete(pending, data, cert, final=final, store=final)
        if audit:
            self.spawn(self._publish_audit(audit))

    async def _publish_audit(self, records: list[tuple[str, bytes]]) -> None:
        """Core publishes (no ack wait): the audit stream, if any, stores them server-side."""
        for subject, data in records:
            await self.client.publish(subject, data)

    async def _complete_after_lookup(
        self, pending: Pending, data: bytes, cert: ConsensusResult, final: bool
    ) -> None:
        assert pending.lookup is not None
        await asyncio.wait([pending.lookup])
        if not pending.done:
            self._complete(pending, data, cert, final=final, store=final)

    def _complete(
        self,
        pending: Pending,
        data: bytes,
        cert: ConsensusResult,
        *,
        final: bool = True,
        store: bool,
    ) -> None:
        """Answer every waiter of ``pending`` once. A final answer is remembered for
        retries; ``store`` also writes it to the decisions bucket — under the signer's
        scope if it holds it (bus/decisions.claims_scope), else under its exact bytes."""
        pending.done = True
        self._drop_pending(pending)
        digest = cert.request_digest
        scope = scope_id(pending.public_key, pending.request_id)
        if digest == pending.digest and not claims_scope(cert):
            scope = scope_id(pending.public_key, pending.request_id, digest)
        if final:
            self._remember(scope, digest, data)
        span, pending.span = pending.span, None
        if digest != pending.digest:  # the id was decided before for other bytes
            _end_span(span, "error.type", RequestIdConflict.code)
            for reply in pending.waiters:
                self.spawn(self._reply_conflict(reply, pending.request_id))
        elif span is None:
            self.spawn(self._publish_all(pending.waiters, data))
        else:
            self.spawn(self._publish_traced(pending, span, data))
        if store and self._store is not None:
            self.spawn(self._store.store(scope, data))

    async def _publish_all(
        self, replies: list[str], data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        for reply in replies:
            await self.client.publish(reply, data, headers=headers)

    async def _publish_traced(self, pending: Pending, span: Span, data: bytes) -> None:
        """The reply under a ``send`` span (child of the request's ``process`` span)
        whose context travels in the reply's ``traceparent``; then both end."""
        send = start_messaging_span(
            "send",
            pending.waiters[0],
            kind=SpanKind.PRODUCER,
            name=f"send {INBOX_TEMPLATE}",
            parent=trace.set_span_in_context(span),
            attributes={
                "messaging.destination.temporary": True,
                "messaging.destination.template": INBOX_TEMPLATE,
                "messaging.message.conversation_id": pending.request_id,
                "messaging.message.body.size": len(data),
                "agentic_payments.waiters": len(pending.waiters),
            },
        )
        try:
            await self._publish_all(
                pending.waiters, data, inject_headers(context=trace.set_span_in_context(send))
            )
        finally:
            send.end()
            span.end()

    def _store_error(self, scope: Scope, exc: BaseException, already_stored: bool) -> None:
        if already_stored:  # another tally decided this scope first: its certificate wins
            self.stats.count("decision_already_stored")
            self.spawn(self._adopt_stored(scope))
        else:
            self._store_trouble("decision_store_errors", exc)

    async def _adopt_stored(self, scope: Scope) -> None:
        assert self._store is not None
        try:
            data = (await self._store.get_many([scope])).get(scope)
        except TransportError as exc:
            self._store_trouble("decision_lookup_errors", exc)
            return
        request_id = scope.split(".", 2)[2]
        stored = self._trusted_stored(request_id, data) if data else None
        if stored is not None and data is not None:
            self._remember(scope, stored.request_digest, data)

    def _store_trouble(self, counter: str, exc: BaseException) -> None:
        self.stats.count(counter)
        self._store_error_at = time.monotonic()
        log.warning(
            "decisions bucket: %s (%s); idempotency across restarts is degraded",
            exc.__class__.__name__,
            exc,
        )

    def health(self) -> Health:
        health = super().health()
        recent = time.monotonic() - self._store_error_at < STORE_DEGRADED_S
        return Health.DEGRADED if health is Health.HEALTHY and recent else health

    def _drop_pending(self, pending: Pending) -> None:
        """Forget an answered request; its bytes leave the budget once it left the queue."""
        if self._pending.get(pending.scope) is pending:
            del self._pending[pending.scope]
            if not pending.queued:
                self._pending_bytes -= len(pending.raw)

    def _remember(self, scope: Scope, digest: bytes, data: bytes) -> None:
        self._results[scope] = (digest, data)
        self._results.move_to_end(scope)
        while len(self._results) > self.options.cache_size:
            self._results.popitem(last=False)

    def _fail(self, pending: Pending, error: ConsensusError) -> None:
        self._drop_pending(pending)
        span, pending.span = pending.span, None
        _end_span(span, "error.type", error.code)
        self.stats.count(f"request_rejected_{error.code}")
        for reply in pending.waiters:
            self.spawn(self._reply_error(reply, error.code, str(error), pending.request_id))

    async def _reply_conflict(self, reply: str, rid: str) -> None:
        self.stats.count("request_rejected_REQUEST_ID_CONFLICT")
        await self._reply_error(
            reply,
            RequestIdConflict.code,
            f"request id {rid!r} was already used for different bytes",
            rid,
        )

    async def _reply_error(
        self, reply: str, code: str, message: str, request_id: str | None = None
    ) -> None:
        await self.client.publish(reply, ErrorReply(code, message[:4096], request_id).encode())

    async def _report_equivocation(self, ballot_round: BallotRound) -> None:
        """Publish the evidence the round just recorded: once per (key, ballot), since
        the round keeps one per key and drops the key's later votes unchecked."""
        evidence = ballot_round.equivocations[-1]
        self.stats.count("equivocation_evidence_published")
        log.warning(
            "verifier %s equivocated on ballot %s",
            evidence.verifier_key.hex(),
            ballot_round.ballot_id,
        )
        await self.client.publish(
            self.subjects.equivocation,
            encode(
                {
                    "type": "equivocation",
                    "v": 1,
                    "verifier_key": evidence.verifier_key,
                    "ballot_id": ballot_round.ballot_id,
                    "epoch": ballot_round.epoch,
                    "first": evidence.first.encode(),
                    "second": evidence.second.encode(),
                }
            ),
        )


def _end_span(span: Span | None, key: str, value: str) -> None:
    """End a request span early (an answer without a round), saying why."""
    if span is None:
        return
    span.set_attribute(key, value)
    if key == "error.type":
        span.set_status(Status(StatusCode.ERROR, value))
    span.end()


def _ballot_headers(contexts: list[SpanContext | None]) -> dict[str, str]:
    """``ap-traceparents`` (one per request) and a W3C ``traceparent`` (the first
    request's ballot span) for a ballot publish."""
    headers = {TRACEPARENTS_HEADER: format_traceparents(contexts)}
    first = next((c for c in contexts if c is not None and c.is_valid), None)
    if first is not None:
        headers["traceparent"] = format_traceparent(first)
    return headers
