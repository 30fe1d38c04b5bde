"""bus/replies.py against a real nats-server: no worker answers a reply outside ``_INBOX.``.

The micro service's own handlers (nats-py's PING/INFO/STATS, subscribed inside
``nats.micro``), the status endpoint, a ``replies=True`` intake and a Dispatcher
op each get one request with a trap reply subject and one proper request; the
trap must stay empty while every proper request is answered, and each refusal
is counted. A plain subscription (``replies`` left False) still receives a
message whatever its reply, since it answers none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.config import NatsConfig
from bus.replies import REFUSED_COUNTER
from bus.runtime import RuntimeConfig, Worker
from bus.service import Dispatcher, operation
from bus.subjects import service_name
from schemas.messages import WireMessage
from schemas.trust import RemoveAnchorRequest, TrustAck

pytestmark = pytest.mark.integration
log = logging.getLogger("test.probe")


class Probe(Worker):
    """A worker with one flagged intake, one Dispatcher op and one plain subscription."""

    kind = "probe"

    def __init__(self, runtime: RuntimeConfig) -> None:
        super().__init__(runtime)
        self.plain: list[str] = []
        self.handled = 0
        self.rpc = Dispatcher(
            "probe", {"op": operation(RemoveAnchorRequest, self._op)}, self.stats, log
        )

    async def _op(self, req: RemoveAnchorRequest) -> WireMessage:
        self.handled += 1
        return TrustAck("remove-anchor", "anchor.01", True, 1, "ok")

    async def _echo(self, msg: Msg) -> None:
        self.handled += 1
        await msg.respond(b"echo")

    async def _plain(self, msg: Msg) -> None:
        self.plain.append(msg.reply)

    async def setup(self) -> None:
        p = self.subjects.prefix
        await self.subscribe_intake(f"{p}.probe.echo", self._echo, replies=True)
        await self.subscribe_intake(f"{p}.probe.op", self.rpc.handler("op"))
        await self.subscribe(f"{p}.probe.plain", self._plain)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_no_handler_answers_outside_the_inbox(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    trapped: list[str] = []

    async def trap(msg: Msg) -> None:
        trapped.append(msg.subject)

    await nc.subscribe("trap.>", cb=trap)
    runtime = RuntimeConfig(worker_id="p1", nats=nats_config, data_dir=tmp_path)
    async with Probe(runtime) as worker:
        p = nats_config.prefix
        name = service_name("probe")
        op_body = RemoveAnchorRequest(b"\x01" * 32).encode()
        targets = [
            ("$SRV.PING", b""),
            (f"$SRV.INFO.{name}", b""),
            (f"$SRV.STATS.{name}", b""),
            (worker.subjects.status("probe", "p1"), b""),
            (f"{p}.probe.echo", b"x"),
            (f"{p}.probe.op", op_body),
        ]
        for i, (subject, body) in enumerate(targets):
            await nc.publish(subject, body, reply=f"trap.{i}")
            answer = await nc.request(subject, body, timeout=5)  # behind it, same subscription
            assert answer.data, subject
        await until(lambda: worker.stats.counters[REFUSED_COUNTER] == len(targets))
        await nc.publish(f"{p}.probe.plain", b"", reply="trap.plain")
        await until(lambda: worker.plain == ["trap.plain"])
        await nc.flush()
        assert trapped == []
        assert worker.handled == 2  # the echo and the op, each once (the proper request)
