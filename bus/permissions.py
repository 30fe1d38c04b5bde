"""Per-role NATS permissions, computed from the subject names in bus/subjects.py.

Pure: no I/O, no nats import. ``permissions(role, name, subjects)`` answers
what one NATS user may publish and subscribe to; ``render_auth_conf`` turns a
list of users into the ``accounts {}`` block of a nats-server configuration.
Because both are computed from ``Subjects``, the permissions cannot drift
from the subjects the code really uses (a test renders the checked-in
``deploy/nats/auth.conf`` and compares).

Each user has a role and a name. For workers the name is the worker id
(``--id``), which pins the subjects that carry an id: a verifier may write
only its own membership record and heartbeat; a tally may read only its own
vote subject. For every user the name also fixes a private reply inbox,
``_INBOX.<name>`` (clients set ``NATS_INBOX_PREFIX`` to it): a user may
subscribe to its own inbox only, so a client cannot read another client's
replies. Replies to requests a user *received* (a tally answering a client,
any worker answering ``$SRV.PING``) go through ``allow_responses``, which lets
a user publish once to the reply subject of each request delivered to it and
nowhere else.

The rules, in one line each:

  client     publish verification requests; read the verifier pool (to check
             certificates); nothing else — no ballots, no votes, no decisions
  verifier   receive ballots, publish votes, register *itself* in the pool
  tally      receive requests (queue group), publish ballots and decisions,
             read its own vote subject, own the decisions bucket and audit stream
  keys / trust / authority   serve ``{prefix}.<service>.>`` and write their own
             key prefixes of the state bucket (provisional: their subjects
             are being built in parallel)
  anomaly    read metrics, heartbeats, votes, decisions; publish alerts
  recovery   read heartbeats, discover workers, publish alerts
  admin      everything (operators, the ``members``/``status`` commands, ``up``)

JetStream is reached through ``$JS.API.…`` request subjects; a role gets only
the API calls its code makes, on the streams it uses (``KV_<bucket>`` for a
bucket): stream info, create (so a worker can create what it owns on first
start), direct and message gets — and no consumers: readers follow a stream
with direct gets, woken by a subscription on its subjects (bus/tail.py).

Why two accounts. A JetStream API request answers on the requester's reply
subject, unchecked, and a stream stores whatever is published on its subjects:
in one account, any user with a ``$JS.API`` grant could make the server store
its answer as a bucket record (reply ``$KV.<bucket>.<key>``: a delete marker
evicts a pool member). So the streams live in account DATA, which has no users
and exports ``$JS.API.>`` (``response_type: stream``, for batched direct gets)
and ``$KV.>``; every user lives in APP, which imports both. A request through an
import carries a mapped ``_R_`` reply, so the answer is published in DATA only
on that subject and delivered in APP, where no stream listens. Both imports are
wildcards on purpose: a literal ``$KV.<bucket>.<key>`` import re-forwards an
answer sent there into DATA and stores it. Per-user grants still apply to the
imported subjects. ``bus/natsjwt.py`` builds the same split for operator mode.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bus.state import AREAS
from bus.subjects import Subjects, check_token, service_name

ROLES = (
    "admin",
    "client",
    "verifier",
    "tally",
    "keys",
    "trust",
    "authority",
    "anomaly",
    "recovery",
)
#: Service roles whose subjects are not in bus/subjects.py yet (request/reply under
#: ``{prefix}.<role>.>``); the integrator adjusts these when they land.
SERVICE_ROLES = ("keys", "trust", "authority")
AUTH_METHODS = ("nkey", "password", "env-password")
INBOX_ROOT = "_INBOX"


def inbox_prefix(name: str) -> str:
    """The private reply-inbox prefix of user ``name`` (set it as NATS_INBOX_PREFIX)."""
    return f"{INBOX_ROOT}.{check_token(name, 'user name')}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def may_publish(self, subject: str) -> bool:
        return any(pattern_covers(p, subject) for p in self.publish)

    def may_subscribe(self, subject: str) -> bool:
        """Whether ``subject`` (possibly a wildcard) is inside an allowed pattern."""
        return any(pattern_covers(p, subject) for p in self.subscribe)


def pattern_covers(pattern: str, subject: str) -> bool:
    """Whether every subject matched by ``subject`` (may hold wildcards) matches ``pattern``."""
    ptoks, stoks = pattern.split("."), subject.split(".")
    for i, ptok in enumerate(ptoks):
        if ptok == ">":
            return len(stoks) > i
        if i >= len(stoks):
            return False
        if ptok == "*":
            if stoks[i] == ">":
                return False
            continue
        if ptok != stoks[i]:
            return False
    return len(ptoks) == len(stoks)


# ------------------------------------------------------------------ building blocks
def _js(*calls: str) -> list[str]:
    return [f"$JS.API.{c}" for c in calls]


def stream_owner(stream: str) -> list[str]:
    """Look up and create ``stream`` (created on first start by the worker that owns it)."""
    return _js(f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}")


def stream_reader(stream: str) -> list[str]:
    """Read ``stream`` without consumers (bus/tail.py): info, message and direct gets.

    No role but admin may create consumers: nats-server does not check a push
    consumer's deliver subject against the creator's publish permissions, and the
    delivered messages keep their headers, so a consumer could copy any stored
    message (a delete marker, or the creator's own bytes if it writes the stream)
    onto any subject of the account (a ballot, a member record, a key status).
    Readers are woken by a subscription on the stream's subjects instead
    (:func:`stream_wakeup`)."""
    return _js(
        f"STREAM.INFO.{stream}",
        f"STREAM.MSG.GET.{stream}",
        f"DIRECT.GET.{stream}",
        f"DIRECT.GET.{stream}.>",
    )


def kv_reader(bucket: str) -> list[str]:
    return stream_reader(f"KV_{bucket}")


#: Kept for readability at the call sites: a writer of a bucket reads it the same way.
kv_lookup = kv_reader


def kv_wakeup(bucket: str) -> list[str]:
    """Subscribe grant for a reader of ``bucket``: its stream's own subjects, only as a
    wake-up (bus/tail.Wakeup); the content is read from the stream."""
    return [f"$KV.{bucket}.>"]


def kv_owner(bucket: str) -> list[str]:
    return stream_owner(f"KV_{bucket}")


def kv_writer(bucket: str, keys: Iterable[str] = (">",)) -> list[str]:
    """Write keys of ``bucket`` (``keys`` are patterns under ``$KV.<bucket>.``)."""
    return [f"$KV.{bucket}.{k}" for k in keys]


def micro_service(kind: str, subjects: Subjects, worker_id: str) -> list[str]:
    """What the runtime subscribes to for ``$SRV.PING/INFO/STATS`` and its status endpoint."""
    name = service_name(kind)
    return [
        "$SRV.PING",
        "$SRV.INFO",
        "$SRV.STATS",
        f"$SRV.*.{name}",
        f"$SRV.*.{name}.*",
        subjects.status(kind, worker_id),
    ]


def telemetry(kind: str, subjects: Subjects, worker_id: str) -> list[str]:
    """Own heartbeats and metrics, and a request to its own status endpoint (the
    runtime's start-up barrier proving the server has its subscriptions)."""
    return [
        subjects.heartbeat(kind, worker_id),
        subjects.metrics(kind, worker_id),
        subjects.status(kind, worker_id),
    ]


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------------ the roles
def permissions(role: str, name: str, subjects: Subjects) -> Permissions:
    """Publish/subscribe allow lists for user ``name`` acting as ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    check_token(name, "user name")
    p = subjects.prefix
    inbox = f"{inbox_prefix(name)}.>"
    members = subjects.members_bucket
    state = subjects.state_bucket
    pub: list[str] = []
    sub: list[str] = [inbox]
    responses = True
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",), allow_responses=False)
    if role == "client":
        pub += [subjects.request, *kv_reader(members)]
        sub += kv_wakeup(members)
        responses = False
    elif role == "verifier":
        pub += [
            subjects.votes_all,
            *telemetry(role, subjects, name),
            *kv_owner(members),
            *kv_lookup(members),
            *kv_writer(members, [name]),
            *kv_owner(state),
            *kv_reader(state),
        ]
        sub += [
            subjects.ballot,
            *kv_wakeup(members),
            *kv_wakeup(state),
            *micro_service(role, subjects, name),
        ]
    elif role == "tally":
        decisions = subjects.decisions_bucket
        pub += [
            subjects.ballot,
            subjects.decisions_all,
            subjects.equivocation,
            *telemetry(role, subjects, name),
            *kv_owner(members),
            *kv_reader(members),
            # its own tally record only (bus/membership.register_tally)
            *kv_writer(members, [f"tally.{name}"]),
            *kv_owner(state),
            *kv_reader(state),
            *kv_owner(decisions),
            *kv_reader(decisions),
            *kv_writer(decisions),
            *stream_owner(subjects.audit_stream),
        ]
        sub += [
            subjects.request,
            subjects.votes(name),
            *kv_wakeup(members),
            *kv_wakeup(state),
            *micro_service(role, subjects, name),
        ]
    elif role in SERVICE_ROLES:
        areas = [f"{area}.>" for area, owner in AREAS.items() if owner == role]
        pub += [
            f"{p}.{role}.>",
            *telemetry(role, subjects, name),
            *kv_owner(state),
            *kv_reader(state),
            *kv_writer(state, areas),
            *kv_owner(f"{p}_{role}"),
            *kv_reader(f"{p}_{role}"),
            *kv_writer(f"{p}_{role}"),
            # the key manager purges old revisions of a revoked or destroyed key
            *_js(f"STREAM.PURGE.KV_{p}_{role}"),
        ]
        sub += [f"{p}.{role}.>", *kv_wakeup(state), *micro_service(role, subjects, name)]
    elif role == "anomaly":
        telemetry_streams = [
            *stream_owner(subjects.heartbeat_stream),
            *stream_owner(subjects.metrics_stream),
        ]
        pub += [
            subjects.alerts_all,
            *telemetry(role, subjects, name),
            *telemetry_streams,
            *stream_owner(subjects.alerts_stream),
            *stream_reader(subjects.alerts_stream),
            *stream_reader(subjects.metrics_stream),
            *stream_reader(subjects.audit_stream),
            *kv_reader(members),
            # quarantine records only: it can neither add members nor edit one
            *kv_writer(members, ["quarantined.>"]),
        ]
        sub += [
            subjects.metrics_all,
            subjects.heartbeat_all,
            subjects.votes_all,
            subjects.decisions_all,
            subjects.equivocation,
            *kv_wakeup(members),
            *micro_service(role, subjects, name),
        ]
    elif role == "recovery":
        recovery = subjects.recovery_bucket
        pub += [
            subjects.alerts_all,
            *telemetry(role, subjects, name),
            "$SRV.PING.>",
            "$SRV.PING",
            subjects.supervisor_restart("*"),
            *stream_owner(subjects.alerts_stream),
            *stream_owner(subjects.heartbeat_stream),
            *stream_owner(subjects.metrics_stream),
            *stream_reader(subjects.heartbeat_stream),
            *kv_owner(recovery),
            *kv_reader(recovery),
            *kv_writer(recovery),
        ]
        sub += [
            subjects.heartbeat_all,
            subjects.recovery_history,
            *micro_service(role, subjects, name),
        ]
    return Permissions(publish=_dedupe(pub), subscribe=_dedupe(sub), allow_responses=responses)


# ------------------------------------------------------------------ users and rendering
_ROLE_NAME = re.compile(r"^([a-z]+):([A-Za-z0-9_-]{1,64})$")


@dataclass(frozen=True)
class User:
    role: str
    name: str
    #: the public nkey (``U…``) for nkey auth; unused for passwords
    nkey: str = ""
    #: a literal password (tests) — for ``env-password`` it stays empty and the
    #: config reads ``$AP_NATS_PASSWORD_<NAME>`` from the server's environment
    password: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def password_env(self) -> str:
        return password_env(self.name)


def password_env(name: str) -> str:
    return "AP_NATS_PASSWORD_" + name.upper().replace("-", "_")


def parse_user(spec: str) -> tuple[str, str]:
    """``ROLE:NAME`` → (role, name); raises ValueError with a readable message."""
    match = _ROLE_NAME.match(spec)
    if not match or match.group(1) not in ROLES:
        raise ValueError(
            f"user {spec!r} must be ROLE:NAME with ROLE one of {', '.join(ROLES)} "
            "and NAME 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return match.group(1), match.group(2)


#: The users of the checked-in deploy/nats/auth.conf: one per worker of a small
#: deployment (four verifiers tolerate one Byzantine) and one demo client.
DEFAULT_USERS = (
    "admin:admin",
    "tally:t1",
    "verifier:v1",
    "verifier:v2",
    "verifier:v3",
    "verifier:v4",
    "client:demo",
    "keys:keys1",
    "trust:trust1",
    "authority:authority1",
    "anomaly:anomaly1",
    "recovery:recovery1",
)


def _quote(text: str) -> str:
    if '"' in text or "\\" in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r}")
    return f'"{text}"'


def _list(items: Sequence[str], indent: str) -> str:
    inner = "".join(f"{indent}  {_quote(i)}\n" for i in items)
    return f"[\n{inner}{indent}]"


def render_user(user: User, subjects: Subjects, auth: str) -> str:
    perms = permissions(user.role, user.name, subjects)
    ind = "      "
    lines = [
        f"    # {user.role} {user.name}"
        + (f" (inbox prefix {inbox_prefix(user.name)})" if user.role != "admin" else ""),
        "    {",
    ]
    if auth == "nkey":
        if not user.nkey.startswith("U"):
            raise ValueError(f"user {user.name} needs a public user nkey (U...)")
        lines.append(f"      nkey: {_quote(user.nkey)}")
    elif auth == "password":
        lines.append(f"      user: {_quote(user.name)}")
        lines.append(f"      password: {_quote(user.password)}")
    elif auth == "env-password":
        lines.append(f"      user: {_quote(user.name)}")
        lines.append(f"      password: ${user.password_env}")
    else:
        raise ValueError(f"unknown auth method {auth!r} (one of {', '.join(AUTH_METHODS)})")
    lines.append("      permissions: {")
    lines.append(f"        publish: {{ allow: {_list(perms.publish, ind + '  ')} }}")
    lines.append(f"        subscribe: {{ allow: {_list(perms.subscribe, ind + '  ')} }}")
    if perms.allow_responses:
        lines.append("        allow_responses: true")
    lines.append("      }")
    lines.append("    }")
    return "\n".join(lines)


#: The account that owns every stream and bucket (and nothing else: no users).
DATA_ACCOUNT = "DATA"
#: The account every user lives in; it reaches JetStream only through imports.
APP_ACCOUNT = "APP"
#: What DATA exports and APP imports, as (subject, response_type or "").
#: Both are wildcards on purpose: a literal ``$KV.<bucket>.<key>`` import re-stores
#: an answer sent to that subject. ``stream`` lets a batched direct get answer
#: with several messages (the default, singleton, delivers only the first).
ACCOUNT_SERVICES = (("$JS.API.>", "stream"), ("$KV.>", ""))


def _accounts_block(users_body: str) -> str:
    """The two-account ``accounts {}`` block (config mode) around ``users_body``."""
    exports = "\n".join(
        f"      {{ service: {_quote(subject)}"
        + (f", response_type: {rtype}" if rtype else "")
        + " }"
        for subject, rtype in ACCOUNT_SERVICES
    )
    imports = "\n".join(
        f"      {{ service: {{ account: {DATA_ACCOUNT}, subject: {_quote(subject)} }} }}"
        for subject, _ in ACCOUNT_SERVICES
    )
    return (
        "accounts {\n"
        f"  {DATA_ACCOUNT}: {{\n"
        "    jetstream: enabled\n"
        "    users: []\n"
        f"    exports: [\n{exports}\n    ]\n"
        "  }\n"
        f"  {APP_ACCOUNT}: {{\n"
        f"    users = [\n{users_body}\n    ]\n"
        f"    imports: [\n{imports}\n    ]\n"
        "  }\n"
        "}\n"
    )


def render_auth_conf(users: Sequence[User], subjects: Subjects, auth: str) -> str:
    """The ``accounts`` block for ``users`` (include it from a server config).

    Every user goes into the APP account with the grants of ``render_user``;
    streams and buckets live in the DATA account, which has no users and exports
    ``$JS.API.>`` and ``$KV.>`` to APP. The split is the fix for JetStream API
    reply injection: an API answer is published in the account of the service
    (DATA) only through the response mapping back to the requester, so a reply
    subject of ``$KV.<bucket>.<key>`` can no longer make the server store its
    answer in that bucket (see docs/security.md). The server config keeps its
    top-level ``jetstream {}`` block; only DATA enables it.
    """
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise ValueError("user names must be unique")
    header = (
        "# Generated by `agentic-payments nats-config` from bus/permissions.py — do not edit.\n"
        f"# prefix: {subjects.prefix}; auth: {auth}; regenerate after changing subjects.\n"
        f"# Users live in {APP_ACCOUNT}; streams and buckets in {DATA_ACCOUNT} (no users),\n"
        "# reached through service imports, so an API answer cannot be stored in a stream.\n"
    )
    if auth == "env-password":
        header += (
            "# Passwords come from the server's environment: "
            "AP_NATS_PASSWORD_<NAME> (upper case, - as _).\n"
        )
    body = "\n".join(render_user(u, subjects, auth) for u in users)
    return header + _accounts_block(textwrap.indent(body, "  "))
