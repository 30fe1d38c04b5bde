"""A NATS protocol proxy that injects faults between a client and a real nats-server.

It forwards both directions frame by frame (so an injected frame never lands inside
another), tracks the client's subscriptions, and while a rule is armed answers
matching requests itself instead of forwarding them: e.g. a ``404`` status to a
direct get, which is what a replica or mirror that has not caught up answers
(nats-server lets any of them serve ``$JS.API.DIRECT.GET``). Everything else is the
real server's answer. Used by tests/integration/test_pool_reads.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass(frozen=True)
class Reply:
    """What the proxy answers instead of the server: a header block (``NATS/1.0 ...``
    lines, without the blank line that ends it; empty for none) and a payload."""

    headers: str = ""
    data: bytes = b""

    def frame(self, reply: str, sid: str) -> bytes:
        if not self.headers:
            return f"MSG {reply} {sid} {len(self.data)}\r\n".encode() + self.data + b"\r\n"
        hdr = (self.headers + "\r\n\r\n").encode()
        size = len(hdr) + len(self.data)
        return f"HMSG {reply} {sid} {len(hdr)} {size}\r\n".encode() + hdr + self.data + b"\r\n"


#: decides, per request subject, whether the proxy answers it (and with what) or
#: forwards it (None)
Rule = Callable[[str], Reply | None]


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class NatsProxy:
    upstream: str
    rule: Rule | None = None
    #: subjects of the requests the proxy answered itself
    answered: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        target = urlparse(self.upstream)
        s_reader, s_writer = await asyncio.open_connection(target.hostname, target.port)
        subs: dict[str, str] = {}  # sid -> subject
        lock = asyncio.Lock()  # one writer to the client at a time: whole frames only

        async def to_client(frame: bytes) -> None:
            async with lock:
                c_writer.write(frame)
                await c_writer.drain()

        async def server_to_client() -> None:
            while True:
                frame = await _frame(s_reader, server_side=True)
                if not frame:
                    return
                await to_client(frame)

        async def client_to_server() -> None:
            while True:
                frame = await _frame(c_reader, server_side=False)
                if not frame:
                    return
                head = frame.split(b"\r\n", 1)[0].decode()
                words = head.split()
                op = words[0].upper() if words else ""
                if op == "SUB":
                    subs[words[-1]] = words[1]
                elif op == "UNSUB":
                    subs.pop(words[1], None)
                elif op in ("PUB", "HPUB") and self.rule is not None:
                    subject = words[1]
                    has_reply = len(words) == (4 if op == "PUB" else 5)
                    answer = self.rule(subject) if has_reply else None
                    if answer is not None:
                        reply = words[2]
                        sid = next((k for k, v in subs.items() if _matches(v, reply)), None)
                        if sid is not None:
                            self.answered.append(subject)
                            await to_client(answer.frame(reply, sid))
                            continue
                s_writer.write(frame)
                await s_writer.drain()

        pumps = [
            asyncio.create_task(server_to_client()),
            asyncio.create_task(client_to_server()),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for w in (c_writer, s_writer):
                w.close()


async def _frame(reader: asyncio.StreamReader, *, server_side: bool) -> bytes:
    """One protocol frame: a control line plus its payload, if it has one."""
    try:
        line = await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""
    words = line.split()
    op = words[0].upper() if words else b""
    size = 0
    kinds = (b"MSG", b"HMSG") if server_side else (b"PUB", b"HPUB")
    if op in kinds:
        size = int(words[-1]) + 2  # payload and its CRLF
    if size:
        try:
            line += await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
    return line
