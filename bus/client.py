"""VerifyClient: submit verification requests and get certificates back.

Retries re-send the *same bytes* (same request id, same digest), which the
tally treats idempotently: a retry after a lost reply gets the certificate of
the original round, never a second round. nats-py errors are converted to
``TransportError`` subclasses; a worker's ErrorReply becomes ``RemoteError``
with the worker's stable ``code``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from types import TracebackType

import nats.errors
from nats.aio.client import Client
from opentelemetry.trace import SpanKind

from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from bus.tracing import inject_headers, messaging_span
from schemas.errors import (
    AgenticPaymentsError,
    NoResponders,
    NotConnected,
    RemoteError,
    RequestTimeout,
)
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, ErrorReply, VerificationRequest, decode_reply

RETRYABLE_REMOTE = frozenset({"OVERLOADED"})


def new_request_id() -> str:
    return uuid.uuid4().hex


def signed_request(identity: AgentIdentity, message: bytes | str,
                   request_id: str | None = None) -> VerificationRequest:
    """Sign ``message`` with ``identity`` and wrap it as a VerificationRequest."""
    data = message.encode() if isinstance(message, str) else message
    return VerificationRequest(request_id=request_id or new_request_id(), message=data,
                               signature=identity.sign(data), public_key=identity.public_key)


class VerifyClient:
    """Client for the consensus network. Use ``async with VerifyClient.connect(...)``."""

    def __init__(self, nc: Client, *, prefix: str = "ap", timeout: float = 10.0,
                 retries: int = 2, owns_connection: bool = False) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self.retries = retries
        self._owns = owns_connection

    @classmethod
    async def connect(cls, config: NatsConfig | None = None, **kwargs: float | int
                      ) -> VerifyClient:
        config = config or NatsConfig.from_env()
        nc = await connect(config, name="agentic-payments-client")
        return cls(nc, prefix=config.prefix, owns_connection=True, **kwargs)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> VerifyClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def submit_raw(self, data: bytes, *, timeout: float | None = None
                         ) -> ConsensusResult | ErrorReply:
        """Send already-encoded request bytes once; return the decoded reply."""
        if self.nc.is_closed:
            raise NotConnected("client connection is closed")
        subject = self.subjects.request
        with messaging_span("send", subject, kind=SpanKind.CLIENT):
            try:
                msg = await self.nc.request(subject, data, timeout=timeout or self.timeout,
                                            headers=inject_headers() or None)
            except nats.errors.NoRespondersError:
                raise NoResponders(f"no tally listens on {subject}; is the system up?") from None
            except (TimeoutError, nats.errors.TimeoutError):
                raise RequestTimeout(f"no reply on {subject} within {timeout or self.timeout}s"
                                     ) from None
            except nats.errors.ConnectionClosedError:
                raise NotConnected("connection closed") from None
        return decode_reply(msg.data)

    async def verify_with_consensus(self, request: VerificationRequest, *,
                                    timeout: float | None = None) -> ConsensusResult:
        """Decide ``request`` by consensus; retries keep the request id and bytes."""
        data = request.encode()
        attempt = 0
        while True:
            try:
                reply = await self.submit_raw(data, timeout=timeout)
                if isinstance(reply, ErrorReply):
                    raise RemoteError(reply.message, code=reply.code)
                return reply
            except (RequestTimeout, NoResponders, RemoteError) as exc:
                retryable = not isinstance(exc, RemoteError) or exc.code in RETRYABLE_REMOTE
                if not retryable or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    async def verify_many(self, requests: Sequence[VerificationRequest], *,
                          concurrency: int = 256, timeout: float | None = None
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
