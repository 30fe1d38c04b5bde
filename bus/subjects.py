"""Every NATS subject, queue group and JetStream bucket name, in one place.

All names hang under a prefix (``AP_PREFIX``, default ``ap``) so several
deployments — or every test — can share one NATS server without seeing each
other's traffic. ``schemas/asyncapi.yaml`` documents these with ``{prefix}``
as a parameter; a test keeps both in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import ConfigError

DEFAULT_PREFIX = "ap"
TALLY_QUEUE = "tally"
#: Queue group of the trust-chain validator service (workers/trust/worker.py).
TRUST_QUEUE = "trust"
#: Queue group of the key manager's request subjects (workers/keys/worker.py).
KEYS_QUEUE = "keys"
#: Queue group of the recovery worker's history endpoint.
RECOVERY_QUEUE = "recovery"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Root of every reply inbox: nats-py's default inbox prefix, and the parent of each
#: user's private ``_INBOX.<name>`` (bus/permissions.inbox_prefix). Workers answer
#: only reply subjects under it (bus/replies.py).
INBOX_ROOT = "_INBOX"
#: Longest reply subject a worker answers (nats-py's inboxes are ~50 bytes).
MAX_REPLY_SUBJECT = 256


def is_inbox(subject: str) -> bool:
    """Whether ``subject`` is a literal subject inside the inbox namespace ``_INBOX.>``.

    At least one token after the root, no empty token, no wildcard and no
    whitespace or control character: a reply a worker may publish its answer to
    without writing into a stream, a KV bucket or another service's subject.
    """
    if len(subject) > MAX_REPLY_SUBJECT:
        return False
    tokens = subject.split(".")
    if len(tokens) < 2 or tokens[0] != INBOX_ROOT:
        return False
    return all(
        t and t not in ("*", ">") and all(c.isprintable() and not c.isspace() for c in t)
        for t in tokens[1:]
    )


def check_token(value: str, what: str) -> str:
    """A name that is one NATS subject token and a valid bucket/key fragment."""
    if not _TOKEN.match(value):
        raise ConfigError(f"{what} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


@dataclass(frozen=True)
class Subjects:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_token(self.prefix, "prefix")

    # -- consensus -----------------------------------------------------------
    @property
    def request(self) -> str:
        """Clients send VerificationRequest here (request/reply, queue group 'tally')."""
        return f"{self.prefix}.verify.request"

    @property
    def ballot(self) -> str:
        """The tally publishes Ballots here; every verifier receives every ballot."""
        return f"{self.prefix}.ballot"

    def votes(self, tally_id: str) -> str:
        """A ballot's reply subject: verifiers answer with their Vote here."""
        return f"{self.prefix}.vote.{tally_id}"

    @property
    def votes_all(self) -> str:
        return f"{self.prefix}.vote.>"

    @property
    def equivocation(self) -> str:
        """Evidence of a verifier that signed two different votes for one ballot."""
        return f"{self.prefix}.evidence.equivocation"

    def decision(self, decision: str) -> str:
        """Every certificate a tally's round produced, as it was sent to the client."""
        return f"{self.prefix}.decision.{decision}"

    @property
    def decisions_all(self) -> str:
        return f"{self.prefix}.decision.>"

    @property
    def audit_stream(self) -> str:
        """JetStream stream keeping ``{prefix}.decision.>`` (append-only audit log)."""
        return f"{self.prefix}_AUDIT"

    # -- liveness and metrics --------------------------------------------------
    def heartbeat(self, kind: str, worker_id: str) -> str:
        return f"{self.prefix}.heartbeat.{kind}.{worker_id}"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.prefix}.heartbeat.>"

    def metrics(self, kind: str, worker_id: str) -> str:
        return f"{self.prefix}.metrics.{kind}.{worker_id}"

    @property
    def metrics_all(self) -> str:
        return f"{self.prefix}.metrics.>"

    @property
    def heartbeat_stream(self) -> str:
        """JetStream stream keeping recent ``{prefix}.heartbeat.>`` (bounded by age)."""
        return f"{self.prefix}_HEARTBEATS"

    @property
    def metrics_stream(self) -> str:
        """JetStream stream keeping recent ``{prefix}.metrics.>`` (bounded by age)."""
        return f"{self.prefix}_METRICS"

    # -- alerts (anomaly and recovery workers) -----------------------------------
    def alert(self, severity: str) -> str:
        """Signed Alerts (schemas/alerts.py), one subject per severity."""
        return f"{self.prefix}.alert.{severity}"

    @property
    def alerts_all(self) -> str:
        return f"{self.prefix}.alert.>"

    @property
    def alerts_stream(self) -> str:
        """JetStream stream keeping ``{prefix}.alert.>``."""
        return f"{self.prefix}_ALERTS"

    def status(self, kind: str, worker_id: str) -> str:
        """Micro-service endpoint answering the worker's current MetricsSnapshot."""
        return f"{self.prefix}.status.{kind}.{worker_id}"

    # -- trust-chain validator (workers/trust/worker.py, schemas/trust.py) --------------
    def trust(self, trust_op: str) -> str:
        """Trust service operations, request/reply in queue group 'trust'; ``trust_op`` is
        one of add-anchor, remove-anchor, add-cert, revoke-cert, validate, list."""
        return f"{self.prefix}.trust.{trust_op}"

    # -- authority coordinator (workers/authority/worker.py) ------------------------------
    def authority(self, authority_op: str) -> str:
        """Authority coordinator operation (request/reply, queue group 'authority'):
        add, activate, deactivate, set-level, set-policy, get-policy, list, evaluate."""
        return f"{self.prefix}.authority.{authority_op}"

    # -- recovery worker and local supervisor (workers/recovery/worker.py, supervisor.py) --
    @property
    def recovery_history(self) -> str:
        """Request/reply (queue group 'recovery'): HistoryQuery -> HistoryReply."""
        return f"{self.prefix}.recovery.history"

    def supervisor_restart(self, name: str) -> str:
        """Request/reply: RestartRequest -> RestartReply, answered by the local supervisor
        ``name`` (``agentic-payments up``; by default the sanitised host name)."""
        return f"{self.prefix}.supervisor.{name}.restart"

    @property
    def recovery_bucket(self) -> str:
        """Recovery attempt history: key = kind.worker_id.dead_generation.attempt,
        value = RecoveryAttempt; created with compare-and-set (one claimant per attempt)."""
        return f"{self.prefix}_recovery"

    # -- JetStream key-value buckets --------------------------------------------
    @property
    def members_bucket(self) -> str:
        """Verifier membership: key = verifier id, value = MemberRecord."""
        return f"{self.prefix}_members"

    @property
    def state_bucket(self) -> str:
        """Verdict state (key status, trust, authorities, policies): see bus/state.py."""
        return f"{self.prefix}_state"

    @property
    def decisions_bucket(self) -> str:
        """Certificates by request id, for idempotent retries (and audit)."""
        return f"{self.prefix}_decisions"

    # -- key manager (workers/keys/worker.py, schemas/keys.py) ---------------------------
    def keys_op(self, keys_op: str) -> str:
        """Key manager request/reply (queue group 'keys'); ``keys_op`` is one of
        schemas.keys.OPS: create, rotate, revoke, disable, enable, delete, get,
        list, sign, config, sweep."""
        return f"{self.prefix}.keys.{keys_op}"

    @property
    def keys_revoked(self) -> str:
        """KeyRevoked events, published after the revocation is in the state bucket."""
        return f"{self.prefix}.keys.event.revoked"

    @property
    def keys_bucket(self) -> str:
        """The key manager's private bucket: key = key name, value = KeyRecord
        (policy and every version, seeds sealed under the master key)."""
        return f"{self.prefix}_keys"


#: Name every worker registers under for ``$SRV.PING/INFO/STATS``.
def service_name(kind: str) -> str:
    return f"agentic-payments-{kind}"


def telemetry_source(subjects: Subjects, subject: str) -> tuple[str, str] | None:
    """(kind, worker id) named by a heartbeat or metrics subject, else None.

    The subject is what NATS permissions pin (a worker may publish only its
    own), so readers trust it over the kind and id inside the payload.
    """
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == subjects.prefix and parts[1] in ("heartbeat", "metrics"):
        return parts[2], parts[3]
    return None
