"""Connecting to NATS: reconnect forever once up, fail fast and clearly if never up.

A worker that cannot reach NATS at start-up exits with EXIT_CONNECT so a
supervisor can tell "wrong URL" from "crashed"; once connected, nats-py
reconnects forever and we only log the transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any
from urllib.parse import urlparse

from nats.aio.client import Client

from bus.config import NatsConfig
from schemas.errors import NotConnected

log = logging.getLogger("agentic_payments.bus")


async def connect(
    config: NatsConfig, *, name: str, connect_timeout: float = 2.0, initial_attempts: int = 3
) -> Client:
    """Open a connection or raise NotConnected (never a nats-py exception)."""

    async def on_error(exc: Exception) -> None:
        if nc.is_connected or nc.is_reconnecting:
            log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.info("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

    async def on_closed() -> None:
        log.info("nats connection closed")

    options: dict[str, Any] = {
        "servers": config.servers,
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,
        # bounded while the first connection is made (nats-py would otherwise
        # retry an unreachable URL forever); switched to -1 once connected
        "max_reconnect_attempts": initial_attempts,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
        "pending_size": 8 * 1024 * 1024,
    }
    if config.creds:
        options["user_credentials"] = config.creds
    if config.nkey_seed:
        options["nkeys_seed"] = config.nkey_seed
    if config.user:
        options["user"] = config.user
        options["password"] = config.password
    if config.inbox_prefix:
        options["inbox_prefix"] = config.inbox_prefix
    if config.tls_ca or config.tls_cert:
        ctx = ssl.create_default_context(cafile=config.tls_ca)
        if config.tls_cert:
            ctx.load_cert_chain(config.tls_cert, config.tls_key)
        options["tls"] = ctx
    nc = Client()
    log.info("connecting to NATS at %s as %s", config.url, name)
    # nats-py bounds each TCP connect by connect_timeout but not a TLS handshake
    # that fails (e.g. an untrusted server certificate): without this overall
    # bound connect() would hang forever instead of failing with EXIT_CONNECT.
    overall = (connect_timeout + 0.5) * (initial_attempts + 1) * max(1, len(config.servers)) + 2
    try:
        async with asyncio.timeout(overall):
            await nc.connect(**options)
    except asyncio.CancelledError:
        # a stop requested while connecting (bus/runtime.py): leave no reconnect
        # loop or socket behind, and do not wait on a server that is not there
        await close_quickly(nc)
        raise
    except Exception as exc:  # nats-py raises several unrelated types here
        with contextlib.suppress(Exception):
            if not nc.is_closed:
                await nc.close()
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = (
                f"no usable connection within {overall:.0f}s (TLS handshake or "
                "authorization failing?)"
            )
        raise NotConnected(f"cannot connect to NATS at {config.url}: {reason}") from None
    nc.options["max_reconnect_attempts"] = -1  # reconnect forever from now on
    return nc


async def close_quickly(nc: Client, timeout: float = 0.25) -> None:
    """Close ``nc`` within ``timeout`` whatever its state (connecting, reconnecting,
    connected to a server that stopped reading): nats-py's ``close`` still writes
    what is pending and waits for its reconnect task; past the bound the socket is
    dropped instead."""
    if nc.is_closed:
        return
    task = asyncio.ensure_future(nc.close())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        transport = getattr(nc, "_transport", None)
        with contextlib.suppress(Exception):
            if transport is not None:
                transport.close()
    elif not task.cancelled() and task.exception() is not None:
        log.debug("closing the connection: %r", task.exception())


async def is_reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a NATS server answers at ``url`` (used by ``up``): TCP + its INFO line."""
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                parsed.hostname or "127.0.0.1", parsed.port or 4222
            )
            try:
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return line.startswith(b"INFO")


async def barrier(nc: Client, timeout: int = 5) -> None:
    """Return only once the server has processed every command sent so far.

    ``nc.flush()`` alone is not that barrier in nats-py 2.16: ``subscribe`` and
    ``publish`` queue their commands for the flusher task, but ``flush`` writes
    its PING straight to the socket, so the PING can overtake a queued SUB and
    its PONG can come back before the server has the subscription (a message
    published right after is then lost; seen under CI load). The first flush
    kicks the flusher, which writes the queued commands before that PONG can
    be read; the second PING travels behind them, so its PONG proves the
    server has processed them.
    """
    await nc.flush(timeout)
    await nc.flush(timeout)
