"""One client call: request with a timeout, no-responders retry, typed reply.

Every client of a request/reply service (KeyClient, TrustClient,
AuthorityClient, VerifyClient) sends through :func:`send_request`, so they all
behave alike on the wire:

* "no responders" means the server found no subscriber, so the request was
  never delivered: resending it is safe even for a write. It is retried a
  bounded number of times with a short back-off, never past the caller's
  timeout, which covers a worker that is starting or restarting (and the
  rare start where a new subscription is briefly invisible to a new
  connection). A timeout is *not* retried here: a write may have been
  applied (VerifyClient retries it itself, with the same request id);
* nats-py errors are mapped once, by :func:`bus.nats_errors.map_nats_errors`;
* :func:`call` decodes the reply as the one class the operation answers
  (``schemas.messages.decode_reply``) and raises an ErrorReply as
  ``RemoteError`` carrying the worker's code.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.nats_errors import map_nats_errors
from schemas.errors import NoResponders, RemoteError
from schemas.messages import ErrorReply, WireMessage, decode_reply

R = TypeVar("R", bound=WireMessage)

#: Most sends of one request answered "no responders" (each after a back-off).
NO_RESPONDERS_ATTEMPTS = 20
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 0.5
#: The shortest per-attempt timeout handed to nats-py (it refuses zero).
MIN_TIMEOUT_S = 0.01


async def send_request(
    nc: Client,
    subject: str,
    data: bytes,
    *,
    timeout: float,
    service: str,
    headers: dict[str, str] | None = None,
    attempts: int = NO_RESPONDERS_ATTEMPTS,
) -> Msg:
    """Send ``data`` to ``subject``; the reply message, whatever it holds.

    Raises only project errors: NoResponders once ``attempts`` sends (or the
    ``timeout``) are spent, RequestTimeout, NotConnected, TransportError.
    ``attempts=1`` sends once (for a caller that retries on its own).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = FIRST_BACKOFF_S
    sent = 0
    while True:
        sent += 1
        left = max(deadline - loop.time(), MIN_TIMEOUT_S)
        try:
            with map_nats_errors(subject, service=service, timeout=timeout):
                return await nc.request(subject, data, timeout=left, headers=headers)
        except NoResponders:
            if sent >= attempts or loop.time() + delay >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)


def raise_for_error(reply: R | ErrorReply) -> R:
    """``reply`` itself, unless it is an ErrorReply: then RemoteError with the worker's code."""
    if isinstance(reply, ErrorReply):
        raise RemoteError(reply.message, code=reply.code)
    return reply


async def call(
    nc: Client,
    subject: str,
    message: WireMessage | bytes,
    expected: type[R],
    *,
    timeout: float,
    service: str,
) -> R:
    """Send ``message``; the reply as ``expected`` (any other class is a SchemaViolation).

    ``message`` may be raw bytes for an endpoint that takes no request body
    (a worker's ``status`` endpoint answers an empty request).
    """
    data = message if isinstance(message, bytes) else message.encode()
    msg = await send_request(nc, subject, data, timeout=timeout, service=service)
    return raise_for_error(decode_reply(msg.data, expected))
