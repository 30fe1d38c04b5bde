"""A small client for the authority coordinator's request/reply operations.

Every call sends one request to ``{prefix}.authority.<op>`` and returns the
decoded reply as the class the op answers; through bus/call.py, like every
client: an ErrorReply becomes ``RemoteError`` carrying the worker's code, no
responder ``NoResponders`` (after the bounded no-responders retry: a worker
that has just started can be briefly invisible to a new connection, seen
about once in 300 fresh starts on this machine), no reply in time
``RequestTimeout`` (not retried: a write may have been applied).
"""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client

from bus.call import call
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
)
from schemas.messages import WireMessage

R = TypeVar("R", bound=WireMessage)
SERVICE = "authority worker"


class AuthorityClient:
    def __init__(self, nc: Client, prefix: str, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def call(self, op: str, request: WireMessage, expected: type[R]) -> R:
        if op not in OPERATIONS:
            raise ValueError(f"unknown authority operation {op!r}")
        subject = self.subjects.authority(op)
        return await call(
            self.nc, subject, request, expected, timeout=self.timeout, service=SERVICE
        )

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
