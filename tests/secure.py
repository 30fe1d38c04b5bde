"""Helpers for tests against a nats-server running the per-role configuration."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import NatsConfig
from bus.natsserver import NatsServer, start_nats_server
from bus.permissions import User, render_auth_conf
from bus.subjects import Subjects
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
