"""CLI of the key manager: ``worker keys`` and ``keys create|rotate|revoke|...``.

Registered by workers/cli/main.py through EXTENSIONS. Exit codes as everywhere:
0 ok; 1 the key manager refused (its error code is printed, e.g.
KEY_NOT_FOUND, KEY_STATE_CONFLICT); 69 NATS unreachable or no key manager
answers; 70 internal error; 78 bad configuration (e.g. MASTER_KEY_INVALID).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from bus.key_client import KeyClient
from bus.runtime import Worker
from schemas.keys import KeyInfo, KeyPolicy, KeyPurpose
from workers.cli.kit import (
    client_options,
    connection,
    int_at_least,
    json_option,
    message_bytes,
    nats_config,
    output,
    positive,
    runtime_config,
    worker_options,
)
from workers.keys.crypto import MasterKey, write_master_key
from workers.keys.worker import DEFAULT_SWEEP_S, KeysWorker

log = logging.getLogger("agentic_payments.keys")


# ---------------------------------------------------------------- worker keys
def _make_worker(args: argparse.Namespace) -> Worker:
    runtime = runtime_config(args, args.id)
    default = runtime.data_dir / "keys" / "master.key"
    master, created = MasterKey.resolve(
        Path(args.master_key_file) if args.master_key_file else None, default
    )
    if created:
        log.warning(
            "no master key configured: generated a development master key at %s "
            "(production must supply its own: --master-key-file, AP_MASTER_KEY_FILE "
            "or AP_MASTER_KEY)",
            default,
        )
    return KeysWorker(
        runtime,
        master,
        sweep_interval_s=args.sweep_interval_s,
        key_file=Path(args.key_file) if args.key_file else None,
    )


# ---------------------------------------------------------------- keys commands
def _info_human(info: KeyInfo) -> str:
    rec = info.record
    pol = rec.policy
    lines = [
        f"{rec.name}  {rec.purpose}  {rec.state}  latest v{rec.latest.version}  "
        f"min verify v{pol.min_verify_version} / sign v{pol.min_sign_version}  "
        f"auto-rotate {pol.auto_rotate_period_ms // 1000 or 'off'}"
        f"{'s' if pol.auto_rotate_period_ms else ''}  "
        f"deletion {'allowed' if pol.deletion_allowed else 'forbidden'}"
    ]
    for ver in rec.versions:
        flags = []
        if ver.revoked:
            flags.append(f"REVOKED ({ver.revoked_reason})")
        if ver.expires_at_ms:
            flags.append(f"expires_at_ms={ver.expires_at_ms}")
        lines.append(f"  v{ver.version}  {ver.public_key.hex()}  {' '.join(flags)}".rstrip())
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-keys-cli") as nc:
        client = KeyClient(nc, config.prefix, timeout=args.timeout)
        action = args.action
        if action == "list":
            listed = await client.list()
            output(
                args,
                "\n".join(_info_human(k) for k in listed.keys) or "no keys",
                {"keys": [k.as_json() for k in listed.keys]},
            )
            return 0
        if action == "sign":
            sig = await client.sign(args.name, message_bytes(args), args.version)
            output(
                args,
                f"key {sig.name} v{sig.version}\npublic_key: {sig.public_key.hex()}\n"
                f"signature:  {sig.signature.hex()}",
                {
                    "name": sig.name,
                    "version": sig.version,
                    "public_key": sig.public_key.hex(),
                    "signature": sig.signature.hex(),
                },
            )
            return 0
        if action == "sweep":
            swept = await client.sweep()
            output(
                args,
                f"rotated: {', '.join(swept.rotated) or 'none'}\n"
                f"destroyed: {', '.join(swept.destroyed) or 'none'}\n"
                f"statuses written: {swept.statuses_written}",
                {
                    "rotated": list(swept.rotated),
                    "destroyed": list(swept.destroyed),
                    "statuses_written": swept.statuses_written,
                },
            )
            return 0
        info: KeyInfo
        if action == "create":
            policy: dict[str, Any] = {}
            for opt in ("auto_rotate_period_s", "expires_after_s", "deletion_wait_s"):
                if getattr(args, opt) is not None:
                    policy[opt] = getattr(args, opt)
            if args.deletion_allowed:
                policy["deletion_allowed"] = True
            info = await client.create(args.name, args.purpose, **policy)
        elif action == "rotate":
            info = await client.rotate(args.name)
        elif action == "revoke":
            info = await client.revoke(args.name, args.reason, args.version)
        elif action == "config":
            settings: dict[str, Any] = {}
            for opt in (
                "min_verify_version",
                "min_sign_version",
                "auto_rotate_period_s",
                "expires_after_s",
                "deletion_wait_s",
            ):
                if getattr(args, opt) is not None:
                    settings[opt] = getattr(args, opt)
            if args.deletion_allowed is not None:
                settings["deletion_allowed"] = args.deletion_allowed == "yes"
            info = await client.config(args.name, **settings)
        else:  # get, disable, enable, delete
            info = await getattr(client, action)(args.name)
        output(args, _info_human(info), info.as_json())
        return 0


def cmd_keys(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def cmd_init_master(args: argparse.Namespace) -> int:
    path = Path(args.out)
    write_master_key(path, force=args.force)
    output(
        args,
        f"wrote a new master key to {path} (mode 600); start the key manager with "
        f"--master-key-file {path} or AP_MASTER_KEY_FILE={path}",
        {"path": str(path), "mode": "600"},
    )
    return 0


_non_negative_int = int_at_least(0)
_version = int_at_least(1)


def register(sub: Any, kinds: Any) -> None:
    worker = kinds.add_parser(
        "keys",
        help="key manager: versioned keys, rotation, revocation, signing",
        description="The key manager. Answers PREFIX.keys.<op> (queue group 'keys'), keeps "
        "keys in the KV bucket PREFIX_keys (seeds sealed with SecretBox under the master "
        "key) and the public status of every key version in PREFIX_state. Master key: "
        "--master-key-file, else AP_MASTER_KEY_FILE, else AP_MASTER_KEY (64 hex or 44 "
        "base64 characters), else DATA_DIR/keys/master.key — created (0600) if missing, "
        "for development only. A missing/malformed configured key exits 78.",
    )
    worker.add_argument("--id", default="keys1", help="worker id (default %(default)s)")
    worker.add_argument("--master-key-file", help="master key file (0600), from 'keys init-master'")
    worker.add_argument(
        "--key-file",
        help="the manager's own Ed25519 identity, which signs "
        "revocation events (default DATA_DIR/keys/keys-ID.key, created if "
        "missing)",
    )
    worker.add_argument(
        "--sweep-interval-s",
        type=positive,
        default=DEFAULT_SWEEP_S,
        help="seconds between sweeps: auto-rotation by age, destruction "
        "after the deletion wait, status repair (default %(default)s)",
    )
    worker_options(worker)
    worker.set_defaults(worker_factory=_make_worker)

    keys = sub.add_parser(
        "keys",
        help="manage keys in the key manager (create, rotate, revoke, sign, ...)",
        description="Talk to the key manager ('agentic-payments worker keys'). Private keys "
        "never leave it: 'sign' returns a signature. Exit 0 ok, 1 refused (error code "
        "printed), 69 no key manager / NATS, 78 bad configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  agentic-payments keys create pay-agent --purpose agent_identity "
        "--auto-rotate-period-s 86400\n  agentic-payments keys sign pay-agent "
        "--message 'pay 10 EUR'\n  agentic-payments keys revoke pay-agent --reason "
        "compromised --json",
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        if named:
            parser.add_argument("name", help="key name (1-64 of A-Z a-z 0-9 _ - .)")
        client_options(parser, "the key manager", timeout=10.0)
        parser.set_defaults(func=cmd_keys)
        return parser

    purposes = [p.value for p in KeyPurpose]
    create = action("create", "create a key (version 1) with a purpose and a policy")
    create.add_argument("--purpose", required=True, choices=purposes, help="what the key is for")
    create.add_argument(
        "--auto-rotate-period-s",
        type=_non_negative_int,
        help="rotate automatically once the latest version is this old (0/absent: never)",
    )
    create.add_argument(
        "--expires-after-s",
        type=_non_negative_int,
        help="each version expires this long after its creation (0/absent: never)",
    )
    create.add_argument(
        "--deletion-allowed",
        action="store_true",
        help="allow 'delete' (default: the key can never be deleted)",
    )
    create.add_argument(
        "--deletion-wait-s",
        type=_non_negative_int,
        help="waiting period between delete and destruction "
        f"(default {KeyPolicy().deletion_wait_ms // 1000})",
    )
    action("rotate", "add a new version (signing moves to it; old versions still verify)")
    revoke = action("revoke", "revoke a key version (default: every version) at once")
    revoke.add_argument("--reason", required=True, help="why (recorded and published)")
    revoke.add_argument(
        "--version", type=_version, default=0, help="only this version (default: all)"
    )
    action("list", "list every key (public parts only)", named=False)
    action("get", "show one key")
    sign = action(
        "sign",
        "sign a message with a key (the private key stays in the manager): an "
        "agent_identity key signs the message as is (never one starting with "
        "'agentic-payments/'), a document_signing key signs "
        "'agentic-payments/document/v1\\0' + message; other purposes are refused",
    )
    group = sign.add_mutually_exclusive_group(required=True)
    group.add_argument("--message", help="message text (UTF-8)")
    group.add_argument("--message-file", help="read the message bytes from a file")
    sign.add_argument(
        "--version", type=_version, default=0, help="sign with this version (default: the latest)"
    )
    action("disable", "disable a key (verifiers refuse it; enable undoes it)")
    action("enable", "enable a disabled key, or cancel a pending deletion")
    action(
        "delete",
        "schedule destruction after the policy's waiting period (only if the "
        "policy allows deletion)",
    )
    config = action("config", "change a key's policy (min versions, rotation, expiry, deletion)")
    config.add_argument(
        "--min-verify-version",
        type=_version,
        help="versions below this are refused by verifiers (cannot go down)",
    )
    config.add_argument(
        "--min-sign-version",
        type=_version,
        help="versions below this cannot sign (>= min verify version)",
    )
    config.add_argument(
        "--auto-rotate-period-s", type=_non_negative_int, help="auto-rotation period (0: off)"
    )
    config.add_argument(
        "--expires-after-s",
        type=_non_negative_int,
        help="lifetime of versions created from now on (0: never expire)",
    )
    config.add_argument(
        "--deletion-allowed", choices=["yes", "no"], help="whether 'delete' is allowed"
    )
    config.add_argument(
        "--deletion-wait-s",
        type=_non_negative_int,
        help="waiting period between delete and destruction",
    )
    action(
        "sweep",
        "run the scheduled sweep now: rotate keys due by age, destroy keys "
        "past their deletion wait, repair public statuses",
        named=False,
    )

    init = actions.add_parser(
        "init-master",
        help="create a master key file (0600)",
        description="Write 32 random bytes (hex) to a new file with "
        "mode 0600, for --master-key-file / AP_MASTER_KEY_FILE.",
    )
    init.add_argument("--out", required=True, help="file to create")
    init.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing file (every key sealed under the old "
        "master key becomes unusable)",
    )
    json_option(init)
    init.set_defaults(func=cmd_init_master)
