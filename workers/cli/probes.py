"""``agentic-payments check --liveness``: the local, NATS-free liveness probe.

Reads the worker's liveness file (bus/liveness.py) and exits 0 when it is
fresh, 1 when it is stale, missing or unreadable. The readiness probe is the
plain ``agentic-payments check`` (a status request over NATS).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bus import liveness

EXIT_ALIVE = 0
EXIT_STALE = 1


def check_liveness(args: argparse.Namespace) -> int:
    path = liveness.liveness_path(liveness.liveness_dir(Path(args.data_dir)), args.kind, args.id)
    record = liveness.read(path)
    result = liveness.verdict(record, time.time(), args.max_age, kind=args.kind, worker_id=args.id)
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "kind": args.kind,
                    "id": args.id,
                    "alive": result.alive,
                    "age_s": None if result.age_s is None else round(result.age_s, 3),
                    "reason": result.reason,
                    "file": str(path),
                },
                sort_keys=True,
            )
        )
    else:
        print(f"{args.kind} {args.id}: {result.reason} ({path})")
    return EXIT_ALIVE if result.alive else EXIT_STALE
