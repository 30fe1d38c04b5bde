"""``agentic-payments nats-config``: render the per-role nats-server authorization.

The permissions come from bus/permissions.py (computed from bus/subjects.py);
this module only generates credentials and writes files:

  DIR/auth.conf      the ``authorization { users = [...] }`` block; include it
                     from the server configuration (deploy/nats/server.conf)
  DIR/NAME.nk        the user's nkey seed (0600, with --auth nkey)
  DIR/NAME.env       the environment a process of that user needs (0600):
                     NATS_NKEY_SEED or NATS_USER/NATS_PASSWORD, NATS_INBOX_PREFIX

``--auth env-password`` writes no secrets: passwords are read by nats-server
from its environment (``AP_NATS_PASSWORD_<NAME>``); that is how the checked-in
deploy/nats/auth.conf is rendered, and ``--check FILE`` exits 1 when FILE is
not what the current code would render (for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]

from bus.permissions import (
    AUTH_METHODS,
    DEFAULT_USERS,
    ROLES,
    User,
    inbox_prefix,
    parse_user,
    permissions,
    render_auth_conf,
)
from bus.subjects import DEFAULT_PREFIX, Subjects
from schemas.errors import ConfigError

EXIT_DIFFERS = 1


def new_user_nkey() -> tuple[str, str]:
    """A fresh user nkey pair: (seed ``SU…``, public key ``U…``)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode(), public.decode()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def build_users(specs: list[str], auth: str, out: Path | None) -> list[User]:
    """Users for ``specs`` with fresh credentials (written under ``out``)."""
    users: list[User] = []
    for spec in specs:
        try:
            role, name = parse_user(spec)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        env: dict[str, str] = {"NATS_INBOX_PREFIX": inbox_prefix(name)}
        if auth == "nkey":
            seed, public = new_user_nkey()
            assert out is not None
            seed_file = out / f"{name}.nk"
            _write_secret(seed_file, seed + "\n")
            env["NATS_NKEY_SEED"] = str(seed_file.resolve())
            users.append(User(role, name, nkey=public, extra=env))
        elif auth == "password":
            password = secrets.token_urlsafe(24)
            env.update(NATS_USER=name, NATS_PASSWORD=password)
            users.append(User(role, name, password=password, extra=env))
        else:
            users.append(User(role, name, extra=env))
    return users


def write_env_files(users: list[User], out: Path, subjects: Subjects) -> None:
    for user in users:
        lines = [f"AP_PREFIX={subjects.prefix}",
                 *(f"{k}={v}" for k, v in sorted(user.extra.items()))]
        _write_secret(out / f"{user.name}.env", "\n".join(lines) + "\n")


def cmd_nats_config(args: argparse.Namespace) -> int:
    prefix = args.prefix or os.environ.get("AP_PREFIX") or DEFAULT_PREFIX
    subjects = Subjects(prefix)
    specs = args.user or list(DEFAULT_USERS)
    auth: str = args.auth
    out = Path(args.out) if args.out else None
    if auth in ("nkey", "password") and out is None:
        raise ConfigError(f"--auth {auth} generates secrets: give --out DIR to write them")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    users = build_users(specs, auth, out)
    try:
        text = render_auth_conf(users, subjects, auth)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.check:
        current = Path(args.check).read_text() if Path(args.check).exists() else ""
        if current != text:
            print(f"{args.check} differs from the rendering of the current code; "
                  f"regenerate it with: agentic-payments nats-config --auth {auth} "
                  f"--prefix {prefix} > {args.check}", file=sys.stderr)
            return EXIT_DIFFERS
        print(f"{args.check} is up to date")
        return 0
    conf_path: Path | None = None
    if out is not None:
        conf_path = out / "auth.conf"
        _write_secret(conf_path, text)
        write_env_files(users, out, subjects)
    if args.json:
        data: dict[str, Any] = {
            "prefix": prefix, "auth": auth,
            "auth_conf": str(conf_path) if conf_path else None,
            "users": [{
                "role": u.role, "name": u.name, "inbox_prefix": inbox_prefix(u.name),
                "nkey": u.nkey or None,
                "env_file": str(out / f"{u.name}.env") if out else None,
                "permissions": {
                    "publish": list(perms.publish), "subscribe": list(perms.subscribe),
                    "allow_responses": perms.allow_responses},
            } for u in users for perms in [permissions(u.role, u.name, subjects)]],
        }
        print(json.dumps(data, indent=2, sort_keys=True))
    elif conf_path is None:
        print(text, end="")
    else:
        print(f"wrote {conf_path} and {len(users)} user env files to {out}; include "
              f"auth.conf from your nats-server config and give each process its NAME.env")
    return 0


def register(sub: Any, kinds: Any) -> None:
    parser = sub.add_parser(
        "nats-config", help="render the per-role nats-server users and permissions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render the authorization block of a nats-server config with one user "
        "per worker/client and per-role permissions computed from the subject names in "
        "the code: verifiers may only answer ballots, clients may only publish requests "
        "and read their own replies, only tallies publish decisions.\n\n"
        f"Roles: {', '.join(ROLES)}. A worker's user NAME must equal its --id (it pins "
        "the member record and heartbeat it may write); every user reads replies only "
        "under its own inbox prefix _INBOX.NAME (NATS_INBOX_PREFIX).",
        epilog="Examples:\n"
        "  agentic-payments nats-config --auth nkey --out secrets/ \\\n"
        "      --user admin:admin --user tally:t1 --user verifier:v1 --user client:shop\n"
        "  agentic-payments nats-config --check deploy/nats/auth.conf\n"
        "Exit codes: 0 ok, 1 --check found a difference, 78 bad arguments.")
    parser.add_argument("--user", action="append", metavar="ROLE:NAME",
                        help="a user (repeat); default: "
                             + " ".join(DEFAULT_USERS))
    parser.add_argument("--auth", choices=AUTH_METHODS, default="env-password",
                        help="nkey: fresh nkey per user (seed files in --out; preferred); "
                             "password: random passwords in NAME.env; env-password: the "
                             "server reads AP_NATS_PASSWORD_<NAME> from its environment "
                             "(no secrets written; the checked-in config). Default env-password")
    parser.add_argument("--prefix", default=None,
                        help="subject prefix (env AP_PREFIX, default ap)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write auth.conf and per-user NAME.env (and NAME.nk) here; "
                             "without it auth.conf is printed")
    parser.add_argument("--check", default=None, metavar="FILE",
                        help="compare FILE with the rendering instead of writing; exit 1 "
                             "if it differs (env-password only makes sense here)")
    parser.add_argument("--json", action="store_true",
                        help="print users, inbox prefixes and permissions as JSON")
    parser.set_defaults(func=cmd_nats_config)
