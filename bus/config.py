"""Connection settings from the environment, shared by workers and clients.

Environment variables (all optional):

  NATS_URL            server URL(s), comma separated   (nats://127.0.0.1:4222)
  NATS_CREDS          path to a .creds file (JWT + nkey)
  NATS_NKEY_SEED      path to an nkey seed file
  NATS_TLS_CA         CA bundle to verify the server
  NATS_TLS_CERT, NATS_TLS_KEY   client certificate for mutual TLS
  AP_PREFIX           subject prefix                    (ap)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bus.subjects import DEFAULT_PREFIX, check_token

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class NatsConfig:
    url: str = DEFAULT_NATS_URL
    prefix: str = DEFAULT_PREFIX
    creds: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        check_token(self.prefix, "prefix")

    @classmethod
    def from_env(cls, url: str | None = None, prefix: str | None = None) -> NatsConfig:
        env = os.environ
        return cls(
            url=url or env.get("NATS_URL") or DEFAULT_NATS_URL,
            prefix=prefix or env.get("AP_PREFIX") or DEFAULT_PREFIX,
            creds=env.get("NATS_CREDS") or None,
            nkey_seed=env.get("NATS_NKEY_SEED") or None,
            tls_ca=env.get("NATS_TLS_CA") or None,
            tls_cert=env.get("NATS_TLS_CERT") or None,
            tls_key=env.get("NATS_TLS_KEY") or None,
        )

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]
