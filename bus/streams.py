"""JetStream streams that keep recent history, created on first use.

Several workers may start at once and each ensures the streams it reads, so
creation must be idempotent and race-safe: an existing stream is left exactly
as the operator configured it (retention, replicas), and a concurrent create
by another worker is not an error. New streams allow direct gets, which is how
every worker reads them (bus/tail.py); a stream created by an older release
without them is read message by message (STREAM.MSG.GET) until an operator
turns them on (``nats stream edit <name> --allow-direct``).
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client
from nats.js.errors import BadRequestError, NotFoundError

from bus.config import js_replicas
from bus.nats_errors import map_jetstream_errors
from bus.subjects import Subjects


async def ensure_stream(
    nc: Client,
    name: str,
    subjects: list[str],
    *,
    max_age_s: float,
    description: str,
    max_bytes: int = -1,
) -> bool:
    """Create stream ``name`` over ``subjects`` if missing; True if this call created it.

    NATS trouble is the project's TransportError family (NotConnected without
    JetStream or connection; bus/nats_errors.py), never a nats-py class.
    """
    with map_jetstream_errors(f"creating stream {name}"):
        return await _create_if_missing(nc, name, subjects, max_age_s, description, max_bytes)


async def _create_if_missing(
    nc: Client,
    name: str,
    subjects: list[str],
    max_age_s: float,
    description: str,
    max_bytes: int,
) -> bool:
    js = nc.jetstream()
    try:
        await js.stream_info(name)
        return False
    except NotFoundError:
        pass
    with contextlib.suppress(BadRequestError):  # created concurrently by another worker
        await js.add_stream(
            name=name,
            subjects=subjects,
            max_age=max_age_s,
            max_bytes=max_bytes,
            description=description,
            num_replicas=js_replicas(),
            # readers use direct gets, never consumers (bus/tail.py)
            allow_direct=True,
        )
        return True
    return False


async def ensure_telemetry_streams(
    nc: Client, subjects: Subjects, *, max_age_s: float = 3600.0
) -> None:
    """Heartbeats and metrics snapshots, kept ``max_age_s`` so a restarted
    anomaly or recovery worker catches up on recent history."""
    await ensure_stream(
        nc,
        subjects.heartbeat_stream,
        [subjects.heartbeat_all],
        max_age_s=max_age_s,
        description="agentic-payments heartbeats",
    )
    await ensure_stream(
        nc,
        subjects.metrics_stream,
        [subjects.metrics_all],
        max_age_s=max_age_s,
        description="agentic-payments metrics snapshots",
    )
