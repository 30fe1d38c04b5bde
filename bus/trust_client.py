"""TrustClient: the request/reply client of the trust-chain validator (``{prefix}.trust.<op>``).

Each op is answered by one class (TrustAck, ChainReply or TrustListing); the
call, its no-responders retry and the error mapping are bus/call.py's.
"""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client

from bus.call import call
from bus.subjects import Subjects
from schemas.messages import WireMessage
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
)

R = TypeVar("R", TrustAck, ChainReply, TrustListing)
SERVICE = "trust worker"


class TrustClient:
    """Request/reply client for the trust service; raises RemoteError on an ErrorReply."""

    def __init__(self, nc: Client, prefix: str, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def call(self, op: str, message: WireMessage, expected: type[R]) -> R:
        subject = self.subjects.trust(op)
        return await call(
            self.nc, subject, message, expected, timeout=self.timeout, service=SERVICE
        )

    async def add_anchor(self, public_key: bytes, label: str = "") -> TrustAck:
        return await self.call("add-anchor", AddAnchorRequest(public_key, label), TrustAck)

    async def remove_anchor(self, public_key: bytes) -> TrustAck:
        return await self.call("remove-anchor", RemoveAnchorRequest(public_key), TrustAck)

    async def add_cert(self, cert: TrustCertificate | bytes) -> TrustAck:
        raw = cert if isinstance(cert, bytes) else cert.encode()
        return await self.call("add-cert", AddCertRequest(raw), TrustAck)

    async def revoke_cert(self, serial: str, reason: str = "") -> TrustAck:
        return await self.call("revoke-cert", RevokeCertRequest(serial, reason), TrustAck)

    async def validate(
        self,
        leaf_key: bytes,
        *,
        purpose: str = PURPOSE_PAYMENT,
        presented: tuple[bytes, ...] = (),
        now_ms: int | None = None,
        min_revision: int | None = None,
    ) -> ChainReply:
        request = ValidateRequest(leaf_key, purpose, presented, now_ms, min_revision)
        return await self.call("validate", request, ChainReply)

    async def list(self) -> TrustListing:
        return await self.call("list", ListRequest(), TrustListing)
