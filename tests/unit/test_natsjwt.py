"""bus/natsjwt.py: JWTs are signed by the right issuer and carry the role's permissions."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]
import pytest

from bus.natsjwt import NKey, account_jwt, creds_file, operator_conf, operator_jwt, user_jwt
from bus.permissions import permissions
from bus.subjects import Subjects
from workers.cli.main import main as cli_main

S = Subjects("ap")


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def claims_of(jwt: str, issuer: NKey) -> dict[str, Any]:
    header, body, sig = jwt.split(".")
    assert json.loads(_decode(header)) == {"typ": "JWT", "alg": "ed25519-nkey"}
    verifier = nkeys.from_seed(bytearray(issuer.seed.encode()))
    assert verifier.verify(f"{header}.{body}".encode(), _decode(sig))
    claims: dict[str, Any] = json.loads(_decode(body))
    assert claims["iss"] == issuer.public
    return claims


@pytest.fixture
def keys() -> tuple[NKey, NKey, NKey]:
    return (
        NKey.generate(nkeys.PREFIX_BYTE_OPERATOR),
        NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT),
        NKey.generate(nkeys.PREFIX_BYTE_USER),
    )


@pytest.mark.parametrize(
    ("role", "name"), [("client", "alice"), ("verifier", "v1"), ("tally", "t1"), ("admin", "admin")]
)
def test_user_jwt_carries_role_permissions(
    keys: tuple[NKey, NKey, NKey], role: str, name: str
) -> None:
    _, account, user = keys
    claims = claims_of(user_jwt(account, user.public, role, name, S), account)
    perms = permissions(role, name, S)
    assert claims["sub"] == user.public and claims["nats"]["type"] == "user"
    assert claims["nats"]["pub"]["allow"] == list(perms.publish)
    assert claims["nats"]["sub"]["allow"] == list(perms.subscribe)
    assert ("resp" in claims["nats"]) is perms.allow_responses


def test_operator_and_account_jwts(keys: tuple[NKey, NKey, NKey]) -> None:
    operator, account, _ = keys
    op = claims_of(operator_jwt(operator), operator)
    assert op["sub"] == operator.public and op["nats"]["type"] == "operator"
    acc = claims_of(account_jwt(operator, account, "AP"), operator)
    assert acc["nats"]["limits"]["streams"] == -1
    sys_acc = claims_of(account_jwt(operator, account, "SYS", jetstream=False), operator)
    assert "streams" not in sys_acc["nats"]["limits"]
    with pytest.raises(ValueError, match="system account"):
        operator_conf(operator_jwt(operator), {account.public: "x"}, "ANOTHER")


def test_data_and_app_accounts_split_the_streams_from_the_users(
    keys: tuple[NKey, NKey, NKey],
) -> None:
    """DATA owns JetStream and exports the API and KV subjects (API answers as a
    stream, for batched direct gets); APP has no JetStream and imports both as
    the same wildcards (a literal KV import would store answers again)."""
    operator, data, app = keys
    d = claims_of(account_jwt(operator, data, "DATA", exports=True), operator)["nats"]
    assert d["limits"]["streams"] == -1 and "imports" not in d
    assert [(e["subject"], e["type"], e.get("response_type")) for e in d["exports"]] == [
        ("$JS.API.>", "service", "Stream"),
        ("$KV.>", "service", None),
    ]
    a = claims_of(
        account_jwt(operator, app, "APP", jetstream=False, imports_from=data.public), operator
    )["nats"]
    assert "streams" not in a["limits"] and "exports" not in a
    assert [(i["subject"], i["account"], i["type"]) for i in a["imports"]] == [
        ("$JS.API.>", data.public, "service"),
        ("$KV.>", data.public, "service"),
    ]


def test_tampered_jwt_does_not_verify(keys: tuple[NKey, NKey, NKey]) -> None:
    _, account, user = keys
    header, body, sig = user_jwt(account, user.public, "client", "alice", S).split(".")
    claims = json.loads(_decode(body))
    claims["nats"]["pub"]["allow"] = [">"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    verifier = nkeys.from_seed(bytearray(account.seed.encode()))
    with pytest.raises(nkeys.ErrInvalidSignature):
        verifier.verify(f"{header}.{forged}".encode(), _decode(sig))


def test_creds_file_layout(keys: tuple[NKey, NKey, NKey]) -> None:
    user = keys[2]
    text = creds_file("JWT", user.seed)
    assert text.startswith("-----BEGIN NATS USER JWT-----\nJWT\n")
    assert f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n" in text


def test_cli_jwt_writes_creds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "jwt"
    assert (
        cli_main(
            [
                "nats-config",
                "--auth",
                "jwt",
                "--out",
                str(out),
                "--user",
                "client:shop",
                "--user",
                "verifier:v1",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in data["users"]] == ["shop", "v1"]
    conf = (out / "auth.conf").read_text()
    assert "operator:" in conf and "system_account:" in conf
    for name in ("shop", "v1"):
        creds = out / f"{name}.creds"
        assert (creds.stat().st_mode & 0o077) == 0
        assert f"NATS_CREDS={creds.resolve()}" in (out / f"{name}.env").read_text()
    assert cli_main(["nats-config", "--auth", "jwt"]) == 78
