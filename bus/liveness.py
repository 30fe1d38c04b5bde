"""A local liveness file: the worker proves its event loop turns, without NATS.

While the worker runs, its keep-alive loop (bus/keepalive.py) rewrites a small
JSON file every few seconds: ``{"v": 1, "kind", "id", "pid", "ts", "ttl_s"}``.
``agentic-payments check --liveness --kind K --id I`` reads it and exits 0 when
it is fresh (``now - ts <= ttl_s``), 1 when it is stale, missing or unreadable
— the probe a Kubernetes ``livenessProbe`` runs: it must not depend on NATS,
or a NATS outage would restart every worker at once.

Where: ``$AP_LIVENESS_DIR`` if set (a tmpfs such as ``/run/...`` or an
``emptyDir``), else ``DATA_DIR/run``; file name ``KIND-ID.alive``. The record
logic (encode, parse, verdict) is pure; only ``write`` and ``read`` touch disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bus.subjects import check_token

LIVENESS_VERSION = 1
MAX_FILE_BYTES = 4096


def liveness_dir(data_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("AP_LIVENESS_DIR")
    return Path(configured) if configured else data_dir / "run"


def liveness_path(directory: Path, kind: str, worker_id: str) -> Path:
    check_token(kind, "worker kind")
    check_token(worker_id, "worker id")
    return directory / f"{kind}-{worker_id}.alive"


@dataclass(frozen=True)
class LivenessRecord:
    kind: str
    worker_id: str
    pid: int
    ts: float
    ttl_s: float

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": LIVENESS_VERSION,
                "kind": self.kind,
                "id": self.worker_id,
                "pid": self.pid,
                "ts": self.ts,
                "ttl_s": self.ttl_s,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def parse(cls, data: bytes) -> LivenessRecord:
        """Strict: ValueError on anything but a version-1 record with the right types."""
        if len(data) > MAX_FILE_BYTES:
            raise ValueError("liveness file too large")
        try:
            obj = json.loads(data)
        except RecursionError:  # ~1000 nested '[' fit in the size limit (tests/fuzz)
            raise ValueError("liveness file nests too deeply") from None
        if not isinstance(obj, dict) or obj.get("v") != LIVENESS_VERSION:
            raise ValueError("not a version-1 liveness record")
        kind, wid, pid, ts, ttl = (obj.get(k) for k in ("kind", "id", "pid", "ts", "ttl_s"))
        if not (isinstance(kind, str) and isinstance(wid, str) and type(pid) is int):
            raise ValueError("liveness record has wrong field types")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (ts, ttl)):
            raise ValueError("liveness record has wrong field types")
        assert isinstance(ts, int | float) and isinstance(ttl, int | float)
        if ttl <= 0:
            raise ValueError("liveness ttl must be positive")
        return cls(kind=kind, worker_id=wid, pid=pid, ts=float(ts), ttl_s=float(ttl))


@dataclass(frozen=True)
class Verdict:
    alive: bool
    age_s: float | None
    reason: str


def verdict(
    record: LivenessRecord | None,
    now: float,
    max_age_s: float | None = None,
    *,
    kind: str | None = None,
    worker_id: str | None = None,
) -> Verdict:
    """Fresh means written at most ``max_age_s`` (default: the record's ttl) ago.

    A timestamp in the future by more than the allowed age is treated as stale
    (a clock jump, or a file copied from elsewhere), as is a record naming
    another worker.
    """
    if record is None:
        return Verdict(False, None, "no liveness file")
    if (kind is not None and record.kind != kind) or (
        worker_id is not None and record.worker_id != worker_id
    ):
        return Verdict(False, None, f"file belongs to {record.kind} {record.worker_id}")
    limit = record.ttl_s if max_age_s is None else max_age_s
    age = now - record.ts
    if age > limit:
        return Verdict(False, age, f"stale: last beat {age:.1f}s ago (limit {limit:g}s)")
    if age < -limit:
        return Verdict(False, age, f"timestamp {-age:.1f}s in the future")
    return Verdict(True, age, f"alive: last beat {max(age, 0.0):.1f}s ago (pid {record.pid})")


def write(path: Path, record: LivenessRecord) -> None:
    """Atomically replace the file (write a sibling, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(record.encode())
    os.replace(tmp, path)


def read(path: Path) -> LivenessRecord | None:
    """The record, or None when the file is missing or malformed."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        return LivenessRecord.parse(data)
    except (OSError, ValueError):
        return None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
