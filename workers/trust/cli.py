"""``agentic-payments trust ...`` and ``worker trust``: the trust service's commands."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bus.runtime import now_ms
from bus.trust_client import TrustClient
from schemas.errors import (
    CodecError,
    ConfigError,
    IdentityError,
)
from schemas.identity import PUBLIC_KEY_BYTES, AgentIdentity
from schemas.trust import (
    PATH_LEN_UNLIMITED,
    PURPOSE_PAYMENT,
    PURPOSES,
    TrustAck,
    TrustCertificate,
    check_serial,
    issue,
)
from workers.cli.kit import (
    EXIT_NOT_VALID,
    client_options,
    connection,
    nats_config,
    output,
    positive,
    runtime_config,
    worker_options,
)
from workers.trust.chain import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_SIGNATURE_CHECKS,
)
from workers.trust.worker import TrustWorker


def _identity(path: str) -> AgentIdentity:
    """Load a key file; a missing or unsafe one is bad configuration (exit 78)."""
    try:
        return AgentIdentity.load(path)
    except IdentityError as exc:
        raise ConfigError(str(exc), code=exc.code) from None


def _key_arg(args: argparse.Namespace, hex_attr: str, file_attr: str, what: str) -> bytes:
    """A public key from --X HEX or --X-file KEYFILE (an AgentIdentity key file)."""
    text, path = getattr(args, hex_attr), getattr(args, file_attr)
    if bool(text) == bool(path):
        raise ConfigError(
            f"give exactly one of --{hex_attr.replace('_', '-')} HEX or "
            f"--{file_attr.replace('_', '-')} FILE for the {what}"
        )
    if path:
        return _identity(path).public_key
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"the {what} must be hex") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise ConfigError(
            f"the {what} must be {PUBLIC_KEY_BYTES} bytes "
            f"({2 * PUBLIC_KEY_BYTES} hex digits), got {len(key)}"
        )
    return key


def _cert_json(cert: TrustCertificate) -> dict[str, Any]:
    return {
        "serial": cert.serial,
        "subject_key": cert.subject_key.hex(),
        "issuer_key": cert.issuer_key.hex(),
        "not_before_ms": cert.not_before_ms,
        "not_after_ms": cert.not_after_ms,
        "purposes": list(cert.purposes),
        "path_len": cert.path_len,
    }


def _ack_json(ack: TrustAck) -> dict[str, Any]:
    return {
        "op": ack.op,
        "key": ack.key,
        "changed": ack.changed,
        "revision": ack.revision,
        "detail": ack.detail,
    }


async def _with_client(
    args: argparse.Namespace, body: Callable[[TrustClient], Awaitable[int]]
) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-trust-cli") as nc:
        return await body(TrustClient(nc, config.prefix, args.timeout))


def _print_ack(args: argparse.Namespace, ack: TrustAck) -> int:
    output(args, f"{ack.op} {ack.key}: {ack.detail} (revision {ack.revision})", _ack_json(ack))
    return 0


def cmd_add_anchor(args: argparse.Namespace) -> int:
    key = _key_arg(args, "public_key", "public_key_file", "anchor key")

    async def body(client: TrustClient) -> int:
        return _print_ack(args, await client.add_anchor(key, args.label))

    return asyncio.run(_with_client(args, body))


def cmd_remove_anchor(args: argparse.Namespace) -> int:
    key = _key_arg(args, "public_key", "public_key_file", "anchor key")

    async def body(client: TrustClient) -> int:
        return _print_ack(args, await client.remove_anchor(key))

    return asyncio.run(_with_client(args, body))


def cmd_issue(args: argparse.Namespace) -> int:
    issuer = _identity(args.issuer_key)
    subject = _key_arg(args, "subject_key", "subject_key_file", "subject key")
    not_before = args.not_before_ms if args.not_before_ms is not None else now_ms()
    not_after = not_before + int(args.valid_days * 86_400_000)
    try:
        cert = issue(
            issuer,
            serial=check_serial(args.serial),
            subject_key=subject,
            not_before_ms=not_before,
            not_after_ms=not_after,
            purposes=args.purpose or [PURPOSE_PAYMENT],
            path_len=args.path_len,
        )
    except CodecError as exc:
        raise ConfigError(f"cannot issue this certificate: {exc}") from None
    if args.out:
        Path(args.out).write_bytes(cert.encode())
    data = {"certificate": _cert_json(cert), "hex": cert.encode().hex(), "out": args.out}
    if args.no_store:
        output(
            args,
            f"issued {cert.serial} (not stored)"
            + (f"; wrote {args.out}" if args.out else f"\n{cert.encode().hex()}"),
            data,
        )
        return 0

    async def body(client: TrustClient) -> int:
        ack = await client.add_cert(cert)
        data["stored"] = _ack_json(ack)
        output(
            args,
            f"issued {cert.serial}: {ack.detail} as {ack.key} (revision "
            f"{ack.revision})" + (f"; wrote {args.out}" if args.out else ""),
            data,
        )
        return 0

    return asyncio.run(_with_client(args, body))


def cmd_add_cert(args: argparse.Namespace) -> int:
    raw = Path(args.cert_file).read_bytes()

    async def body(client: TrustClient) -> int:
        return _print_ack(args, await client.add_cert(raw))

    return asyncio.run(_with_client(args, body))


def cmd_revoke(args: argparse.Namespace) -> int:
    async def body(client: TrustClient) -> int:
        return _print_ack(args, await client.revoke_cert(args.serial, args.reason))

    return asyncio.run(_with_client(args, body))


def cmd_validate(args: argparse.Namespace) -> int:
    leaf = _key_arg(args, "leaf_key", "leaf_key_file", "leaf key")
    presented = tuple(Path(p).read_bytes() for p in args.cert or [])

    async def body(client: TrustClient) -> int:
        reply = await client.validate(
            leaf,
            purpose=args.purpose,
            presented=presented,
            now_ms=args.now_ms,
            min_revision=args.min_revision,
        )
        path = [TrustCertificate.decode(raw) for raw in reply.path]
        data = {
            "ok": reply.ok,
            "code": reply.code,
            "reason": reply.reason,
            "failed_link": reply.failed_link,
            "path": [_cert_json(c) for c in path],
            "signature_checks": reply.signature_checks,
            "expires_ms": reply.expires_ms,
            "revision": reply.revision,
            "now_ms": reply.now_ms,
        }
        if reply.ok:
            human = f"VALID: {reply.reason}\n" + "\n".join(
                f"  link {i}: {c.serial} {c.subject_key.hex()[:16]}… <- "
                f"{c.issuer_key.hex()[:16]}… ({','.join(c.purposes)})"
                for i, c in enumerate(path)
            )
        else:
            human = f"INVALID [{reply.code}]: {reply.reason}"
        output(args, human, data)
        return 0 if reply.ok else EXIT_NOT_VALID

    return asyncio.run(_with_client(args, body))


def cmd_list(args: argparse.Namespace) -> int:
    async def body(client: TrustClient) -> int:
        listing = await client.list()
        anchors = [
            {"public_key": a.public_key.hex(), "label": a.label, "added_ms": a.added_ms}
            for a in listing.anchors
        ]
        certs = [
            {
                **_cert_json(r.certificate),
                "revoked": r.revoked,
                "reason": r.reason,
                "revoked_ms": r.revoked_ms,
            }
            for r in listing.certs
        ]
        lines = [
            f"revision {listing.revision}: {len(anchors)} anchor(s), "
            f"{len(certs)} certificate(s)" + (" (truncated)" if listing.truncated else "")
        ]
        lines += [f"  anchor {a['public_key']} {a['label']}" for a in anchors]
        lines += [
            f"  cert   {c['serial']:<20} {c['subject_key'][:16]}… <- "
            f"{c['issuer_key'][:16]}… {','.join(c['purposes'])}"
            + (f"  REVOKED ({c['reason']})" if c["revoked"] else "")
            for c in certs
        ]
        output(
            args,
            "\n".join(lines),
            {
                "revision": listing.revision,
                "anchors": anchors,
                "certs": certs,
                "truncated": listing.truncated,
            },
        )
        return 0

    return asyncio.run(_with_client(args, body))


def _client_options(parser: argparse.ArgumentParser) -> None:
    client_options(parser, "the trust service", timeout=5.0)


def _key_options(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", help=f"{what} as 64 hex digits")
    group.add_argument(
        f"--{name}-file", help=f"read the {what} from an agentic-payments key file (keygen)"
    )


def register(sub: Any, kinds: Any) -> None:
    """Add ``worker trust`` and the ``trust`` command group to the CLI."""
    worker = kinds.add_parser(
        "trust",
        help="trust anchors, certificates, chain validation",
        description="The trust-chain validator: answers PREFIX.trust.<op> (add-anchor, "
        "remove-anchor, add-cert, revoke-cert, validate, list; queue group 'trust', so run "
        "as many as you like). Anchors and certificates live in the KV bucket PREFIX_state "
        "(keys anchor.<hex>, cert.<serial>).",
    )
    worker.add_argument("--id", default="trust1", help="worker id (default %(default)s)")
    worker.add_argument(
        "--max-depth",
        type=int,
        default=DEFAULT_MAX_DEPTH,
        help="most certificates in a chain (default %(default)s)",
    )
    worker.add_argument(
        "--max-signature-checks",
        type=int,
        default=DEFAULT_MAX_SIGNATURE_CHECKS,
        help="signature checks one validation may spend before answering "
        "CHAIN_BUDGET (default %(default)s)",
    )
    worker_options(worker)
    worker.set_defaults(
        worker_factory=lambda args: TrustWorker(
            runtime_config(args, args.id),
            max_depth=args.max_depth,
            max_signature_checks=args.max_signature_checks,
        )
    )

    purposes = ", ".join(sorted(PURPOSES))
    trust = sub.add_parser(
        "trust",
        help="manage trust anchors and certificates, validate chains",
        description="Talk to the trust service (agentic-payments worker trust). A chain runs "
        "from a leaf key through certificates to a trust anchor; every link's signature, "
        "validity window, purpose, path length and revocation is checked. Exit codes: 0 ok "
        "(validate: a valid chain), 1 an error reply or (validate) no valid chain, 69 no "
        "trust worker answers or NATS is unreachable, 78 bad arguments or key file.",
        epilog="Example: agentic-payments keygen --out root.key; agentic-payments trust "
        "add-anchor --public-key-file root.key; agentic-payments keygen --out agent.key; "
        "agentic-payments trust issue --issuer-key root.key --subject-key-file agent.key "
        "--serial agent-1 --purpose payment; agentic-payments trust validate "
        "--leaf-key-file agent.key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")

    add = ops.add_parser(
        "add-anchor",
        help="trust a root key",
        description="Store a trust anchor (root key). Chains end at an "
        "anchor; anchors are not restricted by purpose or path length. "
        "Adding an existing anchor again is a no-op (or updates its label).",
    )
    _key_options(add, "public-key", "anchor public key")
    add.add_argument("--label", default="", help="a note for operators (e.g. 'acme root')")
    _client_options(add)
    add.set_defaults(func=cmd_add_anchor)

    remove = ops.add_parser(
        "remove-anchor",
        help="stop trusting a root key",
        description="Delete a trust anchor: every chain ending at it "
        "stops validating. Exit 1 [TRUST_NOT_FOUND] if there is none.",
    )
    _key_options(remove, "public-key", "anchor public key")
    _client_options(remove)
    remove.set_defaults(func=cmd_remove_anchor)

    iss = ops.add_parser(
        "issue",
        help="sign a certificate with an issuer key file and store it",
        description="Sign a certificate 'ISSUER vouches for SUBJECT for PURPOSES' with the "
        "issuer's key file and store it through the trust service (which checks the "
        f"signature). Purposes: {purposes}. A payment signer's leaf certificate carries "
        "'payment'; a certificate for an intermediate CA carries 'ca' plus every purpose it "
        "may delegate, and --path-len limits the CAs allowed below it (-1: unlimited).",
    )
    iss.add_argument("--issuer-key", required=True, help="issuer key file (keygen)")
    _key_options(iss, "subject-key", "subject public key")
    iss.add_argument(
        "--serial", required=True, help="unique serial, 1-64 characters of A-Z a-z 0-9 _ -"
    )
    iss.add_argument(
        "--purpose",
        action="append",
        choices=sorted(PURPOSES),
        help=f"a purpose (repeat for several; default {PURPOSE_PAYMENT})",
    )
    iss.add_argument(
        "--path-len",
        type=int,
        default=0,
        help=f"intermediate CAs allowed below this one; {PATH_LEN_UNLIMITED} unlimited "
        "(default %(default)s)",
    )
    iss.add_argument(
        "--not-before-ms", type=int, default=None, help="start of validity, Unix ms (default now)"
    )
    iss.add_argument(
        "--valid-days",
        type=positive,
        default=365.0,
        help="validity length in days (default %(default)s)",
    )
    iss.add_argument("--out", help="also write the certificate (MessagePack) to this file")
    iss.add_argument(
        "--no-store",
        action="store_true",
        help="only sign (print or --out), do not send it to the service",
    )
    _client_options(iss)
    iss.set_defaults(func=cmd_issue)

    add_cert = ops.add_parser(
        "add-cert",
        help="store a certificate file",
        description="Store a certificate written by 'issue --out' "
        "(exit 1 [TRUST_BAD_SIGNATURE] if its signature is bad, "
        "[TRUST_CONFLICT] if its serial is taken).",
    )
    add_cert.add_argument("cert_file", help="certificate file (MessagePack)")
    _client_options(add_cert)
    add_cert.set_defaults(func=cmd_add_cert)

    revoke = ops.add_parser(
        "revoke",
        help="revoke a stored certificate by serial",
        description="Mark a certificate revoked: every chain through it "
        "fails with CHAIN_REVOKED, even when a request presents it.",
    )
    revoke.add_argument("serial", help="certificate serial")
    revoke.add_argument("--reason", default="", help="why (shown in chain errors)")
    _client_options(revoke)
    revoke.set_defaults(func=cmd_revoke)

    val = ops.add_parser(
        "validate",
        help="validate a chain from a leaf key to an anchor",
        description="Build a chain from the leaf key to any trust anchor over the stored "
        "certificates plus any --cert files. Prints the path, or the failing link and why "
        "(CHAIN_EXPIRED, CHAIN_SIGNATURE, CHAIN_LOOP, CHAIN_PATH_LENGTH, CHAIN_PURPOSE, "
        "CHAIN_REVOKED, CHAIN_BUDGET, CHAIN_DEPTH, CHAIN_NO_ANCHOR, ...). Exit 0 if valid, 1 "
        "if not.",
    )
    _key_options(val, "leaf-key", "leaf public key")
    val.add_argument(
        "--purpose",
        default=PURPOSE_PAYMENT,
        choices=sorted(PURPOSES),
        help="purpose the chain must allow (default %(default)s)",
    )
    val.add_argument("--cert", action="append", help="a presented certificate file (repeat)")
    val.add_argument(
        "--now-ms",
        type=int,
        default=None,
        help="validate at this Unix ms instead of the service's clock",
    )
    val.add_argument(
        "--min-revision",
        type=int,
        default=None,
        help="wait until the service has applied this state revision",
    )
    _client_options(val)
    val.set_defaults(func=cmd_validate)

    lst = ops.add_parser("list", help="list anchors and certificates")
    _client_options(lst)
    lst.set_defaults(func=cmd_list)


__all__ = ["TrustClient", "TrustWorker", "register"]
