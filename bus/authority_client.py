"""A small client for the authority coordinator's request/reply operations.

Every call sends one request to ``{prefix}.authority.<op>`` and returns the
decoded reply; an ErrorReply becomes ``RemoteError`` carrying the worker's
code, no responder ``NoResponders``, no reply in time ``RequestTimeout``.

"No responders" is retried with a short back-off until the timeout is spent:
the request was never delivered, so even a write is safe to resend — and a
worker that has just started can be briefly invisible to a new connection
(seen about once in 300 fresh starts on this machine). A timeout is not
retried: a write may have been applied.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import nats.errors
from nats.aio.client import Client

from bus.subjects import Subjects
from schemas.authority import (
    OPERATIONS,
    AuthorityChange,
    AuthorityList,
    AuthorityRecord,
    Endorsement,
    EvaluateRequest,
    ListRequest,
    PolicyChange,
    PolicyQuery,
    PolicyVerdict,
    QuorumPolicy,
    decode_reply,
)
from schemas.errors import NoResponders, RemoteError, RequestTimeout
from schemas.messages import ErrorReply, WireMessage

R = TypeVar("R", bound=WireMessage)


class AuthorityClient:
    def __init__(self, nc: Client, prefix: str, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def call(self, op: str, request: WireMessage, expected: type[R]) -> R:
        if op not in OPERATIONS:
            raise ValueError(f"unknown authority operation {op!r}")
        subject = self.subjects.authority(op)
        data = request.encode()
        deadline = time.monotonic() + self.timeout
        backoff = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                msg = await self.nc.request(subject, data, timeout=max(left, 0.01))
                break
            except nats.errors.NoRespondersError:
                if left <= backoff:
                    raise NoResponders(
                        f"no authority worker listens on {subject}; is it running?"
                    ) from None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                raise RequestTimeout(f"no reply on {subject} within {self.timeout}s") from None
        reply = decode_reply(msg.data, expected)
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.message, code=reply.code)
        assert isinstance(reply, expected)
        return reply

    async def change(
        self, op: str, record: AuthorityRecord, endorsements: tuple[Endorsement, ...] = ()
    ) -> AuthorityRecord:
        return await self.call(op, AuthorityChange(record, endorsements), AuthorityRecord)

    async def set_policy(
        self, policy: QuorumPolicy, endorsements: tuple[Endorsement, ...] = ()
    ) -> QuorumPolicy:
        return await self.call("set-policy", PolicyChange(policy, endorsements), QuorumPolicy)

    async def get_policy(self, category: str) -> QuorumPolicy:
        return await self.call("get-policy", PolicyQuery(category), QuorumPolicy)

    async def list(self) -> AuthorityList:
        return await self.call("list", ListRequest(), AuthorityList)

    async def evaluate(
        self, category: str, digest: bytes, endorsements: tuple[Endorsement, ...] = ()
    ) -> PolicyVerdict:
        return await self.call(
            "evaluate", EvaluateRequest(category, digest, endorsements), PolicyVerdict
        )

    async def record(self, public_key: bytes) -> AuthorityRecord | None:
        for record in (await self.list()).authorities:
            if record.public_key == public_key:
                return record
        return None
