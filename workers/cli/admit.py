"""``agentic-payments admit``: the consortium admits a verifier key into its pool.

In a multi-organization deployment (README, deploy/nats/accounts.conf) each
organization runs its verifiers in its own NATS account; the pool that counts
is the membership bucket in the consortium's account, written only by the
consortium's operators. ``admit ID KEY`` writes ``KEY`` (hex or did:key,
handed over by the organization out of band) as the admission record
``admitted.<ID>`` with compare-and-set, giving the pool a new epoch; ``members
remove ID`` takes it out again. The consortium does not hold the private key, so
the record carries no proof of possession: its authority is that only the admin
role may write ``admitted.>`` (bus/permissions.py, schemas/pool.py).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bus import membership
from bus.subjects import Subjects
from schemas.errors import ConfigError, IdentityError
from schemas.identity import public_key_from_did
from workers.cli.kit import connection, json_option, nats_config, nats_options, output, token


def parse_public_key(text: str) -> bytes:
    """A 32-byte Ed25519 public key from 64 hex digits or a did:key."""
    try:
        key = public_key_from_did(text) if text.startswith("did:") else bytes.fromhex(text)
    except (ValueError, IdentityError) as exc:
        raise ConfigError(f"not a public key (64 hex digits or did:key): {exc}") from None
    if len(key) != 32:
        raise ConfigError(f"a public key is 32 bytes, got {len(key)}")
    return key


async def _admit(args: argparse.Namespace) -> int:
    key = parse_public_key(args.public_key)
    config = nats_config(args)
    async with connection(config, "agentic-payments-admit") as nc:
        subjects = Subjects(config.prefix)
        changed = await membership.admit(nc, subjects, args.id, key)
        pool = await membership.read_pool(nc, subjects)
    output(
        args,
        f"{args.id} {'admitted' if changed else 'already a member'}; pool epoch "
        f"{pool.epoch}, {len(pool.keys)} active",
        {"id": args.id, "changed": changed, "epoch": pool.epoch, "active": len(pool.keys)},
    )
    return 0


def cmd_admit(args: argparse.Namespace) -> int:
    return asyncio.run(_admit(args))


def register(sub: Any, kinds: Any) -> None:
    parser = sub.add_parser(
        "admit",
        help="admit a verifier's public key into the pool (consortium operators)",
        description="Admit KEY as pool seat ID: writes the admission record admitted.ID in "
        "the membership bucket of the account you connect to (compare-and-set; the pool "
        "gets a new epoch; refused if another seat holds KEY). In a "
        "multi-organization deployment the consortium runs this for each organization's "
        "verifier keys; a verifier's own start-up registration only lands in its "
        "organization's account. Exit codes: 0 ok, 69 cannot connect, 78 bad key.",
    )
    nats_options(parser)
    parser.add_argument("id", type=token, help="member id (the verifier's --id)")
    parser.add_argument("public_key", help="Ed25519 public key: 64 hex digits or did:key:z6Mk…")
    json_option(parser)
    parser.set_defaults(func=cmd_admit)
