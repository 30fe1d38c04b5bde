"""CLI of the consensus workers: ``worker verifier`` and ``worker tally``.

Registered by workers/cli/main.py through EXTENSIONS, like every worker package's
CLI. The tally's defaults are ``TallyOptions``'s, the runtime's ``RuntimeConfig``'s.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bus.runtime import Worker
from schemas.errors import ConfigError
from schemas.quorum import parse_threshold
from workers.cli.kit import (
    min_pool_option,
    non_negative,
    positive,
    runtime_config,
    threshold_option,
    worker_options,
)
from workers.consensus.tally import TallyOptions, TallyWorker
from workers.consensus.verifier import VerifierWorker

MIB = 1024 * 1024
#: The defaults the tally's options show; ``TallyOptions`` is where they live.
TALLY_DEFAULTS = TallyOptions()


def tally_pins(values: list[str]) -> dict[str, bytes]:
    """``ID=HEX`` pairs (repeatable option, or comma separated in AP_TALLY_KEYS)."""
    pins: dict[str, bytes] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            tally_id, sep, key_hex = item.partition("=")
            try:
                key = bytes.fromhex(key_hex)
            except ValueError:
                key = b""
            if not sep or not tally_id or len(key) != 32:
                raise ConfigError(f"--tally-key {item!r} is not ID=<64 hex digits>")
            pins[tally_id] = key
    return pins


def make_verifier(args: argparse.Namespace) -> Worker:
    env = os.environ.get("AP_TALLY_KEYS", "")
    return VerifierWorker(
        runtime_config(args, args.id),
        key_file=Path(args.key_file) if args.key_file else None,
        tally_keys=tally_pins([*(args.tally_key or []), env]) or None,
    )


def tally_options(args: argparse.Namespace) -> TallyOptions:
    return TallyOptions(
        threshold=parse_threshold(args.threshold),
        deadline_s=args.deadline_ms / 1000,
        max_batch=args.max_batch,
        max_inflight=args.max_inflight,
        max_pending=args.max_pending,
        max_pending_bytes=int(args.max_pending_mib * MIB),
        durable_idempotency=not args.no_durable_idempotency,
        audit_days=args.audit_days,
        min_pool=args.min_pool,
    )


def make_tally(args: argparse.Namespace) -> Worker:
    return TallyWorker(
        runtime_config(args, args.id),
        tally_options(args),
        key_file=Path(args.key_file) if args.key_file else None,
    )


def register(sub: Any, kinds: Any) -> None:
    """Add ``worker verifier`` and ``worker tally``."""
    verifier = kinds.add_parser(
        "verifier",
        help="verify ballots and vote",
        description="A verifier: registers its public key in the pool "
        "(KV bucket PREFIX_members) and answers every ballot with one "
        "signed vote.",
    )
    verifier.add_argument("--id", required=True, help="verifier id, unique in the pool (v1)")
    verifier.add_argument(
        "--key-file",
        help="Ed25519 key file (default DATA_DIR/keys/verifier-ID.key, created if missing)",
    )
    verifier.add_argument(
        "--tally-key",
        action="append",
        metavar="ID=HEX",
        help="judge only ballots of tally ID signed by this Ed25519 key (repeatable; also "
        "AP_TALLY_KEYS=ID=HEX,...), instead of the tally records of the pool; for verifiers "
        "that cannot read the tallies' pool (another NATS account): the epoch rule is then off",
    )
    worker_options(verifier)
    verifier.set_defaults(worker_factory=make_verifier)

    defaults = TALLY_DEFAULTS
    tally = kinds.add_parser(
        "tally",
        help="batch requests, count votes, certify",
        description="A tally: answers PREFIX.verify.request (queue group "
        "'tally') with a signed certificate decided by BFT quorum.",
    )
    tally.add_argument("--id", default="t1", help="tally id (default %(default)s)")
    tally.add_argument("--key-file", help="tally signing key (default DATA_DIR/keys/tally-ID.key)")
    threshold_option(tally, "quorum threshold")
    min_pool_option(tally, "refuse to decide (POOL_TOO_SMALL) below this many active verifiers")
    tally.add_argument(
        "--deadline-ms",
        type=int,
        default=round(defaults.deadline_s * 1000),
        help="ballot deadline; undecided requests become TIMEOUT (default %(default)s)",
    )
    tally.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help="most requests in one ballot (default %(default)s)",
    )
    tally.add_argument(
        "--max-inflight",
        type=int,
        default=defaults.max_inflight,
        help="ballots open at once before requests queue (default %(default)s)",
    )
    tally.add_argument(
        "--max-pending",
        type=int,
        default=defaults.max_pending,
        help="requests held before answering OVERLOADED (default %(default)s)",
    )
    tally.add_argument(
        "--max-pending-mib",
        type=positive,
        default=defaults.max_pending_bytes // MIB,
        help="request bytes held before answering OVERLOADED (default %(default)s MiB)",
    )
    tally.add_argument(
        "--audit-days",
        type=non_negative,
        default=defaults.audit_days,
        help="create the audit stream PREFIX_AUDIT over PREFIX.decision.> "
        "keeping certificates this many days if it does not exist "
        "(0: do not create it; default %(default)s)",
    )
    tally.add_argument(
        "--no-durable-idempotency",
        action="store_true",
        help="keep decisions in this tally's memory only (no decisions bucket: "
        "faster, but retries survive neither a restart nor another tally)",
    )
    worker_options(tally)
    tally.set_defaults(worker_factory=make_tally)
