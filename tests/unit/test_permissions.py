"""bus/permissions.py: who may publish and subscribe to what, table-driven.

The same rules run against a real nats-server in
tests/integration/test_security.py; here the tables pin every rule down
without a server, and the checked-in deploy/nats/auth.conf must equal the
rendering of the current code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bus.natsserver import find_nats_server
from bus.permissions import (
    DEFAULT_USERS,
    ROLES,
    User,
    inbox_prefix,
    parse_user,
    pattern_covers,
    permissions,
    render_auth_conf,
)
from bus.subjects import Subjects
from workers.cli.main import main as cli_main
from workers.cli.nats_config import build_users

ROOT = Path(__file__).resolve().parents[2]
S = Subjects("ap")


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("ap.decision.>", "ap.decision.VALID", True),
        ("ap.decision.>", "ap.decision", False),
        ("ap.vote.>", "ap.vote.t1", True),
        ("ap.*.x", "ap.y.x", True),
        ("ap.*.x", "ap.y.z", False),
        ("ap.*", "ap.>", False),
        (">", "anything.at.all", True),
        ("_INBOX.alice.>", "_INBOX.bob.x", False),
        ("_INBOX.alice.>", "_INBOX.alice.abc.1", True),
        ("_INBOX.alice.>", "_INBOX.>", False),
        ("ap.ballot", "ap.ballot", True),
        ("ap.ballot", "ap.ballot.x", False),
    ],
)
def test_pattern_covers(pattern: str, subject: str, expected: bool) -> None:
    assert pattern_covers(pattern, subject) is expected


# (role, name, subject, may publish)
PUBLISH = [
    ("verifier", "v1", S.votes("t1"), True),
    ("verifier", "v1", S.decision("VALID"), False),
    ("verifier", "v1", S.ballot, False),
    ("verifier", "v1", S.request, False),
    ("verifier", "v1", S.heartbeat("verifier", "v1"), True),
    ("verifier", "v1", S.heartbeat("verifier", "v2"), False),
    ("verifier", "v1", S.heartbeat("tally", "v1"), False),
    ("verifier", "v1", f"$KV.{S.members_bucket}.v1", True),
    ("verifier", "v1", f"$KV.{S.members_bucket}.v2", False),
    ("verifier", "v1", f"$KV.{S.decisions_bucket}.x", False),
    ("verifier", "v1", S.alert("critical"), False),
    ("client", "alice", S.request, True),
    ("client", "alice", S.votes("t1"), False),
    ("client", "alice", S.ballot, False),
    ("client", "alice", S.decision("VALID"), False),
    ("client", "alice", f"$KV.{S.members_bucket}.v9", False),
    ("client", "alice", f"$JS.API.STREAM.INFO.KV_{S.members_bucket}", True),
    ("client", "alice", f"$JS.API.STREAM.CREATE.KV_{S.members_bucket}", False),
    ("client", "alice", f"$JS.API.STREAM.DELETE.KV_{S.members_bucket}", False),
    ("client", "alice", "$JS.API.STREAM.INFO.KV_ap_decisions", False),
    ("client", "alice", "_INBOX.bob.x", False),
    ("tally", "t1", S.decision("VALID"), True),
    ("tally", "t1", S.ballot, True),
    ("tally", "t1", S.votes("t1"), False),
    ("tally", "t1", f"$KV.{S.decisions_bucket}.abc", True),
    ("tally", "t1", f"$KV.{S.members_bucket}.v1", False),
    ("tally", "t1", f"$JS.API.STREAM.CREATE.{S.audit_stream}", True),
    ("tally", "t1", f"$JS.API.STREAM.PURGE.{S.audit_stream}", False),
    ("tally", "t1", f"$JS.API.STREAM.DELETE.KV_{S.decisions_bucket}", False),
    ("anomaly", "a1", S.alert("critical"), True),
    ("anomaly", "a1", S.decision("VALID"), False),
    ("recovery", "r1", S.alert("warning"), True),
    ("recovery", "r1", S.votes("t1"), False),
    ("keys", "k1", "$KV.ap_state.key.abcd", True),
    ("keys", "k1", "$KV.ap_state.anchor.abcd", False),
    ("trust", "tr1", "$KV.ap_state.anchor.abcd", True),
    ("trust", "tr1", "$KV.ap_state.policy.x", False),
    ("authority", "au1", "$KV.ap_state.policy.x", True),
    ("admin", "admin", S.decision("VALID"), True),
]


@pytest.mark.parametrize(("role", "name", "subject", "allowed"), PUBLISH)
def test_publish_rules(role: str, name: str, subject: str, allowed: bool) -> None:
    assert permissions(role, name, S).may_publish(subject) is allowed


# (role, name, subject or wildcard, may subscribe)
SUBSCRIBE = [
    ("verifier", "v1", S.ballot, True),
    ("verifier", "v1", S.request, False),
    ("verifier", "v1", S.votes_all, False),
    ("verifier", "v1", "_INBOX.v1.abc.*", True),
    ("verifier", "v1", "$SRV.PING", True),
    ("verifier", "v1", "$SRV.INFO.agentic-payments-verifier", True),
    ("verifier", "v1", "$SRV.INFO.agentic-payments-tally", False),
    ("client", "alice", "_INBOX.alice.xyz.*", True),
    ("client", "alice", "_INBOX.bob.xyz.*", False),
    ("client", "alice", "_INBOX.>", False),
    ("client", "alice", S.ballot, False),
    ("client", "alice", S.decisions_all, False),
    ("client", "alice", ">", False),
    ("tally", "t1", S.request, True),
    ("tally", "t1", S.votes("t1"), True),
    ("tally", "t1", S.votes("t2"), False),
    ("tally", "t1", S.votes_all, False),
    ("tally", "t1", S.ballot, False),
    ("anomaly", "a1", S.votes_all, True),
    ("anomaly", "a1", S.decisions_all, True),
    ("recovery", "r1", S.heartbeat_all, True),
    ("recovery", "r1", S.ballot, False),
    ("admin", "admin", ">", True),
]


@pytest.mark.parametrize(("role", "name", "subject", "allowed"), SUBSCRIBE)
def test_subscribe_rules(role: str, name: str, subject: str, allowed: bool) -> None:
    assert permissions(role, name, S).may_subscribe(subject) is allowed


@pytest.mark.parametrize(
    ("role", "responses"),
    [
        ("client", False),
        ("verifier", True),
        ("tally", True),
        ("anomaly", True),
        ("admin", False),
    ],
)
def test_allow_responses(role: str, responses: bool) -> None:
    assert permissions(role, "x1", S).allow_responses is responses


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_only_its_own_inbox_and_publishes_no_inbox(role: str) -> None:
    perms = permissions(role, "me", S)
    if role == "admin":
        return
    assert perms.may_subscribe(f"{inbox_prefix('me')}.x.*")
    assert not perms.may_subscribe("_INBOX.other.x")
    assert not any(p.startswith("_INBOX") for p in perms.publish)
    assert ">" not in perms.publish and ">" not in perms.subscribe


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ("verifier:v1", True),
        ("client:shop-1", True),
        ("root:x", False),
        ("verifier", False),
        ("verifier:a.b", False),
        ("verifier:*", False),
        ("client:" + "x" * 65, False),
    ],
)
def test_parse_user(spec: str, ok: bool) -> None:
    if ok:
        assert parse_user(spec)[0] in ROLES
    else:
        with pytest.raises(ValueError, match="ROLE:NAME"):
            parse_user(spec)


def test_render_refuses_duplicates_and_bad_auth() -> None:
    with pytest.raises(ValueError, match="unique"):
        render_auth_conf([User("client", "a"), User("verifier", "a")], S, "env-password")
    with pytest.raises(ValueError, match="auth method"):
        render_auth_conf([User("client", "a")], S, "token")
    with pytest.raises(ValueError, match="nkey"):
        render_auth_conf([User("client", "a")], S, "nkey")


def test_users_live_in_app_and_streams_in_data() -> None:
    """The rendered block is the account split of docs/security.md: JetStream
    only in DATA (no users), the wildcard service exports/imports, users in APP."""
    text = render_auth_conf([User("client", "alice"), User("verifier", "v1")], S, "env-password")
    data = text[text.index("  DATA: {") : text.index("  APP: {")]
    app = text[text.index("  APP: {") :]
    assert "jetstream: enabled" in data and "users: []" in data
    assert '{ service: "$JS.API.>", response_type: stream }' in data
    assert '{ service: "$KV.>" }' in data
    assert "jetstream" not in app and 'user: "alice"' in app and 'user: "v1"' in app
    assert '{ service: { account: DATA, subject: "$JS.API.>" } }' in app
    assert '{ service: { account: DATA, subject: "$KV.>" } }' in app
    assert "authorization" not in text


def test_checked_in_auth_conf_is_the_rendering() -> None:
    users = build_users(list(DEFAULT_USERS), "env-password", None)
    expected = render_auth_conf(users, S, "env-password")
    assert (ROOT / "deploy/nats/auth.conf").read_text() == expected, (
        "regenerate: agentic-payments nats-config > deploy/nats/auth.conf"
    )
    assert cli_main(["nats-config", "--check", str(ROOT / "deploy/nats/auth.conf")]) == 0


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "auth.conf"
    stale.write_text((ROOT / "deploy/nats/auth.conf").read_text().replace("ap.ballot", "x"))
    assert cli_main(["nats-config", "--check", str(stale)]) == 1
    assert "differs" in capsys.readouterr().err


def test_nkey_rendering_writes_private_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    out = tmp_path / "secrets"
    assert (
        cli_main(
            [
                "nats-config",
                "--auth",
                "nkey",
                "--out",
                str(out),
                "--prefix",
                "p1",
                "--user",
                "verifier:v1",
                "--user",
                "client:shop",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in data["users"]] == ["v1", "shop"]
    conf = (out / "auth.conf").read_text()
    for user in data["users"]:
        assert user["nkey"].startswith("U") and user["nkey"] in conf
        seed = out / f"{user['name']}.nk"
        assert seed.read_text().startswith("SU")
        assert seed.read_text().strip() not in conf  # seeds never go into the server config
        assert (seed.stat().st_mode & 0o077) == 0
        env = (out / f"{user['name']}.env").read_text()
        assert f"NATS_INBOX_PREFIX=_INBOX.{user['name']}" in env and "AP_PREFIX=p1" in env


def test_nkey_without_out_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["nats-config", "--auth", "nkey"]) == 78
    assert "CONFIG_INVALID" in capsys.readouterr().err
    assert cli_main(["nats-config", "--user", "root:x"]) == 78


@pytest.mark.parametrize("conf", ["server.conf", "cluster.conf", "leafnode.conf", "accounts.conf"])
def test_deploy_configs_are_valid_for_nats_server(conf: str, tmp_path: Path) -> None:
    """``nats-server -t`` parses the sample configs (with the env passwords set)."""
    path = ROOT / "deploy/nats" / conf
    if conf == "cluster.conf":  # needs its route certificates: a copy with a test PKI
        from tests.integration.test_cluster_routes import route_pki

        copy = tmp_path / "nats"
        shutil.copytree(path.parent, copy)
        route_pki(copy)
        path = copy / conf
    env = dict(os.environ)
    for spec in DEFAULT_USERS:
        env[User(*parse_user(spec)).password_env] = "test-password"
    env.update(
        AP_NATS_PASSWORD_ORG_A="x",
        AP_NATS_PASSWORD_ORG_B="x",
        AP_NATS_PASSWORD_CONSORTIUM="x",
        AP_NATS_HUB_URL="nats-leaf://org_a:x@127.0.0.1:7422",
    )
    proc = subprocess.run(
        [find_nats_server(), "-c", str(path), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=path.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
