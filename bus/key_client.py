"""KeyClient: request/reply with the key manager (``{prefix}.keys.<op>``).

A key manager's ErrorReply becomes ``RemoteError`` carrying the manager's
stable code (KEY_NOT_FOUND, KEY_STATE_CONFLICT, SCHEMA_VIOLATION, ...);
nats-py errors become ``TransportError`` subclasses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
from nats.aio.client import Client

from bus.subjects import Subjects
from schemas.errors import NoResponders, RemoteError, RequestTimeout, SchemaViolation
from schemas.keys import KeyInfo, KeyList, KeyRequest, KeySignature, KeySweep, decode_key_reply
from schemas.messages import ErrorReply


class KeyClient:
    def __init__(self, nc: Client, prefix: str, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    async def raw(self, op: str, payload: bytes) -> Any:
        """Send ``payload`` to op ``op``; the decoded reply (ErrorReply included).

        "No responders" means nobody received the request, so it is retried
        (with back-off, within ``timeout``) for every op: a key manager that is
        starting or restarting is waited for, and nothing runs twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = 0.05
        while True:
            try:
                msg = await self.nc.request(
                    self.subjects.keys_op(op), payload, timeout=max(0.01, deadline - loop.time())
                )
                return decode_key_reply(msg.data)
            except nats.errors.NoRespondersError:
                if loop.time() + delay >= deadline:
                    raise NoResponders(
                        "no key manager answers (is 'worker keys' running?)"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except nats.errors.TimeoutError:
                raise RequestTimeout(
                    f"no reply from the key manager within {self.timeout}s"
                ) from None

    async def call(self, op: str, request: KeyRequest) -> Any:
        reply = await self.raw(op, request.encode())
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.message, code=reply.code)
        return reply

    async def _info(self, op: str, request: KeyRequest) -> KeyInfo:
        reply = await self.call(op, request)
        if not isinstance(reply, KeyInfo):
            raise SchemaViolation(f"{op} answered {type(reply).__name__}, not key_info")
        return reply

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
        reply = await self.call("list", KeyRequest())
        if not isinstance(reply, KeyList):
            raise SchemaViolation("list did not answer key_list")
        return reply

    async def sign(self, name: str, message: bytes, version: int = 0) -> KeySignature:
        reply = await self.call("sign", KeyRequest(name=name, message=message, version=version))
        if not isinstance(reply, KeySignature):
            raise SchemaViolation("sign did not answer key_signature")
        return reply

    async def sweep(self) -> KeySweep:
        reply = await self.call("sweep", KeyRequest())
        if not isinstance(reply, KeySweep):
            raise SchemaViolation("sweep did not answer key_sweep")
        return reply
