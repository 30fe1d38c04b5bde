"""Helpers for tests against a nats-server running the per-role configuration."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import membership
from bus.config import NatsConfig
from bus.key_client import KeyClient
from bus.natsserver import NatsServer, start_nats_server
from bus.permissions import User, render_auth_conf
from bus.subjects import Subjects
from schemas.codec import decode, encode
from schemas.identity import AgentIdentity
from schemas.keys import KeySignature
from schemas.messages import MetricsSnapshot, VerificationRequest
from tests.helpers import ROOT, Cluster
from workers.cli.nats_config import build_jwt_users, build_users

USERS = [
    "admin:admin",
    "tally:t1",
    "verifier:v1",
    "verifier:v2",
    "verifier:v3",
    "verifier:v4",
    "client:alice",
    "client:bob",
]

#: tests/security: one user per role the attacks need (ROLE:NAME); names are worker ids.
SECURITY_USERS = [
    "admin:admin",
    "tally:t1",
    "tally:t2",
    "verifier:v1",
    "verifier:v2",
    "verifier:v3",
    "verifier:v4",
    "verifier:v5",
    "verifier:v6",
    "verifier:v7",
    "client:alice",
    "client:bob",
    "keys:keys1",
    "trust:trust1",
    "authority:authority1",
    "anomaly:anomaly1",
    "recovery:recovery1",
]


@dataclass
class SecureServer:
    server: NatsServer
    prefix: str
    users: dict[str, User]
    conf: Path

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, name: str) -> dict[str, str]:
        return dict(self.users[name].extra)

    def config(self, name: str, *, inbox_prefix: str | None = "own") -> NatsConfig:
        extra = self.users[name].extra
        return NatsConfig(
            url=self.url,
            prefix=self.prefix,
            nkey_seed=extra.get("NATS_NKEY_SEED"),
            creds=extra.get("NATS_CREDS"),
            inbox_prefix=extra["NATS_INBOX_PREFIX"] if inbox_prefix == "own" else inbox_prefix,
        )


def start_secure_server(
    tmp: Path, prefix: str, specs: list[str] | None = None, extra_conf: str = "", auth: str = "nkey"
) -> SecureServer:
    """nats-server with JetStream and users for ``specs`` (role:name): nkey users in
    the server config, or (``auth="jwt"``) operator mode with a .creds per user."""
    tmp.mkdir(parents=True, exist_ok=True)
    if auth == "jwt":
        users, text = build_jwt_users(specs or USERS, Subjects(prefix), tmp)
    else:
        users = build_users(specs or USERS, auth, tmp)
        text = render_auth_conf(users, Subjects(prefix), auth)
    (tmp / "auth.conf").write_text(text)
    conf = tmp / "server.conf"
    conf.write_text(f"{extra_conf}\ninclude ./auth.conf\n")
    server = start_nats_server(tmp / "js", extra_args=["-c", str(conf)])
    return SecureServer(server, prefix, {u.name: u for u in users}, conf)


@dataclass
class SecureCluster(Cluster):
    """Worker processes that each connect with their own user's credentials."""

    secure: SecureServer | None = None
    user_env: dict[str, dict[str, str]] = field(default_factory=dict)
    wait_s: float = 30.0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.secure is not None
        worker_id = name.split("-", 1)[1]
        env = {**self.env(), **self.secure.env(worker_id)}
        log = (self.data_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        self.processes[name] = proc
        return proc

    def admin(self) -> NatsConfig:
        assert self.secure is not None
        return self.secure.config("admin")

    def control(self) -> NatsConfig:
        return self.admin()


# --- shared by tests/security/ and the e2e anomaly tests -------------------------


async def until(
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    cluster: Cluster | None = None,
    timeout: float = 30.0,
    *,
    show_log: str | None = None,
) -> None:
    """Poll ``check`` (a coroutine function or a plain one) until it returns True.
    An exception from ``check`` means "not up yet" (a worker that has not
    subscribed); a worker process that exits fails at once, with its log. On
    timeout the last answer or exception is in the message (and the log of the
    process ``show_log`` names)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            answer = check()
            if inspect.isawaitable(answer):
                answer = await answer
            if answer:
                return
            last = answer
        except Exception as exc:  # not up yet
            last = exc
        if cluster is not None:
            for name, proc in cluster.processes.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited {proc.returncode}:\n{cluster.log(name)}")
        if time.monotonic() > deadline:
            shown = f"\n{cluster.log(show_log)}" if cluster and show_log else ""
            raise AssertionError(f"timed out waiting for {what}: last {last!r}{shown}")
        await asyncio.sleep(0.2)


async def worker_counters(
    nc: Client, prefix: str, kind: str, worker_id: str, timeout: float = 2.0
) -> dict[str, int]:
    """A worker's counters from its status endpoint (``{p}.status.<kind>.<id>``)."""
    reply = await nc.request(Subjects(prefix).status(kind, worker_id), b"", timeout=timeout)
    return MetricsSnapshot.decode(reply.data).counters


async def worker_answers(nc: Client, prefix: str, kind: str, worker_id: str) -> bool:
    """True once the worker's status endpoint answers (an ``until`` check: up yet?)."""
    await worker_counters(nc, prefix, kind, worker_id, timeout=1.0)
    return True


def start_keys(cluster: Cluster, worker_id: str = "keys1") -> None:
    """The key manager as a process (it writes key statuses into the verdict state)."""
    cluster._spawn(f"keys-{worker_id}", ["-m", "workers.cli", "worker", "keys", "--id", worker_id])


async def admitted_tally(
    nc: Client, admin: Client, subjects: Subjects, tally_id: str
) -> tuple[Client, AgentIdentity, int]:
    """A Byzantine tally: ``nc`` (connected as user ``tally_id``) registers its own
    tally key (``tally.<id>``); returns the connection, the key and the pool epoch."""
    me = AgentIdentity.generate()
    await membership.register_tally(nc, subjects, tally_id, me)
    pool = await membership.read_pool(admin, subjects)
    assert me.public_key in pool.tally_keys
    return nc, me, pool.epoch


async def managed_key(
    admin: Client, prefix: str, name: str, message: bytes
) -> tuple[KeyClient, KeySignature]:
    """A fresh ``agent_identity`` key in the key manager (``start_keys``) and its
    signature over ``message``; the client revokes it later."""
    keys = KeyClient(admin, prefix, timeout=30)
    await keys.create(name, "agent_identity")
    return keys, await keys.sign(name, message)


def payment(signed: KeySignature, message: bytes, request_id: str) -> bytes:
    """A VerificationRequest's bytes for ``message`` as the key manager signed it."""
    return VerificationRequest(
        request_id=request_id,
        message=message,
        signature=signed.signature,
        public_key=signed.public_key,
    ).encode()


def start_anomaly(cluster: Cluster, worker_id: str, *extra: str) -> None:
    """The anomaly worker as a process (its id is its user name under a SecureCluster)."""
    cluster._spawn(
        f"anomaly-{worker_id}",
        ["-m", "workers.cli", "worker", "anomaly", "--id", worker_id, "--heartbeat-s", "1", *extra],
    )


def signed_ballot(
    tally: AgentIdentity,
    network: str,
    *,
    ballot_id: str,
    epoch: int,
    requests: list[bytes],
    tally_id: str = "t1",
    issued_ms: int | None = None,
    deadline_ms: int | None = None,
    state_rev: int = 0,
    sig: bytes | None = None,
) -> bytes:
    """A ballot as a (Byzantine) tally publishes it, signed with the contract's
    ballot signing bytes (built here, not by schemas.signing, so an attack test runs
    unchanged against code from before signed ballots existed); ``sig`` replaces
    the signature (a forger's)."""
    now = time.time_ns() // 1_000_000
    issued = now if issued_ms is None else issued_ms
    deadline = now + 20_000 if deadline_ms is None else deadline_ms
    body = [
        1, "ballot", 1, network, ballot_id, epoch, tally_id, tally.public_key,
        deadline, state_rev, issued, [hashlib.sha256(r).digest() for r in requests],
    ]  # fmt: skip
    return encode(
        {
            "type": "ballot",
            "v": 1,
            "ballot_id": ballot_id,
            "epoch": epoch,
            "tally_id": tally_id,
            "deadline_ms": deadline,
            "requests": requests,
            "state_rev": state_rev,
            "issued_ms": issued,
            "tally_key": tally.public_key,
            "sig": tally.sign(b"agentic-payments/ballot/v1\x00" + encode(body))
            if sig is None
            else sig,
        }
    )


@dataclass
class VoteTap:
    """Every vote published on the ``subjects`` it is opened on, decoded
    leniently (any map with ``type: vote``), with the subject it came on and its
    exact bytes; what an attack test asserts over."""

    votes: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)

    @classmethod
    async def open(cls, nc: Client, *subjects: str) -> VoteTap:
        tap = cls()

        async def on_vote(msg: Msg) -> None:
            try:
                obj = decode(msg.data, MetricsSnapshot.LIMITS)
            except Exception:
                return
            if isinstance(obj, dict) and obj.get("type") == "vote":
                tap.votes.append((msg.subject, obj, msg.data))

        for subject in subjects:
            await nc.subscribe(subject, cb=on_vote)
        await nc.flush()
        return tap

    def on(self, ballot_id: str) -> list[tuple[str, dict[str, Any], bytes]]:
        """Votes on ``ballot_id``, in arrival order."""
        return [v for v in self.votes if v[1].get("ballot_id") == ballot_id]
