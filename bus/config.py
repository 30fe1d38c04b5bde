"""Connection settings from the environment, shared by workers and clients.

Environment variables (all optional):

  NATS_URL            server URL(s), comma separated   (nats://127.0.0.1:4222)
  NATS_CREDS          path to a .creds file (JWT + nkey)
  NATS_NKEY_SEED      path to an nkey seed file
  NATS_TLS_CA         CA bundle to verify the server
  NATS_TLS_CERT, NATS_TLS_KEY   client certificate for mutual TLS
  NATS_USER, NATS_PASSWORD      user/password authentication
  NATS_INBOX_PREFIX   reply-inbox prefix (_INBOX); with the per-role server
                      config (bus/permissions.py) set it to _INBOX.<user name>.
                      It must lie under _INBOX: workers answer no other reply
  AP_PREFIX           subject prefix                    (ap)
  AP_JS_REPLICAS      JetStream replicas for the streams and KV buckets the
                      workers create (1; 3 on a 3-node cluster)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from bus.subjects import DEFAULT_PREFIX, INBOX_ROOT, check_token
from schemas.errors import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
_INBOX_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class NatsConfig:
    url: str = DEFAULT_NATS_URL
    prefix: str = DEFAULT_PREFIX
    creds: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        check_token(self.prefix, "prefix")
        if self.inbox_prefix is not None:
            tokens = self.inbox_prefix.split(".")
            if not all(_INBOX_TOKEN.match(t) for t in tokens):
                raise ConfigError(
                    f"inbox prefix {self.inbox_prefix!r} must be dot-separated "
                    "tokens without wildcards or spaces"
                )
            if tokens[0] != INBOX_ROOT:
                # workers answer only replies inside _INBOX. (bus/replies.py)
                raise ConfigError(
                    f"inbox prefix {self.inbox_prefix!r} must be {INBOX_ROOT} or start "
                    f"with {INBOX_ROOT}. (workers answer no other reply subject)"
                )
        if self.tls_key and not self.tls_cert:
            raise ConfigError("NATS_TLS_KEY is set without NATS_TLS_CERT")
        if bool(self.user) != bool(self.password):
            raise ConfigError("NATS_USER and NATS_PASSWORD go together")

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
            user=env.get("NATS_USER") or None,
            password=env.get("NATS_PASSWORD") or None,
            inbox_prefix=env.get("NATS_INBOX_PREFIX") or None,
        )

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


MAX_JS_REPLICAS = 5


def js_replicas() -> int:
    """Replicas for streams/buckets created by the workers (env AP_JS_REPLICAS, default 1).

    Only used when a worker *creates* a stream or bucket; an existing one keeps
    whatever the operator configured.
    """
    raw = os.environ.get("AP_JS_REPLICAS", "").strip() or "1"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_JS_REPLICAS:
        raise ConfigError(f"AP_JS_REPLICAS={raw!r} must be an integer 1-{MAX_JS_REPLICAS}")
    return value
