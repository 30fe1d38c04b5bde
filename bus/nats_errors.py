"""nats-py exceptions become the project's own, in this one place.

Callers of ``bus/`` catch ``schemas.errors`` classes only (``NoResponders``,
``RequestTimeout``, ``NotConnected``, ``TransportError``), never a nats-py
class: so a client can branch on ``err.code`` and a CLI can print it, and an
upgrade of nats-py changes one mapping, not every client. Modelled on httpx's
``map_httpcore_exceptions``: a context manager around the transport call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors

from schemas.errors import NoResponders, NotConnected, RequestTimeout, TransportError

#: The connection is closed, closing, reconnecting or has no server: not the request's fault.
_NOT_CONNECTED: tuple[type[nats.errors.Error], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
)


@contextlib.contextmanager
def map_nats_errors(
    subject: str, *, service: str = "service", timeout: float | None = None
) -> Iterator[None]:
    """Raise the project's TransportError subclass for a nats-py error on ``subject``.

    ``service`` names who should have answered (for the message); ``timeout``
    is the one the caller gave, so the message says how long was waited.
    The project's own errors pass through unchanged.
    """
    try:
        yield
    except nats.errors.NoRespondersError:
        raise NoResponders(f"no {service} answers on {subject}; is it running?") from None
    except (nats.errors.TimeoutError, TimeoutError):
        waited = "" if timeout is None else f" within {timeout}s"
        raise RequestTimeout(f"no reply from the {service} on {subject}{waited}") from None
    except _NOT_CONNECTED as exc:
        raise NotConnected(f"not connected to NATS ({exc.__class__.__name__})") from None
    except nats.errors.Error as exc:
        raise TransportError(
            f"NATS could not carry the request on {subject} ({exc.__class__.__name__}: {exc})"
        ) from None
