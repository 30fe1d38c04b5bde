"""KeyClient: request/reply with the key manager (``{prefix}.keys.<op>``).

A key manager's ErrorReply becomes ``RemoteError`` carrying the manager's
stable code (KEY_NOT_FOUND, KEY_STATE_CONFLICT, SCHEMA_VIOLATION, ...);
nats-py errors become ``TransportError`` subclasses (both in bus/call.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

from nats.aio.client import Client

from bus.call import call, send_request
from bus.subjects import Subjects
from schemas.keys import KeyInfo, KeyList, KeyRequest, KeySignature, KeySweep, decode_key_reply
from schemas.messages import ErrorReply

R = TypeVar("R", KeyInfo, KeyList, KeySignature, KeySweep)
SERVICE = "key manager"


class KeyClient:
    def __init__(self, nc: Client, prefix: str, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def raw(
        self, op: str, payload: bytes
    ) -> KeyInfo | KeyList | KeySignature | KeySweep | ErrorReply:
        """Send ``payload`` to op ``op``; the decoded reply, an ErrorReply included (tests, tools).

        Like every op (bus/call.py), "no responders" is retried: a key manager
        that is starting or restarting is waited for, and nothing runs twice.
        """
        subject = self.subjects.keys_op(op)
        msg = await send_request(self.nc, subject, payload, timeout=self.timeout, service=SERVICE)
        return decode_key_reply(msg.data)

    async def _call(self, op: str, req: KeyRequest, expected: type[R]) -> R:
        subject = self.subjects.keys_op(op)
        return await call(self.nc, subject, req, expected, timeout=self.timeout, service=SERVICE)

    async def _info(self, op: str, request: KeyRequest) -> KeyInfo:
        return await self._call(op, request, KeyInfo)

    async def create(self, name: str, purpose: str, **policy: Any) -> KeyInfo:
        return await self._info("create", KeyRequest(name=name, purpose=purpose, **policy))

    async def rotate(self, name: str) -> KeyInfo:
        return await self._info("rotate", KeyRequest(name=name))

    async def revoke(self, name: str, reason: str, version: int = 0) -> KeyInfo:
        return await self._info("revoke", KeyRequest(name=name, reason=reason, version=version))

    async def disable(self, name: str) -> KeyInfo:
        return await self._info("disable", KeyRequest(name=name))

    async def enable(self, name: str) -> KeyInfo:
        return await self._info("enable", KeyRequest(name=name))

    async def delete(self, name: str) -> KeyInfo:
        return await self._info("delete", KeyRequest(name=name))

    async def get(self, name: str) -> KeyInfo:
        return await self._info("get", KeyRequest(name=name))

    async def config(self, name: str, **settings: Any) -> KeyInfo:
        return await self._info("config", KeyRequest(name=name, **settings))

    async def list(self) -> KeyList:
        return await self._call("list", KeyRequest(), KeyList)

    async def sign(self, name: str, message: bytes, version: int = 0) -> KeySignature:
        request = KeyRequest(name=name, message=message, version=version)
        return await self._call("sign", request, KeySignature)

    async def sweep(self) -> KeySweep:
        return await self._call("sweep", KeyRequest(), KeySweep)
