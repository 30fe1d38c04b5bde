"""nats-py exceptions become the project's own, in this one place.

Callers of ``bus/`` catch ``schemas.errors`` classes only (``NoResponders``,
``RequestTimeout``, ``NotConnected``, ``TransportError``), never a nats-py
class: so a client can branch on ``err.code`` and a CLI can print it, and an
upgrade of nats-py changes one mapping, not every client. Modelled on httpx's
``map_httpcore_exceptions``: a context manager around the transport call.

Two mappings, because the same nats-py class means different things:

* :func:`map_nats_errors` around a request to a worker (bus/call.py): "no
  responders" is the worker not running (NoResponders);
* :func:`map_jetstream_errors` around JetStream API calls (streams, KV
  buckets, watches) and subscriptions: "no responders" on ``$JS.API`` (which
  nats-py raises as ``ServiceUnavailableError``) is a server without JetStream,
  NotConnected like a closed connection: the deployment, not the request, is wrong.

Conditions a caller expects and handles (``KeyNotFoundError``, ``NoKeysError``,
``BucketNotFoundError``, a lost compare-and-set) are caught inside the mapped
block, before the mapping sees them; only what would escape is converted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from schemas.errors import NoResponders, NotConnected, RequestTimeout, StoreFull, TransportError

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


#: JetStream API error codes (nats-server errors.json) of a full store:
#: JSInsufficientResourcesErr (a write or a new stream over the server's
#: max_file_store / max_memory_store) and JSStorageResourcesExceededErr
#: (a stream's reservation over the account's storage limit).
STORE_FULL_ERR_CODES = frozenset({10023, 10047})
#: What StoreFull says (tests/faults/test_store_full.py looks for the code).
STORE_FULL = "JetStream storage is full (insufficient resources); free space and retry"


def is_store_full(err_code: object) -> bool:
    """Whether a JetStream API ``err_code`` (an APIError's, or an ack's JSON) says full."""
    return err_code in STORE_FULL_ERR_CODES


#: What ``map_jetstream_errors`` says when the server has no JetStream (``up`` and the
#: worker log show it; tests/integration/test_runtime.py looks for it).
NO_JETSTREAM = "JetStream is not available (start nats-server with -js)"


def jetstream_error(exc: BaseException, doing: str) -> BaseException:
    """The project error for nats-py's ``exc`` raised while ``doing``; ``exc`` itself
    when it is not nats-py's (a project error, a bug: those are not ours to map).

    For callers that hand an error on rather than raise it (a callback); others
    use :func:`map_jetstream_errors`.
    """
    # before the 503 below: nats-py raises a full store as ServiceUnavailableError too
    if isinstance(exc, nats.js.errors.APIError) and is_store_full(exc.err_code):
        return StoreFull(f"{doing}: {STORE_FULL}")
    if isinstance(exc, (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError)):
        return NotConnected(f"{doing}: {NO_JETSTREAM}")
    if isinstance(exc, (nats.errors.TimeoutError, TimeoutError)):
        return RequestTimeout(f"{doing}: JetStream did not answer in time")
    if isinstance(exc, _NOT_CONNECTED):
        return NotConnected(f"{doing}: not connected to NATS ({exc.__class__.__name__})")
    if isinstance(exc, nats.errors.Error):
        return TransportError(f"{doing}: {exc.__class__.__name__}: {exc}")
    return exc


@contextlib.contextmanager
def map_jetstream_errors(doing: str) -> Iterator[None]:
    """Raise the project's TransportError subclass for a nats-py error while ``doing``.

    ``doing`` says what was being done ("opening bucket ap_state") for the
    message. Unlike :func:`map_nats_errors` the nats-py error stays the
    ``__cause__``: a JetStream API error's code and description are what an
    operator reading the worker log needs. Other errors pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        mapped = jetstream_error(exc, doing)
        if mapped is exc:
            raise
        raise mapped from exc
