"""One exception hierarchy with stable error codes.

Every error a worker or client can raise or send on the wire is one of these.
The ``code`` strings are part of the wire contract (they appear in
``ErrorReply.code`` and in ``schemas/asyncapi.yaml``): never rename one, only
add. Lower-layer exceptions (msgpack, PyNaCl, nats-py) are converted at the
boundary so callers only ever catch ``AgenticPaymentsError``::

    AgenticPaymentsError                      code
    ├── ConfigError                           CONFIG_INVALID
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
    ├── RespawnFailed                         RESPAWN_FAILED (a recovery backend failed)
    └── TransportError                        (NATS trouble, client side)
        ├── NotConnected                      NOT_CONNECTED
        ├── NoResponders                      NO_RESPONDERS
        └── RequestTimeout                    TIMEOUT

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
        }
    )


class CertificateInvalid(AgenticPaymentsError):
    """A certificate failed offline verification; the message says why."""

    code = "CERTIFICATE_INVALID"


class RespawnFailed(AgenticPaymentsError):
    """A recovery backend (local supervisor, systemd, Kubernetes) could not respawn a worker."""

    code = "RESPAWN_FAILED"


class TransportError(AgenticPaymentsError):
    """NATS could not carry the message."""

    code = "TRANSPORT_ERROR"


class NotConnected(TransportError):
    """No connection to a NATS server."""

    code = "NOT_CONNECTED"


class NoResponders(TransportError):
    """No worker listens on the subject (is the tally running?)."""

    code = "NO_RESPONDERS"


class RequestTimeout(TransportError):
    """No reply within the timeout."""

    code = "TIMEOUT"


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
        "INTERNAL",
    }
)
