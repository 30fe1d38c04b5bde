"""agentic-payments authority ... (and: agentic-payments worker authority).

Commands talk to a running authority worker over PREFIX.authority.<op>.
Once a policy-admin policy exists every change needs endorsements over the
digest of the new record: print it with --digest-only, have each admin
authority run 'authority endorse --category policy-admin --digest HEX', and
pass the results with --endorsement KEY:SIG (or sign here with
--sign-with KEYFILE). Bootstrap: add the authorities, then set policy-admin.

Exit codes: 0 done / policy met; 1 refused or policy not met (the error code
is printed, and in the JSON with --json); 2 usage; 69 NATS unreachable or no
authority worker answers; 78 bad configuration (key file, hex, threshold).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bus.authority_client import AuthorityClient
from schemas.authority import (
    ADMIN_CATEGORY,
    AuthorityRecord,
    Endorsement,
    PolicyGroup,
    QuorumPolicy,
    TrustLevel,
    check_category,
    message_digest,
    parse_fraction,
    sign_endorsement,
)
from schemas.errors import CodecError, ConfigError, RemoteError
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, AgentIdentity
from workers.authority.worker import AuthorityWorker
from workers.cli.kit import (
    EXIT_NOT_VALID,
    client_options,
    connection,
    json_option,
    message_bytes,
    nats_config,
    output,
    runtime_config,
    worker_options,
)

LEVELS = [level.value for level in TrustLevel]


# ---------------------------------------------------------------- parsing helpers
def _hex(text: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{what} must be hex") from None
    if len(raw) != size:
        raise ConfigError(f"{what} must be {size} bytes ({2 * size} hex characters)")
    return raw


def _category(text: str) -> str:
    try:
        return check_category(text)
    except CodecError as exc:
        raise ConfigError(str(exc)) from None


def _public_key(args: argparse.Namespace) -> bytes:
    if getattr(args, "key_file", None):
        return AgentIdentity.load(args.key_file).public_key
    if not getattr(args, "public_key", None):
        raise ConfigError("give the authority's public key (hex) or --key-file")
    return _hex(args.public_key, PUBLIC_KEY_BYTES, "public key")


def _endorsement_arg(text: str) -> Endorsement:
    key, sep, sig = text.partition(":")
    if not sep:
        raise ConfigError("an endorsement is PUBLIC_KEY_HEX:SIGNATURE_HEX")
    return Endorsement(
        _hex(key, PUBLIC_KEY_BYTES, "endorsement key"),
        _hex(sig, SIGNATURE_BYTES, "endorsement signature"),
    )


def _endorsements(
    args: argparse.Namespace, category: str, digest: bytes
) -> tuple[Endorsement, ...]:
    out = [_endorsement_arg(text) for text in args.endorsement or ()]
    out += [
        sign_endorsement(AgentIdentity.load(path), category, digest)
        for path in getattr(args, "sign_with", None) or ()
    ]
    return tuple(out)


def _digest(args: argparse.Namespace) -> bytes:
    if args.digest:
        return _hex(args.digest, 32, "digest")
    if args.message_file is None and args.message is None:
        raise ConfigError("give --digest HEX, --message TEXT or --message-file PATH")
    return message_digest(message_bytes(args))


def _group(text: str) -> PolicyGroup:
    parts = text.split(":")
    if not 2 <= len(parts) <= 3:
        raise ConfigError(f"group {text!r} must be K:LEVEL or K:LEVEL:HEX,HEX,...")
    try:
        k = int(parts[0])
        level = TrustLevel(parts[1]).value
        members = (
            tuple(_hex(h, PUBLIC_KEY_BYTES, "group member") for h in parts[2].split(",") if h)
            if len(parts) == 3
            else ()
        )
        return PolicyGroup(k=k, min_trust_level=level, members=members)
    except (ValueError, CodecError) as exc:
        raise ConfigError(f"group {text!r}: {exc}") from None


def _record_json(record: AuthorityRecord) -> dict[str, Any]:
    return {
        "public_key": record.public_key.hex(),
        "name": record.name,
        "trust_level": record.trust_level,
        "active": record.active,
        "serial": record.serial,
    }


def _policy_json(policy: QuorumPolicy) -> dict[str, Any]:
    return {
        "category": policy.category,
        "serial": policy.serial,
        "min_authorities": policy.min_authorities,
        "min_trust_level": policy.min_trust_level,
        "threshold": f"{policy.threshold.numerator}/{policy.threshold.denominator}",
        "groups": [
            {
                "name": g.name,
                "k": g.k,
                "min_trust_level": g.min_trust_level,
                "members": [m.hex() for m in g.members],
            }
            for g in policy.groups
        ],
    }


def _policy_text(policy: QuorumPolicy) -> str:
    groups = "".join(
        f"\n  group {g.name or i + 1}: {g.k} of {len(g.members) or 'any'} at {g.min_trust_level}+"
        for i, g in enumerate(policy.groups)
    )
    return (
        f"policy {policy.category} (serial {policy.serial}): at least "
        f"{policy.min_authorities} and {policy.threshold} of the eligible authorities "
        f"at {policy.min_trust_level}+{groups}"
    )


def _run(args: argparse.Namespace, body: Callable[[AuthorityClient], Awaitable[int]]) -> int:
    async def main() -> int:
        config = nats_config(args)
        async with connection(config, "agentic-payments-authority") as nc:
            client = AuthorityClient(nc, config.prefix, timeout=args.timeout)
            try:
                return await body(client)
            except RemoteError as exc:
                if args.json:
                    print(
                        json.dumps(
                            {"ok": False, "code": exc.code, "message": str(exc)},
                            indent=2,
                            sort_keys=True,
                        )
                    )
                print(f"refused [{exc.code}]: {exc}", file=sys.stderr)
                return EXIT_NOT_VALID

    return asyncio.run(main())


async def _submit_change(
    args: argparse.Namespace, client: AuthorityClient, op: str, record: AuthorityRecord
) -> int:
    digest = record.digest()
    if args.digest_only:
        output(
            args,
            f"{ADMIN_CATEGORY} endorsements must sign digest {digest.hex()}",
            {"category": ADMIN_CATEGORY, "digest": digest.hex(), "record": _record_json(record)},
        )
        return 0
    stored = await client.change(op, record, _endorsements(args, ADMIN_CATEGORY, digest))
    output(
        args,
        f"{op}: {stored.name} {stored.public_key.hex()} {stored.trust_level} "
        f"{'active' if stored.active else 'inactive'} (serial {stored.serial})",
        {"ok": True, "op": op, "record": _record_json(stored)},
    )
    return 0


# ---------------------------------------------------------------- commands
def cmd_add(args: argparse.Namespace) -> int:
    record = AuthorityRecord(
        public_key=_public_key(args),
        name=args.name,
        trust_level=args.level,
        active=not args.inactive,
        serial=1,
    )

    async def body(client: AuthorityClient) -> int:
        return await _submit_change(args, client, "add", record)

    return _run(args, body)


def cmd_update(args: argparse.Namespace) -> int:
    key = _public_key(args)

    async def body(client: AuthorityClient) -> int:
        current = await client.record(key)
        if current is None:
            raise RemoteError(f"no authority {key.hex()}", code="AUTHORITY_UNKNOWN")
        changes: dict[str, Any] = {"serial": current.serial + 1}
        if args.op == "activate":
            changes["active"] = True
        elif args.op == "deactivate":
            changes["active"] = False
        else:
            changes["trust_level"] = args.level
        return await _submit_change(args, client, args.op, dataclasses.replace(current, **changes))

    return _run(args, body)


def cmd_set_policy(args: argparse.Namespace) -> int:
    category = _category(args.category)
    try:
        threshold = parse_fraction(args.threshold)
    except CodecError as exc:
        raise ConfigError(str(exc)) from None
    groups = tuple(_group(text) for text in args.group or ())

    async def body(client: AuthorityClient) -> int:
        try:
            serial = (await client.get_policy(category)).serial + 1
        except RemoteError as exc:
            if exc.code != "POLICY_MISSING":
                raise
            serial = 1
        try:
            policy = QuorumPolicy(
                category=category,
                min_authorities=args.min_authorities,
                min_trust_level=args.min_level,
                threshold=threshold,
                groups=groups,
                serial=serial,
            )
        except CodecError as exc:
            raise ConfigError(str(exc)) from None
        digest = policy.digest()
        if args.digest_only:
            output(
                args,
                f"{ADMIN_CATEGORY} endorsements must sign digest {digest.hex()}",
                {
                    "category": ADMIN_CATEGORY,
                    "digest": digest.hex(),
                    "policy": _policy_json(policy),
                },
            )
            return 0
        stored = await client.set_policy(policy, _endorsements(args, ADMIN_CATEGORY, digest))
        output(args, _policy_text(stored), {"ok": True, "policy": _policy_json(stored)})
        return 0

    return _run(args, body)


def cmd_get_policy(args: argparse.Namespace) -> int:
    category = _category(args.category)

    async def body(client: AuthorityClient) -> int:
        policy = await client.get_policy(category)
        output(args, _policy_text(policy), {"ok": True, "policy": _policy_json(policy)})
        return 0

    return _run(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    async def body(client: AuthorityClient) -> int:
        listing = await client.list()
        lines = [f"state revision {listing.revision}; {len(listing.authorities)} authorities"]
        lines += [
            f"  {r.name:<16} {r.trust_level:<9} "
            f"{'active' if r.active else 'inactive':<8} {r.public_key.hex()}"
            for r in listing.authorities
        ]
        lines += [_policy_text(p) for p in listing.policies]
        output(
            args,
            "\n".join(lines),
            {
                "revision": listing.revision,
                "authorities": [_record_json(r) for r in listing.authorities],
                "policies": [_policy_json(p) for p in listing.policies],
            },
        )
        return 0

    return _run(args, body)


def cmd_evaluate(args: argparse.Namespace) -> int:
    category = _category(args.category)
    digest = _digest(args)
    endorsements = tuple(_endorsement_arg(text) for text in args.endorsement or ())

    async def body(client: AuthorityClient) -> int:
        verdict = await client.evaluate(category, digest, endorsements)
        output(
            args,
            f"{'MET' if verdict.ok else verdict.code}: {verdict.reason} "
            f"(policy {verdict.policy_category or 'none'}, state revision "
            f"{verdict.revision})"
            + "".join(f"\n  ignored {k.hex()}: {r}" for k, r in verdict.ignored),
            {
                "ok": verdict.ok,
                "code": verdict.code,
                "reason": verdict.reason,
                "category": verdict.category,
                "policy_category": verdict.policy_category,
                "required": verdict.required,
                "counted": [k.hex() for k in verdict.counted],
                "ignored": [{"authority_key": k.hex(), "reason": r} for k, r in verdict.ignored],
                "revision": verdict.revision,
                "digest": digest.hex(),
            },
        )
        return 0 if verdict.ok else EXIT_NOT_VALID

    return _run(args, body)


def cmd_endorse(args: argparse.Namespace) -> int:
    identity = AgentIdentity.load(args.key)
    category = _category(args.category)
    digest = _digest(args)
    e = sign_endorsement(identity, category, digest)
    output(
        args,
        f"{e.authority_key.hex()}:{e.signature.hex()}",
        {
            "category": category,
            "digest": digest.hex(),
            "authority_key": e.authority_key.hex(),
            "signature": e.signature.hex(),
            "endorsement": f"{e.authority_key.hex()}:{e.signature.hex()}",
        },
    )
    return 0


# ---------------------------------------------------------------- parser
def _client_options(parser: argparse.ArgumentParser) -> None:
    client_options(parser, "the authority worker", timeout=5.0)


def _change_options(parser: argparse.ArgumentParser) -> None:
    _client_options(parser)
    parser.add_argument(
        "--endorsement",
        action="append",
        metavar="KEY:SIG",
        help="a policy-admin endorsement of the change's digest, from "
        "'authority endorse' (repeatable)",
    )
    parser.add_argument(
        "--sign-with",
        action="append",
        metavar="KEYFILE",
        help="endorse the change here with this authority key file (repeatable)",
    )
    parser.add_argument(
        "--digest-only",
        action="store_true",
        help="print the digest policy-admin authorities must endorse; change nothing",
    )


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("public_key", nargs="?", help="authority public key, hex")
    parser.add_argument("--key-file", help="take the public key from this key file instead")


def register(sub: Any, kinds: Any) -> None:
    worker = kinds.add_parser(
        "authority",
        help="authority registry and quorum policies",
        description="The authority coordinator: answers PREFIX.authority.<op> (queue group "
        "'authority'; run several) with authorities and per-category quorum "
        "policies kept in the KV bucket PREFIX_state.",
    )
    worker.add_argument("--id", default="authority1", help="worker id (default %(default)s)")
    worker_options(worker)
    worker.set_defaults(worker_factory=lambda args: AuthorityWorker(runtime_config(args, args.id)))

    top = sub.add_parser(
        "authority",
        help="manage authorities and quorum policies, evaluate endorsements",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = top.add_subparsers(dest="op", required=True, metavar="OP")

    add = ops.add_parser(
        "add",
        help="register an authority",
        description="Register an authority (public key, name, trust level). "
        "Open while no policy-admin policy exists (bootstrap); afterwards it "
        "needs policy-admin endorsements.",
    )
    _key_options(add)
    add.add_argument("--name", required=True, help="a human name for the authority")
    add.add_argument("--level", required=True, choices=LEVELS, help="trust level")
    add.add_argument("--inactive", action="store_true", help="register it inactive")
    _change_options(add)
    add.set_defaults(func=cmd_add)

    for op, text in (
        ("activate", "count the authority's endorsements again"),
        ("deactivate", "ignore the authority's endorsements from now on"),
        ("set-level", "change the authority's trust level"),
    ):
        parser = ops.add_parser(
            op,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. "
            "Needs policy-admin endorsements once that policy exists.",
        )
        _key_options(parser)
        if op == "set-level":
            parser.add_argument("--level", required=True, choices=LEVELS, help="new level")
        _change_options(parser)
        parser.set_defaults(func=cmd_update)

    policy = ops.add_parser(
        "set-policy",
        help="set a category's quorum policy",
        description="Set the quorum policy of CATEGORY: endorsements must come from at least "
        "--min-authorities distinct active authorities at --min-level or above, and from at "
        "least --threshold (an exact fraction n/d) of all such authorities; each --group "
        "K:LEVEL[:HEX,HEX,...] adds K slots that distinct signers at LEVEL+ (from the listed "
        "keys, if any) must fill. 'default' applies to categories without a policy; "
        "'policy-admin' governs every change. The first policy-admin policy can be set "
        "without endorsements (bootstrap); other categories need it to exist.",
        epilog="Example: authority set-policy payments --min-authorities 2 --min-level Medium "
        "--threshold 2/3 --group 1:High --sign-with admin.key",
    )
    policy.add_argument("category", help="category name (1-64 of A-Z a-z 0-9 _ -)")
    policy.add_argument(
        "--min-authorities",
        type=int,
        required=True,
        help="minimum number of distinct endorsing authorities",
    )
    policy.add_argument(
        "--min-level",
        default="Low",
        choices=LEVELS,
        help="endorsements below this trust level are ignored (default %(default)s)",
    )
    policy.add_argument(
        "--threshold",
        default="1/2",
        help="exact fraction n/d of the eligible authorities (default %(default)s)",
    )
    policy.add_argument(
        "--group",
        action="append",
        metavar="K:LEVEL[:HEX,...]",
        help="a nested k-of-n group (repeatable)",
    )
    _change_options(policy)
    policy.set_defaults(func=cmd_set_policy)

    get = ops.add_parser(
        "get-policy",
        help="show a category's own policy",
        description="Show CATEGORY's own policy (exit 1 with POLICY_MISSING "
        "if it has none; evaluation would then use 'default').",
    )
    get.add_argument("category")
    _client_options(get)
    get.set_defaults(func=cmd_get_policy)

    listing = ops.add_parser("list", help="list authorities and policies")
    _client_options(listing)
    listing.set_defaults(func=cmd_list)

    evaluate = ops.add_parser(
        "evaluate",
        help="check endorsements against a category's policy",
        description="Ask the authority worker whether the endorsements satisfy CATEGORY's "
        "policy (or the default policy) for a message. Exit 0 if met, 1 if not "
        "(POLICY_NOT_MET) or if no policy applies (POLICY_MISSING).",
    )
    evaluate.add_argument("category")
    evaluate.add_argument("--digest", help="SHA-256 of the endorsed message, hex")
    evaluate.add_argument("--message", help="the endorsed message text")
    evaluate.add_argument("--message-file", help="read the endorsed message from a file")
    evaluate.add_argument(
        "--endorsement",
        action="append",
        metavar="KEY:SIG",
        help="an endorsement from 'authority endorse' (repeatable)",
    )
    _client_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    endorse = ops.add_parser(
        "endorse",
        help="sign an endorsement with an authority key file (offline)",
        description="Sign (CATEGORY, SHA-256 of the message) with an authority key and print "
        "the endorsement as KEY:SIG for --endorsement. For a policy-admin change, use "
        "--category policy-admin --digest DIGEST from the change's --digest-only.",
    )
    endorse.add_argument("--key", required=True, help="authority key file (from keygen)")
    endorse.add_argument("--category", required=True, help="category endorsed")
    endorse.add_argument("--digest", help="SHA-256 of the endorsed message, hex")
    endorse.add_argument("--message", help="the endorsed message text")
    endorse.add_argument("--message-file", help="read the endorsed message from a file")
    json_option(endorse)
    endorse.set_defaults(func=cmd_endorse)
