"""Client commands: ``keygen``, ``sign``, ``verify`` and ``demo``.

What an agent (or its operator) runs against a running system: make an identity,
sign a payment authorization as a VerificationRequest, submit it for consensus
and check the certificate that comes back. ``verify`` and ``demo`` exit 0 when
VALID (demo: and the tampered message INVALID), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus.client import VerifyClient, new_request_id, signed_request
from bus.tracing import setup_tracing, shutdown_telemetry
from schemas.errors import ConfigError
from schemas.identity import AgentIdentity
from schemas.messages import ConsensusResult, VerificationRequest
from workers.cli.kit import (
    EXIT_CONFIG,
    EXIT_NOT_VALID,
    attempt_timeout_option,
    client_threshold,
    connection,
    json_option,
    message_bytes,
    min_pool_option,
    nats_config,
    nats_options,
    output,
    pool_grace_option,
    threshold_option,
)


def _cert_json(cert: ConsensusResult) -> dict[str, Any]:
    return {
        "request_id": cert.request_id,
        "decision": cert.decision,
        "votes_for": cert.votes_for,
        "votes_against": cert.votes_against,
        "total_votes": cert.total_votes,
        "n": cert.n,
        "q": cert.q,
        "f": cert.f,
        "threshold": cert.threshold,
        "epoch": cert.epoch,
        "ballot_id": cert.ballot_id,
        "tally_id": cert.tally_id,
        "tally_key": cert.tally_key.hex(),
        "latency_us": cert.latency_us,
        "request_digest": cert.request_digest.hex(),
        "votes": [
            {"verifier_key": v.verifier_key.hex(), "valid": v.valid, "reason": v.reason}
            for v in cert.votes
        ],
    }


# ---------------------------------------------------------------- keygen, sign
def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite", file=sys.stderr)
        return EXIT_CONFIG
    ident = AgentIdentity.generate()
    ident.save(path)
    output(
        args,
        f"wrote {path} (mode 600)\ndid:        {ident.did}\npublic key: {ident.public_key_hex}",
        {"path": str(path), "did": ident.did, "public_key": ident.public_key_hex},
    )
    return 0


def _verdict_options(parser: argparse.ArgumentParser) -> None:
    """What else the verifiers must check beyond the signature (see README)."""
    parser.add_argument(
        "--chain-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a trust certificate (as written by 'trust issue --out'), leaf "
        "first; repeat for a chain. Verifiers then require a chain from "
        "the signing key to a trust anchor",
    )
    parser.add_argument(
        "--category",
        help="payment category: verifiers then require its authority quorum policy (or 'default')",
    )
    parser.add_argument(
        "--endorsement",
        action="append",
        default=[],
        metavar="KEY:SIG",
        help="an authority endorsement of the message for --category, as "
        "printed by 'authority endorse'; repeat for several",
    )


def _with_verdict_options(
    request: VerificationRequest, args: argparse.Namespace
) -> VerificationRequest:
    chain = tuple(Path(f).read_bytes() for f in args.chain_file)
    endorsements = []
    for item in args.endorsement:
        key, _, sig = item.partition(":")
        try:
            endorsements.append((bytes.fromhex(key), bytes.fromhex(sig)))
        except ValueError:
            raise ConfigError(f"--endorsement {item!r} must be KEY:SIG in hex") from None
    if endorsements and not args.category:
        raise ConfigError("--endorsement needs --category")
    if not (chain or args.category):
        return request
    # re-validated as a receiver would: wrong lengths or too many items fail here
    return VerificationRequest.from_wire(
        dataclasses.replace(
            request, chain=chain, category=args.category or "", endorsements=tuple(endorsements)
        ).to_wire()
    )


def cmd_sign(args: argparse.Namespace) -> int:
    ident = AgentIdentity.load(args.key)
    request = _with_verdict_options(
        signed_request(ident, message_bytes(args), args.request_id), args
    )
    if args.out:
        Path(args.out).write_bytes(request.encode())
    output(
        args,
        f"request_id: {request.request_id}\npublic_key: {request.public_key.hex()}\n"
        f"signature:  {request.signature.hex()}" + (f"\nwrote {args.out}" if args.out else ""),
        {
            "request_id": request.request_id,
            "public_key": request.public_key.hex(),
            "signature": request.signature.hex(),
            "did": ident.did,
        },
    )
    return 0


def _build_request(args: argparse.Namespace) -> VerificationRequest:
    if args.request_file:
        return VerificationRequest.decode(Path(args.request_file).read_bytes())
    return _with_verdict_options(_signed_from_args(args), args)


def _signed_from_args(args: argparse.Namespace) -> VerificationRequest:
    message = message_bytes(args)
    rid = args.request_id or new_request_id()
    if args.key:
        return signed_request(AgentIdentity.load(args.key), message, rid)
    if not (args.public_key and args.signature):
        raise ConfigError(
            "give --key FILE, or --public-key HEX and --signature HEX, or --request-file FILE"
        )
    try:
        return VerificationRequest(
            request_id=rid,
            message=message,
            signature=bytes.fromhex(args.signature),
            public_key=bytes.fromhex(args.public_key),
        )
    except ValueError:
        raise ConfigError("--public-key and --signature must be hex") from None


async def _verify(args: argparse.Namespace) -> int:
    request = _build_request(args)
    async with await VerifyClient.connect(
        nats_config(args),
        timeout=args.timeout,
        threshold=client_threshold(args.threshold),
        pool_grace_s=args.pool_grace_s,
        min_pool=args.min_pool,
    ) as client:
        cert = await client.verify_with_consensus(request)
    output(
        args,
        f"{cert.request_id}: {cert.summary()}\ncertificate re-checked against the "
        f"{cert.n}-verifier pool of epoch {cert.epoch}: OK",
        _cert_json(cert),
    )
    return 0 if cert.approved else EXIT_NOT_VALID


def _traced(run: Callable[[], int]) -> int:
    """A client command traced when OTEL_* asks for export (no cost otherwise)."""
    setup_tracing("agentic-payments-client")
    try:
        return run()
    finally:
        shutdown_telemetry()


def cmd_verify(args: argparse.Namespace) -> int:
    return _traced(lambda: asyncio.run(_verify(args)))


# ---------------------------------------------------------------- demo
async def _demo(args: argparse.Namespace) -> int:
    config = nats_config(args)
    async with connection(config, "agentic-payments-demo") as nc:
        client = VerifyClient(
            nc,
            prefix=config.prefix,
            timeout=args.timeout,
            threshold=client_threshold(args.threshold),
            pool_grace_s=args.pool_grace_s,
            min_pool=args.min_pool,
        )
        ident = AgentIdentity.generate()
        print(f"Agent identity: {ident.did}")
        message = "Payment authorization"
        request = signed_request(ident, message)
        print(f'Signed "{message}" ({len(request.signature)}-byte Ed25519 signature)')
        cert = await client.verify_with_consensus(request)
        print(
            f"Consensus: {cert.votes_for}/{cert.n} agents approved "
            f"({cert.decision}, q={cert.q}, f={cert.f}, epoch {cert.epoch}, "
            f"{cert.latency_us / 1000:.1f} ms)"
        )
        keys = await client.pool_keys(cert.epoch)  # the client already re-checked it
        print(
            f"Certificate re-checked offline against the {len(keys)}-key pool: OK "
            f"({cert.total_votes} signed votes, tally {cert.tally_id})"
        )
        tampered = VerificationRequest(
            request_id=new_request_id(),
            message=b"Payment authorization: $1,000,000",
            signature=request.signature,
            public_key=request.public_key,
        )
        bad = await client.verify_with_consensus(tampered)
        print(
            f'Tampered message "Payment authorization: $1,000,000": {bad.decision}, '
            f"{bad.votes_for}/{bad.n} approved, {bad.votes_against} rejected "
            f"({bad.votes[0].reason if bad.votes else 'no votes'})"
        )
        return 0 if cert.approved and bad.decision == "INVALID" else EXIT_NOT_VALID


def cmd_demo(args: argparse.Namespace) -> int:
    return _traced(lambda: asyncio.run(_demo(args)))


# ---------------------------------------------------------------- parser
def register(sub: Any, kinds: Any) -> None:
    """Add ``keygen``, ``sign``, ``verify`` and ``demo``."""
    keygen = sub.add_parser("keygen", help="create an Ed25519 identity file")
    keygen.add_argument("--out", required=True, help="key file to write (mode 600)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    json_option(keygen)
    keygen.set_defaults(func=cmd_keygen)

    sign = sub.add_parser("sign", help="sign a message as a VerificationRequest")
    sign.add_argument("--key", required=True, help="key file from keygen")
    sign.add_argument("--message", help="message text")
    sign.add_argument("--message-file", help="read the message bytes from a file")
    sign.add_argument("--request-id", help="request id (default: random)")
    sign.add_argument("--out", help="write the MessagePack request to this file")
    _verdict_options(sign)
    json_option(sign)
    sign.set_defaults(func=cmd_sign)

    verify = sub.add_parser(
        "verify",
        help="submit a request for consensus",
        description="Submit a signed message, re-check the certificate "
        "against the verifier pool of its epoch, and print its summary. "
        "Exit 0 if VALID; 1 if decided otherwise, if the certificate does "
        "not check out, or on an error reply; 69 if no tally answers in "
        "time or NATS is unreachable.",
    )
    nats_options(verify)
    verify.add_argument("--key", help="sign --message with this key file first")
    verify.add_argument("--public-key", help="signer public key, hex")
    verify.add_argument("--signature", help="signature, hex")
    verify.add_argument("--message", help="message text")
    verify.add_argument("--message-file", help="read the message bytes from a file")
    verify.add_argument("--request-file", help="a MessagePack request written by 'sign --out'")
    verify.add_argument("--request-id", help="request id (default: random)")
    _verdict_options(verify)
    threshold_option(verify, "threshold the certificate must have been decided under")
    min_pool_option(verify, "refuse certificates from a pool smaller than this")
    pool_grace_option(verify)
    attempt_timeout_option(verify)
    json_option(verify, help="print the certificate as JSON")
    verify.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="run the usage example against a running system")
    nats_options(demo)
    threshold_option(demo, "threshold the certificates must have been decided under")
    min_pool_option(demo, "refuse certificates from a pool smaller than this")
    pool_grace_option(demo)
    attempt_timeout_option(demo)
    demo.set_defaults(func=cmd_demo)
