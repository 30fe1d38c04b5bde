"""NATS_CREDS end to end: operator-mode nats-server, user JWTs carrying role permissions.

bus/natsjwt.py mints the operator, account and user JWTs; the user JWT holds
the same per-role permissions as auth.conf. The client reads its .creds file
from NATS_CREDS, reads the pool bucket (JetStream in the account) and may
publish a request but not a vote; a verifier's creds cannot publish a
decision.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
import pytest
from nats.aio.msg import Msg

from bus import membership
from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.natsjwt import (
    NKey,
    account_jwt,
    creds_file,
    operator_conf,
    operator_jwt,
    user_jwt,
)
from bus.natsserver import start_nats_server
from bus.permissions import inbox_prefix
from bus.subjects import Subjects
from schemas.errors import NotConnected

pytestmark = pytest.mark.integration


async def test_creds_from_environment_carry_role_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"j{uuid.uuid4().hex[:10]}"
    s = Subjects(prefix)
    operator = NKey.generate(nkeys.PREFIX_BYTE_OPERATOR)
    account = NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT)
    system = NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT)
    conf = tmp_path / "server.conf"
    conf.write_text(
        operator_conf(
            operator_jwt(operator),
            {
                account.public: account_jwt(operator, account, "AP"),
                system.public: account_jwt(operator, system, "SYS", jetstream=False),
            },
            system.public,
        )
    )
    creds: dict[str, Path] = {}
    for role, name in (("admin", "admin"), ("client", "alice"), ("verifier", "v1")):
        user = NKey.generate(nkeys.PREFIX_BYTE_USER)
        path = tmp_path / f"{name}.creds"
        path.write_text(creds_file(user_jwt(account, user.public, role, name, s), user.seed))
        path.chmod(0o600)
        creds[name] = path
    server = start_nats_server(tmp_path / "js", extra_args=["-c", str(conf)])
    try:
        admin = await connect(
            NatsConfig(
                url=server.url,
                prefix=prefix,
                creds=str(creds["admin"]),
                inbox_prefix=inbox_prefix("admin"),
            ),
            name="admin",
        )
        await membership.admit(admin, s, "v1", bytes(32))
        got: list[Msg] = []

        async def cb(msg: Msg) -> None:
            got.append(msg)

        await admin.subscribe(f"{prefix}.>", cb=cb)
        await barrier(admin)

        monkeypatch.setenv("NATS_URL", server.url)
        monkeypatch.setenv("AP_PREFIX", prefix)
        monkeypatch.setenv("NATS_CREDS", str(creds["alice"]))
        monkeypatch.setenv("NATS_INBOX_PREFIX", inbox_prefix("alice"))
        alice = await connect(NatsConfig.from_env(), name="alice")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        alice._error_cb = on_error
        pool = await membership.read_pool(alice, s)  # JetStream reads allowed
        assert [m.worker_id for m in pool.members] == ["v1"]
        await alice.publish(s.votes("t1"), b"vote")
        await alice.publish(s.request, b"request")
        await barrier(alice)

        monkeypatch.setenv("NATS_CREDS", str(creds["v1"]))
        monkeypatch.setenv("NATS_INBOX_PREFIX", inbox_prefix("v1"))
        v1 = await connect(NatsConfig.from_env(), name="v1")
        v1._error_cb = on_error
        await v1.publish(s.decision("VALID"), b"forged")
        await barrier(v1)
        async with asyncio.timeout(5):
            while len([e for e in errors if "permissions violation" in e]) < 2 or not got:  # noqa: ASYNC110 - lists filled by callbacks
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # time is the subject: nothing else arrives
        assert [m.subject for m in got] == [s.request]
        assert any(s.votes("t1").lower() in e for e in errors)
        assert any(s.decision("VALID").lower() in e for e in errors)
        for nc in (alice, v1, admin):
            await nc.close()
        monkeypatch.setenv("NATS_CREDS", str(tmp_path / "missing.creds"))
        with pytest.raises(NotConnected):
            await connect(NatsConfig.from_env(), name="x", initial_attempts=1)
    finally:
        server.stop()
