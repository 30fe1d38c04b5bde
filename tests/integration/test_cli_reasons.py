"""Every CLI error prints its reason next to its code (issue #11).

``agentic-payments trace`` used to print only ``CERTIFICATE_INVALID`` for a
certificate it refused, so nobody could see why. Here a rogue "tally" (a plain
subscriber on the request subject, real nats-server) answers with a certificate
of another request, and a pool read that fails surfaces its code and reason too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.config import NatsConfig
from bus.subjects import Subjects
from schemas.certificate import sign_certificate
from schemas.identity import AgentIdentity
from tests.factories import Scenario
from tests.helpers import ROOT
from workers.cli.kit import EXIT_NOT_VALID

pytestmark = pytest.mark.integration


@pytest.fixture
async def rogue_tally(nc: Client, nats_config: NatsConfig) -> AsyncIterator[None]:
    """Answers every request with a well-signed certificate for another request."""
    sc = Scenario(network=nats_config.prefix)
    ballot_round = sc.round()
    for i in range(len(sc.verifiers)):
        ballot_round.offer(sc.vote(i))
    body = ballot_round.certificate(0, tally_key=sc.tally.public_key, decided_at_ms=1, latency_us=1)
    answer = sign_certificate(sc.tally, body, network=nats_config.prefix).encode()

    async def reply(msg: Msg) -> None:
        await msg.respond(answer)

    sub = await nc.subscribe(Subjects(nats_config.prefix).request, cb=reply)
    await nc.flush()
    try:
        yield
    finally:
        await sub.unsubscribe()


def _cli(nats_config: NatsConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", PYTHONPATH=str(ROOT))
    connection = ["--nats-url", nats_config.url, "--prefix", nats_config.prefix]
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args, *connection],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.usefixtures("rogue_tally")
async def test_trace_prints_the_reason_next_to_the_error_code(nats_config: NatsConfig) -> None:
    proc = await asyncio.to_thread(_cli, nats_config, "trace", "--count", "1", "--invalid", "0")
    assert proc.returncode == EXIT_NOT_VALID, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "CERTIFICATE_INVALID" in x)
    assert "the certificate is for another request" in line, line


@pytest.mark.usefixtures("rogue_tally")
async def test_verify_prints_the_reason_next_to_the_error_code(nats_config: NatsConfig) -> None:
    agent = AgentIdentity.generate()
    args = ["--message", "hello", "--public-key", agent.public_key.hex()]
    args += ["--signature", agent.sign(b"hello").hex()]
    proc = await asyncio.to_thread(_cli, nats_config, "verify", *args)
    assert proc.returncode == EXIT_NOT_VALID, proc.stderr
    assert "error [CERTIFICATE_INVALID]: the certificate is for another request" in proc.stderr
