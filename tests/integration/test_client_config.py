"""Every connection option of bus/config.py, end to end against a real nats-server.

NATS_TLS_CA (server verification), NATS_TLS_CERT/KEY (mutual TLS),
NATS_USER/NATS_PASSWORD, NATS_NKEY_SEED and NATS_INBOX_PREFIX are read from
the environment exactly as a worker reads them. The throwaway CA and
certificates are made with the openssl command line.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.natsserver import start_nats_server
from schemas.errors import ConfigError, NotConnected
from tests.secure import start_secure_server

pytestmark = pytest.mark.integration


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    files = {
        n: d / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client", "client-key")
    }
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(files["ca-key"]),
        "-out",
        str(files["ca"]),
        "-days",
        "2",
        "-subj",
        "/CN=agentic-payments test CA",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        csr, extfile = d / f"{name}.csr", d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(files[f"{name}-key"]),
            "-out",
            str(csr),
            "-subj",
            f"/CN=agentic-payments {name}",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca-key"]),
            "-CAcreateserial",
            "-out",
            str(files[name]),
            "-days",
            "2",
            "-extfile",
            str(extfile),
        )
    return files


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@needs_openssl
@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
async def test_tls_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutual: bool
) -> None:
    pki = make_pki(tmp_path / "pki")
    args = ["--tls", "--tlscert", str(pki["server"]), "--tlskey", str(pki["server-key"])]
    if mutual:
        args += ["--tlsverify", "--tlscacert", str(pki["ca"])]
    server = start_nats_server(tmp_path / "js", extra_args=args)
    try:
        monkeypatch.setenv("NATS_URL", server.url)
        monkeypatch.setenv("NATS_TLS_CA", str(pki["ca"]))
        if mutual:
            monkeypatch.setenv("NATS_TLS_CERT", str(pki["client"]))
            monkeypatch.setenv("NATS_TLS_KEY", str(pki["client-key"]))
        config = NatsConfig.from_env()
        nc = await connect(config, name="tls-test")
        try:
            assert nc.is_connected
            sub = await nc.subscribe("tls.echo")
            await nc.publish("tls.echo", b"over tls")
            msg = await sub.next_msg(timeout=5)
            assert msg.data == b"over tls"
            ssl_obj = nc._transport._io_writer.get_extra_info("ssl_object")  # type: ignore[union-attr]
            assert ssl_obj is not None and ssl_obj.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            await nc.close()
        # without the CA the server certificate is not trusted
        monkeypatch.delenv("NATS_TLS_CA")
        if mutual:  # and without a client certificate mutual TLS refuses us
            monkeypatch.delenv("NATS_TLS_CERT")
            monkeypatch.delenv("NATS_TLS_KEY")
            monkeypatch.setenv("NATS_TLS_CA", str(pki["ca"]))
        with pytest.raises(NotConnected):
            await connect(NatsConfig.from_env(), name="tls-test", initial_attempts=1)
    finally:
        server.stop()


async def test_user_password_nkey_and_inbox_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    extra = 'authorization { users = [ {user: "ops", password: "s3cret"} ] }'
    # one user/password server, one nkey server with the role config
    pw_dir = tmp_path / "pw"
    pw_dir.mkdir()
    (pw_dir / "server.conf").write_text(extra + "\n")
    pw_server = start_nats_server(pw_dir / "js", extra_args=["-c", str(pw_dir / "server.conf")])
    secure = start_secure_server(tmp_path / "nk", prefix, ["admin:admin", "client:alice"])
    try:
        monkeypatch.setenv("NATS_URL", pw_server.url)
        monkeypatch.setenv("NATS_USER", "ops")
        monkeypatch.setenv("NATS_PASSWORD", "s3cret")
        nc = await connect(NatsConfig.from_env(), name="pw")
        await nc.close()
        monkeypatch.setenv("NATS_PASSWORD", "wrong")
        with pytest.raises(NotConnected):
            await connect(NatsConfig.from_env(), name="pw", initial_attempts=1)
        monkeypatch.delenv("NATS_USER")
        monkeypatch.delenv("NATS_PASSWORD")

        monkeypatch.setenv("NATS_URL", secure.url)
        monkeypatch.setenv("AP_PREFIX", prefix)
        for key, value in secure.env("alice").items():
            monkeypatch.setenv(key, value)
        config = NatsConfig.from_env()
        assert config.inbox_prefix == "_INBOX.alice" and config.nkey_seed
        nc = await connect(config, name="alice")
        try:
            assert nc.new_inbox().startswith("_INBOX.alice.")
            sub = await nc.subscribe(nc.new_inbox())  # own inbox: allowed, no error
            await barrier(nc)
            await sub.unsubscribe()
        finally:
            await nc.close()
    finally:
        pw_server.stop()
        secure.server.stop()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"inbox_prefix": "_INBOX.*"}, "inbox prefix"),
        ({"inbox_prefix": "bad prefix"}, "inbox prefix"),
        ({"inbox_prefix": "_INBOX..x"}, "inbox prefix"),
        ({"inbox_prefix": "replies.alice"}, "must be _INBOX"),
        ({"inbox_prefix": "_INBOXES"}, "must be _INBOX"),
        ({"tls_key": "k.pem"}, "NATS_TLS_KEY"),
        ({"user": "u"}, "NATS_USER"),
        ({"password": "p"}, "NATS_USER"),
    ],
)
def test_bad_client_settings_are_config_errors(kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        NatsConfig(**kwargs)  # type: ignore[arg-type]
