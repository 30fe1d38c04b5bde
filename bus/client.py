"""VerifyClient: submit verification requests and get checked certificates back.

Retries re-send the *same bytes* (same request id, same digest), which the
tally treats idempotently: a retry after a lost reply gets the certificate of
the original round. nats-py errors are converted to ``TransportError``
subclasses; a worker's ErrorReply becomes ``RemoteError`` with the worker's
stable ``code`` (both in bus/call.py, as for every client).

The client does not trust the tally: every certificate must be for the
request it sent (id and digest of the exact bytes), and by default it is
re-checked with ``verify_certificate`` against the verifier pool read from the
membership bucket at the certificate's epoch and the expected threshold
(2/3 unless told otherwise). A certificate that fails raises
``CertificateInvalid``.

Which epochs a client accepts is its own policy, not the certificate's say-so:
the current one, or one superseded at most ``pool_grace_s`` ago (the server time
of the revision that superseded it; a certificate decided just before a
membership change must still check out). An older epoch's pool may hold keys that
were since removed or stolen, so its certificates are refused. ``min_pool`` pins
the smallest pool a certificate may come from: a pool shrunk below it (by
quarantines or removals) decides nothing this client accepts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection, Sequence
from fractions import Fraction
from types import TracebackType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Link, SpanKind

from bus import membership
from bus.call import raise_for_error, send_request
from bus.config import NatsConfig
from bus.connection import connect
from bus.nats_errors import map_jetstream_errors
from bus.subjects import Subjects
from bus.tracing import inject_headers, messaging_span, span_link, tracing_active
from schemas.certificate import verify_certificate
from schemas.errors import (
    AgenticPaymentsError,
    CertificateInvalid,
    ConfigError,
    NoResponders,
    NotConnected,
    RemoteError,
    RequestTimeout,
    TransportError,
)
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, ErrorReply, VerificationRequest, decode_reply
from schemas.quorum import DEFAULT_THRESHOLD, MIN_POOL
from schemas.signing import request_digest

#: How long after a membership change certificates of the superseded epoch are
#: still accepted (seconds; ``--pool-grace-s`` / AP_POOL_GRACE_S on the CLI).
DEFAULT_POOL_GRACE_S = 30.0
RETRYABLE_REMOTE = frozenset({"OVERLOADED", "SHUTTING_DOWN", "INTERNAL"})
#: Low-cardinality name of the reply inboxes in span names (nats-py's inbox prefix).
INBOX_TEMPLATE = "_INBOX"


def _links(headers: dict[str, str] | None) -> list[Link] | None:
    """A link to the tally's reply span (its context travels in the reply headers)."""
    link = span_link(headers)
    return None if link is None else [link]


def new_request_id() -> str:
    return uuid.uuid4().hex


def signed_request(
    identity: AgentIdentity, message: bytes | str, request_id: str | None = None
) -> VerificationRequest:
    """Sign ``message`` with ``identity`` and wrap it as a VerificationRequest."""
    data = message.encode() if isinstance(message, str) else message
    return VerificationRequest(
        request_id=request_id or new_request_id(),
        message=data,
        signature=identity.sign(data),
        public_key=identity.public_key,
    )


class VerifyClient:
    """Client for the consensus network. Use ``async with VerifyClient.connect(...)``."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = "ap",
        timeout: float = 10.0,
        retries: int = 2,
        owns_connection: bool = False,
        verify_certificates: bool = True,
        threshold: Fraction = DEFAULT_THRESHOLD,
        tally_keys: Collection[bytes] | None = None,
        pool_grace_s: float = DEFAULT_POOL_GRACE_S,
        min_pool: int = MIN_POOL,
    ) -> None:
        if pool_grace_s < 0:
            raise ConfigError(f"pool grace period {pool_grace_s}s must be >= 0")
        if min_pool < MIN_POOL:
            raise ConfigError(f"min_pool {min_pool} is below the protocol minimum {MIN_POOL}")
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self.retries = retries
        self.verify_certificates = verify_certificates
        self.threshold = threshold
        self.tally_keys = None if tally_keys is None else frozenset(tally_keys)
        self.pool_grace_s = pool_grace_s
        self.min_pool = min_pool
        self._owns = owns_connection
        self._pool: membership.PoolView | None = None
        self._pool_read_at = 0.0  # monotonic time the current pool was read
        #: epoch -> (its verifier keys, server time its successor revision was written)
        self._old_pools: dict[int, tuple[frozenset[bytes], float]] = {}
        self._pool_lock = asyncio.Lock()

    @classmethod
    async def connect(cls, config: NatsConfig | None = None, **kwargs: Any) -> VerifyClient:
        config = config or NatsConfig.from_env()
        nc = await connect(config, name="agentic-payments-client")
        return cls(nc, prefix=config.prefix, owns_connection=True, **kwargs)

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            with map_jetstream_errors("closing the client connection"):
                await self.nc.drain()

    async def __aenter__(self) -> VerifyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit_raw(
        self, data: bytes, *, timeout: float | None = None, request_id: str | None = None
    ) -> ConsensusResult | ErrorReply:
        """Send already-encoded request bytes once; return the decoded reply."""
        if self.nc.is_closed:
            raise NotConnected("client connection is closed")
        if not tracing_active():
            return decode_reply((await self._request(data, timeout, None)).data, ConsensusResult)
        subject = self.subjects.request
        attrs: dict[str, Any] = {"messaging.message.body.size": len(data)}
        if request_id is not None:
            attrs["messaging.message.conversation_id"] = request_id
        # One CLIENT span for the round trip; its context travels in `traceparent`.
        with messaging_span("send", subject, kind=SpanKind.CLIENT, attributes=attrs):
            msg = await self._request(data, timeout, inject_headers())
            with messaging_span(
                "receive",
                msg.subject,
                kind=SpanKind.CLIENT,
                name=f"receive {INBOX_TEMPLATE}",
                links=_links(msg.headers),
                attributes={
                    "messaging.destination.temporary": True,
                    "messaging.destination.template": INBOX_TEMPLATE,
                    "messaging.message.body.size": len(msg.data),
                },
            ):
                return decode_reply(msg.data, ConsensusResult)

    async def _request(
        self, data: bytes, timeout: float | None, headers: dict[str, str] | None
    ) -> Msg:
        # One send: verify_with_consensus retries no responders itself (with the same bytes).
        return await send_request(
            self.nc,
            self.subjects.request,
            data,
            timeout=timeout or self.timeout,
            service="tally",
            headers=headers or None,
            attempts=1,
        )

    async def verify_with_consensus(
        self, request: VerificationRequest, *, timeout: float | None = None
    ) -> ConsensusResult:
        """Decide ``request`` by consensus; retries keep the request id and bytes."""
        data = request.encode()
        attempt = 0
        while True:
            try:
                reply = raise_for_error(
                    await self.submit_raw(data, timeout=timeout, request_id=request.request_id)
                )
            except (RequestTimeout, NoResponders, RemoteError) as exc:
                retryable = not isinstance(exc, RemoteError) or exc.code in RETRYABLE_REMOTE
                if not retryable or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            # not retried: the round is decided; reading the pool failing is not the tally's
            await self.check(reply, request.request_id, request_digest(data))
            return reply

    async def check(self, cert: ConsensusResult, request_id: str, digest: bytes) -> None:
        """Raise CertificateInvalid unless ``cert`` answers this request and holds up
        (TransportError if the pool cannot be read now: retry, it says nothing about
        the certificate)."""
        if cert.request_id != request_id or cert.request_digest != digest:
            raise CertificateInvalid("the certificate is for another request")
        if not self.verify_certificates:
            return
        if cert.n < self.min_pool:
            raise CertificateInvalid(
                f"certificate comes from a pool of {cert.n}, below the minimum "
                f"{self.min_pool} this client pins"
            )
        attempt = 0
        while True:
            try:
                keys = await self.pool_keys(cert.epoch)
                break
            except TransportError:  # says nothing about the certificate: read again
                if attempt >= self.retries or self.nc.is_closed:
                    raise
                attempt += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        verify_certificate(
            cert,
            keys,
            network=self.subjects.prefix,
            threshold=self.threshold,
            tally_keys=self.tally_keys,
        )

    async def pool_keys(self, epoch: int) -> frozenset[bytes]:
        """Verifier keys of pool ``epoch``, if this client accepts that epoch.

        The current pool is cached for at most ``pool_grace_s``: it was current when
        read, so whatever superseded it since is younger than the cache. An older
        epoch counts only if the revision that superseded it (``epoch + 1``) was
        written at most ``pool_grace_s`` ago by the server's clock; its pool is then
        rebuilt by ``membership.pool_at``, which fails closed (PoolHistoryMissing).
        """
        async with self._pool_lock:
            fresh = time.monotonic() - self._pool_read_at <= self.pool_grace_s
            if self._pool is None or self._pool.epoch < epoch or not fresh:
                self._pool = await membership.read_pool(self.nc, self.subjects)
                self._pool_read_at = time.monotonic()
            if self._pool.epoch == epoch:
                return self._pool.keys
            if epoch > self._pool.epoch:
                raise CertificateInvalid(
                    f"certificate names pool epoch {epoch}, which does not "
                    f"exist yet (the pool is at {self._pool.epoch})"
                )
            cached = self._old_pools.get(epoch)
            if cached is None:
                ended = await membership.superseded_at(self.nc, self.subjects, epoch)
                self._check_grace(epoch, ended)
                keys = (await membership.pool_at(self.nc, self.subjects, epoch)).keys
                if len(self._old_pools) >= 16:
                    self._old_pools.pop(next(iter(self._old_pools)))
                cached = self._old_pools[epoch] = (keys, ended)
            self._check_grace(epoch, cached[1])
            return cached[0]

    def _check_grace(self, epoch: int, ended: float) -> None:
        age = time.time() - ended
        if age > self.pool_grace_s:
            raise CertificateInvalid(
                f"certificate names pool epoch {epoch}, superseded {age:.1f}s ago "
                f"(this client accepts superseded epochs for {self.pool_grace_s:g}s)"
            )

    async def verify_many(
        self,
        requests: Sequence[VerificationRequest],
        *,
        concurrency: int = 256,
        timeout: float | None = None,
    ) -> list[ConsensusResult | AgenticPaymentsError]:
        """Decide many requests concurrently; errors are returned in place, not raised."""
        gate = asyncio.Semaphore(concurrency)

        async def one(req: VerificationRequest) -> ConsensusResult | AgenticPaymentsError:
            async with gate:
                try:
                    return await self.verify_with_consensus(req, timeout=timeout)
                except AgenticPaymentsError as exc:
                    return exc

        return list(await asyncio.gather(*(one(r) for r in requests)))
