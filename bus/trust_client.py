"""TrustClient: the request/reply client of the trust-chain validator (``{prefix}.trust.<op>``)."""

from __future__ import annotations

from typing import Any

import nats.errors
from nats.aio.client import Client

from bus.subjects import Subjects
from schemas.errors import (
    NoResponders,
    RemoteError,
    RequestTimeout,
)
from schemas.messages import ErrorReply, WireMessage
from schemas.trust import (
    PURPOSE_PAYMENT,
    AddAnchorRequest,
    AddCertRequest,
    ChainReply,
    ListRequest,
    RemoveAnchorRequest,
    RevokeCertRequest,
    TrustAck,
    TrustCertificate,
    TrustListing,
    ValidateRequest,
    decode_trust_reply,
)


class TrustClient:
    """Request/reply client for the trust service; raises RemoteError on an ErrorReply."""

    def __init__(self, nc: Client, prefix: str, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def call(self, op: str, message: WireMessage) -> Any:
        try:
            reply = await self.nc.request(
                self.subjects.trust(op), message.encode(), timeout=self.timeout
            )
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no trust worker answers on {self.subjects.trust(op)}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise RequestTimeout(
                f"no answer from the trust service within {self.timeout}s"
            ) from None
        answer = decode_trust_reply(reply.data)
        if isinstance(answer, ErrorReply):
            raise RemoteError(answer.message, code=answer.code)
        return answer

    async def add_anchor(self, public_key: bytes, label: str = "") -> TrustAck:
        ack: TrustAck = await self.call("add-anchor", AddAnchorRequest(public_key, label))
        return ack

    async def remove_anchor(self, public_key: bytes) -> TrustAck:
        ack: TrustAck = await self.call("remove-anchor", RemoveAnchorRequest(public_key))
        return ack

    async def add_cert(self, cert: TrustCertificate | bytes) -> TrustAck:
        raw = cert if isinstance(cert, bytes) else cert.encode()
        ack: TrustAck = await self.call("add-cert", AddCertRequest(raw))
        return ack

    async def revoke_cert(self, serial: str, reason: str = "") -> TrustAck:
        ack: TrustAck = await self.call("revoke-cert", RevokeCertRequest(serial, reason))
        return ack

    async def validate(
        self,
        leaf_key: bytes,
        *,
        purpose: str = PURPOSE_PAYMENT,
        presented: tuple[bytes, ...] = (),
        now_ms: int | None = None,
        min_revision: int | None = None,
    ) -> ChainReply:
        reply: ChainReply = await self.call(
            "validate", ValidateRequest(leaf_key, purpose, presented, now_ms, min_revision)
        )
        return reply

    async def list(self) -> TrustListing:
        listing: TrustListing = await self.call("list", ListRequest())
        return listing
