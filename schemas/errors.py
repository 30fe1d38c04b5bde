"""One exception hierarchy with stable error codes.

Every error a worker or client can raise or send on the wire is one of these.
The ``code`` strings are part of the wire contract (they appear in
``ErrorReply.code`` and in ``schemas/asyncapi.yaml``): never rename one, only
add. Lower-layer exceptions (msgpack, PyNaCl, nats-py) are converted at the
boundary so callers only ever catch ``AgenticPaymentsError``::

    AgenticPaymentsError                      code
    ├── ConfigError                           CONFIG_INVALID
    │   └── MasterKeyInvalid                  MASTER_KEY_INVALID
    ├── CodecError                            (malformed input on the wire)
    │   ├── PayloadTooLarge                   PAYLOAD_TOO_LARGE
    │   ├── MalformedPayload                  MALFORMED_PAYLOAD
    │   ├── UnsupportedVersion                UNSUPPORTED_VERSION
    │   └── SchemaViolation                   SCHEMA_VIOLATION
    ├── IdentityError                         IDENTITY_ERROR
    │   └── InsecureKeyFile                   KEY_FILE_INSECURE
    ├── ConsensusError                        (a round could not run)
    │   ├── PoolTooSmall                      POOL_TOO_SMALL
    │   ├── RequestIdConflict                 REQUEST_ID_CONFLICT
    │   ├── Overloaded                        OVERLOADED
    │   └── ShuttingDown                      SHUTTING_DOWN
    ├── VoteRejected                          VOTE_* (see VoteRejected.REASONS)
    ├── CertificateInvalid                    CERTIFICATE_INVALID
    │   └── PoolHistoryMissing                POOL_HISTORY_MISSING
    ├── WriteConflict                         WRITE_CONFLICT (a KV compare-and-set lost)
    ├── TrustError                            TRUST_ERROR (trust service operations)
    │   ├── TrustNotFound                     TRUST_NOT_FOUND
    │   ├── TrustConflict                     TRUST_CONFLICT         (also a WriteConflict)
    │   └── TrustBadSignature                 TRUST_BAD_SIGNATURE
    ├── ChainInvalid                          CHAIN_* (see ChainInvalid.REASONS)
    ├── AuthorityError                        (authority coordinator refused a change)
    │   ├── PolicyMissing                     POLICY_MISSING
    │   ├── PolicyNotMet                      POLICY_NOT_MET
    │   ├── AuthorityExists                   AUTHORITY_EXISTS
    │   ├── AuthorityUnknown                  AUTHORITY_UNKNOWN
    │   ├── ChangeInvalid                     CHANGE_INVALID
    │   └── StateConflict                     STATE_CONFLICT         (also a WriteConflict)
    ├── KeyManagementError                    KEY_ERROR (key manager refusals)
    │   ├── KeyNotFound                       KEY_NOT_FOUND
    │   ├── KeyExists                         KEY_EXISTS
    │   ├── KeyStateConflict                  KEY_STATE_CONFLICT
    │   ├── KeyPolicyDenied                   KEY_POLICY_DENIED
    │   ├── KeyVersionInvalid                 KEY_VERSION_INVALID
    │   └── KeyUpdateConflict                 KEY_UPDATE_CONFLICT    (also a WriteConflict)
    ├── RespawnFailed                         RESPAWN_FAILED (a recovery backend failed)
    ├── ReplySubjectRefused                   REPLY_SUBJECT_REFUSED (never on the wire)
    └── TransportError                        (NATS trouble, client side)
        ├── NotConnected                      NOT_CONNECTED
        ├── NoResponders                      NO_RESPONDERS
        └── RequestTimeout                    TIMEOUT

``WriteConflict`` is what bus/kv.py raises when a compare-and-set write keeps
losing (or a create finds the key taken). Each service hands its KeyValue
handle its own subclass, so the lost race reaches the wire with the code that
service always answered (TRUST_CONFLICT, STATE_CONFLICT, KEY_UPDATE_CONFLICT),
while code that only cares that a write lost catches ``WriteConflict``.

``RemoteError`` wraps an ``ErrorReply`` received from a worker and keeps the
worker's code, so a client can branch on ``err.code`` whatever the side.
"""

from __future__ import annotations

from typing import ClassVar


class AgenticPaymentsError(Exception):
    """Base of every error this project raises; ``code`` is stable."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        if code is not None:
            self.code = code  # type: ignore[misc]

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(AgenticPaymentsError):
    """Configuration is invalid; the process exits with EXIT_CONFIG."""

    code = "CONFIG_INVALID"


class CodecError(AgenticPaymentsError):
    """A payload could not be decoded into a valid message."""

    code = "MALFORMED_PAYLOAD"


class PayloadTooLarge(CodecError):
    """The payload exceeds a size limit."""

    code = "PAYLOAD_TOO_LARGE"


class MalformedPayload(CodecError):
    """The bytes are not acceptable MessagePack (truncated, ext types, deep...)."""

    code = "MALFORMED_PAYLOAD"


class UnsupportedVersion(CodecError):
    """The message carries a version this build does not speak."""

    code = "UNSUPPORTED_VERSION"


class SchemaViolation(CodecError):
    """Well-formed MessagePack that does not match the message schema."""

    code = "SCHEMA_VIOLATION"


class IdentityError(AgenticPaymentsError):
    """A key could not be created, loaded or used."""

    code = "IDENTITY_ERROR"


class InsecureKeyFile(IdentityError):
    """A private key file is readable by group or others."""

    code = "KEY_FILE_INSECURE"


class ConsensusError(AgenticPaymentsError):
    """A consensus round could not be run."""

    code = "CONSENSUS_ERROR"


class PoolTooSmall(ConsensusError):
    """Fewer active verifiers than the minimum pool size."""

    code = "POOL_TOO_SMALL"


class RequestIdConflict(ConsensusError):
    """A request id was reused with different request bytes."""

    code = "REQUEST_ID_CONFLICT"


class Overloaded(ConsensusError):
    """The tally holds too many requests; retry later with the same id."""

    code = "OVERLOADED"


class ShuttingDown(ConsensusError):
    """The tally stopped before this request was decided; retry with the same id."""

    code = "SHUTTING_DOWN"


class VoteRejected(AgenticPaymentsError):
    """A vote was not counted; ``code`` says why."""

    code = "VOTE_REJECTED"
    REASONS: ClassVar[frozenset[str]] = frozenset(
        {
            "VOTE_UNKNOWN_BALLOT",
            "VOTE_WRONG_EPOCH",
            "VOTE_NOT_MEMBER",
            "VOTE_BAD_SIGNATURE",
            "VOTE_MISMATCH",
            "VOTE_DUPLICATE",
            "VOTE_EQUIVOCATION",
            "VOTE_STATE_MISMATCH",
        }
    )


class CertificateInvalid(AgenticPaymentsError):
    """A certificate failed offline verification; the message says why."""

    code = "CERTIFICATE_INVALID"


class PoolHistoryMissing(CertificateInvalid):
    """The pool of a certificate's epoch cannot be rebuilt: part of the membership
    bucket's history up to that epoch is gone (trimmed or purged). The certificate is
    then refused (fail closed) rather than checked against a partial pool."""

    code = "POOL_HISTORY_MISSING"


class TrustError(AgenticPaymentsError):
    """A trust service operation could not be done."""

    code = "TRUST_ERROR"


class TrustNotFound(TrustError):
    """No such trust anchor or certificate."""

    code = "TRUST_NOT_FOUND"


class WriteConflict(AgenticPaymentsError):
    """A compare-and-set write on a KV bucket lost: the key exists (create), or another
    writer changed it under every attempt of the budget (bus/kv.py); re-read and retry."""

    code = "WRITE_CONFLICT"


class TrustConflict(TrustError, WriteConflict):
    """The serial is taken by another certificate, or the state kept changing under us."""

    code = "TRUST_CONFLICT"


class TrustBadSignature(TrustError):
    """A certificate's signature does not verify under its issuer key."""

    code = "TRUST_BAD_SIGNATURE"


class ChainInvalid(AgenticPaymentsError):
    """No valid trust chain; ``code`` says why (a ChainResult code)."""

    code = "CHAIN_INVALID"
    REASONS: ClassVar[frozenset[str]] = frozenset(
        {
            "CHAIN_EXPIRED",
            "CHAIN_NOT_YET_VALID",
            "CHAIN_SIGNATURE",
            "CHAIN_LOOP",
            "CHAIN_PATH_LENGTH",
            "CHAIN_PURPOSE",
            "CHAIN_REVOKED",
            "CHAIN_BUDGET",
            "CHAIN_DEPTH",
            "CHAIN_NO_ANCHOR",
            "CHAIN_MALFORMED",
        }
    )


# -- authority coordinator (workers/authority/worker.py) --------------------------------
class AuthorityError(AgenticPaymentsError):
    """The authority coordinator refused a change or a query."""

    code = "AUTHORITY_ERROR"


class PolicyMissing(AuthorityError):
    """No policy applies: the category has none, and there is no default policy."""

    code = "POLICY_MISSING"


class PolicyNotMet(AuthorityError):
    """The endorsements do not satisfy the governing policy."""

    code = "POLICY_NOT_MET"


class AuthorityExists(AuthorityError):
    """An authority with this public key is already registered."""

    code = "AUTHORITY_EXISTS"


class AuthorityUnknown(AuthorityError):
    """No authority with this public key is registered."""

    code = "AUTHORITY_UNKNOWN"


class ChangeInvalid(AuthorityError):
    """The proposed record is not what the operation may change (wrong serial, field)."""

    code = "CHANGE_INVALID"


class StateConflict(AuthorityError, WriteConflict):
    """Another writer changed the record first (compare-and-set lost); re-read and retry."""

    code = "STATE_CONFLICT"


# -- key manager (workers/keys/worker.py) ---------------------------------------------
class MasterKeyInvalid(ConfigError):
    """The key manager's master key is missing or malformed (exit 78)."""

    code = "MASTER_KEY_INVALID"


class KeyManagementError(AgenticPaymentsError):
    """The key manager refused an operation."""

    code = "KEY_ERROR"


class KeyNotFound(KeyManagementError):
    """No key by that name."""

    code = "KEY_NOT_FOUND"


class KeyExists(KeyManagementError):
    """A key by that name already exists."""

    code = "KEY_EXISTS"


class KeyStateConflict(KeyManagementError):
    """The operation is not allowed in the key's current state."""

    code = "KEY_STATE_CONFLICT"


class KeyPolicyDenied(KeyManagementError):
    """The key's policy forbids the operation (e.g. deletion not allowed)."""

    code = "KEY_POLICY_DENIED"


class KeyVersionInvalid(KeyManagementError):
    """The key version does not exist or may not be used for this operation."""

    code = "KEY_VERSION_INVALID"


class KeyUpdateConflict(KeyManagementError, WriteConflict):
    """Concurrent updates kept winning the compare-and-set; retry."""

    code = "KEY_UPDATE_CONFLICT"


class RespawnFailed(AgenticPaymentsError):
    """A recovery backend (local supervisor, systemd, Kubernetes) could not respawn a worker."""

    code = "RESPAWN_FAILED"


class ReplySubjectRefused(AgenticPaymentsError):
    """A request's reply subject lies outside the inbox namespace (``_INBOX.``).

    The requester picks the reply subject, and nats-server's ``allow_responses``
    lets the worker publish one answer to whatever it was handed: a reply set to
    ``$KV.<bucket>.<key>`` made the worker write its answer into that bucket (a
    confused deputy, issue #10 hole 1). Such a request is not answered at all (so
    this code never travels in an ErrorReply); the worker counts it as
    ``rejected_REPLY_SUBJECT_REFUSED`` (bus/replies.py).
    """

    code = "REPLY_SUBJECT_REFUSED"


class TransportError(AgenticPaymentsError):
    """NATS could not carry the message."""

    code = "TRANSPORT_ERROR"


class StoreFull(TransportError):
    """JetStream refused a write or a new stream: its storage limit (``max_file_store``,
    ``max_memory_store`` or an account limit) is reached. nats-py raises this as
    ``ServiceUnavailableError`` (code 503, err_code 10023 "insufficient resources"),
    the class it also uses for "no JetStream at all": without its own code an operator
    would be told to enable JetStream on a server whose disk quota is full. Retryable
    once space is freed; the worker keeps serving what needs no new storage."""

    code = "STORE_FULL"


class NotConnected(TransportError):
    """No connection to a NATS server."""

    code = "NOT_CONNECTED"


class NoResponders(TransportError):
    """No worker listens on the subject (is the tally running?)."""

    code = "NO_RESPONDERS"


class RequestTimeout(TransportError):
    """No reply within the timeout."""

    code = "TIMEOUT"


class PoolUnreadable(TransportError):
    """The verifier pool could not be read completely and consistently in time.

    Raised (bus/membership.py) when every attempt within the read's deadline failed,
    timed out, or came back partial: the stream said it held a record that a get
    then did not find, or held messages but listed no records. A partial read must
    never become a smaller pool, because a certificate checked against it would be
    refused as ``CERTIFICATE_INVALID`` although nothing is wrong with it. It is a
    transport error: it says nothing about any certificate; retry later.
    """

    code = "POOL_UNREADABLE"


class RemoteError(AgenticPaymentsError):
    """A worker answered with an ErrorReply; ``code`` is the worker's code."""

    code = "REMOTE_ERROR"


#: Every code that can appear in ``ErrorReply.code`` on the wire.
WIRE_ERROR_CODES: frozenset[str] = frozenset(
    {
        "PAYLOAD_TOO_LARGE",
        "MALFORMED_PAYLOAD",
        "UNSUPPORTED_VERSION",
        "SCHEMA_VIOLATION",
        "POOL_TOO_SMALL",
        "REQUEST_ID_CONFLICT",
        "OVERLOADED",
        "SHUTTING_DOWN",
        "TRUST_NOT_FOUND",
        "TRUST_CONFLICT",
        "TRUST_BAD_SIGNATURE",
        "INTERNAL",
        "STORE_FULL",
        # authority coordinator
        "POLICY_MISSING",
        "POLICY_NOT_MET",
        "AUTHORITY_EXISTS",
        "AUTHORITY_UNKNOWN",
        "CHANGE_INVALID",
        "STATE_CONFLICT",
        # key manager
        "KEY_NOT_FOUND",
        "KEY_EXISTS",
        "KEY_STATE_CONFLICT",
        "KEY_POLICY_DENIED",
        "KEY_VERSION_INVALID",
        "KEY_UPDATE_CONFLICT",
    }
)
