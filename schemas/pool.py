"""Member records and the pure rules that turn a membership bucket into a pool.

A record is a *claim by its writer*, and the pool believes a claim only as far as
the writer's NATS grants (bus/permissions.py) and a signature back it:

  ``<id>``              written by verifier ``<id>`` itself: signed by the key it
                        names (proof of possession), names its own KV key, role
                        ``verifier``. Any status other than active just means
                        "not a member": a record can only ever take its own writer out.
  ``tally.<id>``        written by tally ``<id>`` itself: the same, role ``tally``.
  ``admitted.<id>``     written only by the admin role (no other role's grants
                        cover ``admitted.>``): admits verifier seat ``<id>`` with a
                        key the consortium was handed out of band, so it carries
                        no signature (the admin does not hold that private key).
  ``quarantined.<id>``  written by the anomaly role (or admin): takes seat ``<id>``
                        out, but only while the seat still holds the key it names,
                        and at most f = floor((seats - 1) / 3) of them count
                        (earliest revisions first); beyond that only an operator
                        acts (``members remove``).

Every record names the network (the subject prefix) it belongs to, so a record
copied from another deployment sharing keys does not count. One seat per public
key: among valid records with the same key, the lowest revision keeps the seat
(a later claim to an existing member's key cannot displace it).

Pure: no nats, asyncio or bus imports (import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from schemas.codec import decode, encode
from schemas.errors import SchemaViolation
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, AgentIdentity, verify_signature
from schemas.quorum import fault_tolerance

#: Domain tag of member-record signatures (never valid for a vote or certificate).
DOMAIN_MEMBER = b"agentic-payments/member/v2\x00"
RECORD_VERSION = 2

ACTIVE = "active"
#: Status of a quarantine record (and of a quarantined seat in a PoolView).
QUARANTINED = "quarantined"

ROLE_VERIFIER = "verifier"
ROLE_TALLY = "tally"
ROLES = (ROLE_VERIFIER, ROLE_TALLY)

#: ``tally.<id>``: the key tally ``<id>`` signs ballots and certificates with.
TALLY_PREFIX = "tally."
#: ``quarantined.<id>``: the anomaly role's quarantine of seat ``<id>``.
QUARANTINE_PREFIX = "quarantined."
#: ``admitted.<id>``: the admin role's admission of seat ``<id>`` (no signature).
ADMITTED_PREFIX = "admitted."

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def is_seat_id(value: str) -> bool:
    """A worker id as bus/subjects.check_token allows it (no dots: a verifier's
    own key can then never look like ``tally.x``, ``admitted.x`` or ``quarantined.x``)."""
    return 1 <= len(value) <= 64 and set(value) <= _ID_CHARS


@dataclass(frozen=True)
class MemberRecord:
    """One record of the membership bucket. ``worker_id`` is the KV key the record
    is written under (``v1``, ``tally.t1``, ``admitted.v9``, ``quarantined.v1``)."""

    worker_id: str
    public_key: bytes
    status: str = ACTIVE
    registered_at_ms: int = 0
    role: str = ROLE_VERIFIER
    network: str = ""
    sig: bytes = b""

    def signing_bytes(self) -> bytes:
        return member_signing_bytes(
            network=self.network,
            key=self.worker_id,
            role=self.role,
            public_key=self.public_key,
            status=self.status,
            registered_at_ms=self.registered_at_ms,
        )

    def encode(self) -> bytes:
        return encode(
            {
                "type": "member",
                "v": RECORD_VERSION,
                "network": self.network,
                "worker_id": self.worker_id,
                "role": self.role,
                "public_key": self.public_key,
                "status": self.status,
                "registered_at_ms": self.registered_at_ms,
                "sig": self.sig,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> MemberRecord:
        """Strict: anything malformed is a SchemaViolation (the record is then ignored)."""
        obj = decode(data)
        if not isinstance(obj, dict) or obj.get("type") != "member":
            raise SchemaViolation("not a member record")
        if obj.get("v") != RECORD_VERSION:
            raise SchemaViolation(f"not a version {RECORD_VERSION} member record")
        key = obj.get("public_key")
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise SchemaViolation("member public_key must be 32 bytes")
        strings = {k: obj.get(k) for k in ("network", "worker_id", "role", "status")}
        if not all(isinstance(v, str) for v in strings.values()):
            raise SchemaViolation("member network, worker_id, role and status must be strings")
        at, sig = obj.get("registered_at_ms"), obj.get("sig")
        if not isinstance(at, int) or isinstance(at, bool):
            raise SchemaViolation("member registered_at_ms must be an integer")
        if not isinstance(sig, bytes) or len(sig) not in (0, SIGNATURE_BYTES):
            raise SchemaViolation(f"member sig must be empty or {SIGNATURE_BYTES} bytes")
        return cls(
            worker_id=str(strings["worker_id"]),
            public_key=key,
            status=str(strings["status"]),
            registered_at_ms=at,
            role=str(strings["role"]),
            network=str(strings["network"]),
            sig=sig,
        )


def member_signing_bytes(
    *, network: str, key: str, role: str, public_key: bytes, status: str, registered_at_ms: int
) -> bytes:
    """``DOMAIN_MEMBER || msgpack([2, network, key, role, public_key, status, at_ms])``."""
    return DOMAIN_MEMBER + encode(
        [RECORD_VERSION, network, key, role, public_key, status, registered_at_ms]
    )


def self_record(
    identity: AgentIdentity,
    *,
    network: str,
    key: str,
    role: str = ROLE_VERIFIER,
    status: str = ACTIVE,
    at_ms: int = 0,
) -> MemberRecord:
    """A record written by its own key holder, signed (proof of possession)."""
    unsigned = MemberRecord(key, identity.public_key, status, at_ms, role, network)
    return replace(unsigned, sig=identity.sign(unsigned.signing_bytes()))


def admitted_record(seat: str, public_key: bytes, *, network: str, at_ms: int = 0) -> MemberRecord:
    """The admin's admission of seat ``seat`` (unsigned: its authority is the grant)."""
    return MemberRecord(admitted_key(seat), public_key, ACTIVE, at_ms, ROLE_VERIFIER, network)


def quarantine_record(
    seat: str, public_key: bytes, *, network: str, at_ms: int = 0
) -> MemberRecord:
    """The anomaly role's quarantine of seat ``seat`` holding ``public_key``."""
    return MemberRecord(
        quarantine_key(seat), public_key, QUARANTINED, at_ms, ROLE_VERIFIER, network
    )


def tally_record_key(worker_id: str) -> str:
    return f"{TALLY_PREFIX}{worker_id}"


def quarantine_key(worker_id: str) -> str:
    return f"{QUARANTINE_PREFIX}{worker_id}"


def admitted_key(worker_id: str) -> str:
    return f"{ADMITTED_PREFIX}{worker_id}"


# ---------------------------------------------------------------- pool rules
@dataclass(frozen=True)
class Entry:
    """One current KV entry: its key, its bucket revision, and the decoded record."""

    key: str
    revision: int
    record: MemberRecord


@dataclass(frozen=True)
class Seat:
    """A place in the pool: a verifier (id without prefix) or a tally (``tally.<id>``)."""

    id: str
    public_key: bytes
    role: str
    revision: int


@dataclass(frozen=True)
class Pool:
    """What a bucket's records add up to."""

    verifiers: tuple[Seat, ...]
    tallies: tuple[Seat, ...]
    #: verifier seats out of the pool by an honoured quarantine record
    quarantined: tuple[Seat, ...]
    #: quarantine records that apply but exceed the cap f (an operator must act)
    over_cap: tuple[str, ...]
    #: (KV key, why) of every record that does not count
    rejected: tuple[tuple[str, str], ...]

    @property
    def active(self) -> tuple[Seat, ...]:
        out = {s.id for s in self.quarantined}
        return tuple(s for s in self.verifiers if s.id not in out)


def check_entry(entry: Entry, network: str) -> str | None:
    """Why ``entry`` does not count as what its KV key says, or None if it does."""
    r, key = entry.record, entry.key
    if r.worker_id != key:
        return f"names {r.worker_id!r}, not its key"
    if r.network != network:
        return f"is for network {r.network!r}"
    if key.startswith(QUARANTINE_PREFIX):
        if not is_seat_id(key[len(QUARANTINE_PREFIX) :]) or r.status != QUARANTINED:
            return "is not a quarantine record"
        return None
    if key.startswith(ADMITTED_PREFIX):
        if not is_seat_id(key[len(ADMITTED_PREFIX) :]) or r.role != ROLE_VERIFIER:
            return "is not an admission record"
    elif key.startswith(TALLY_PREFIX):
        if not is_seat_id(key[len(TALLY_PREFIX) :]) or r.role != ROLE_TALLY:
            return "is not a tally record"
        if not verify_signature(r.public_key, r.signing_bytes(), r.sig):
            return "is not signed by the key it names"
    elif is_seat_id(key):
        if r.role != ROLE_VERIFIER:
            return "is not a verifier record"
        if not verify_signature(r.public_key, r.signing_bytes(), r.sig):
            return "is not signed by the key it names"
    else:
        return "has a key no record kind uses"
    if r.status != ACTIVE:
        return f"has status {r.status!r} (not a member)"
    return None


def build_pool(entries: Iterable[Entry], network: str) -> Pool:
    """The pool the current records of a membership bucket add up to (see module doc)."""
    rejected: list[tuple[str, str]] = []
    claims: list[tuple[Seat, bool]] = []  # (seat, written by the admin)
    admissions: list[tuple[Seat, bool]] = []
    quarantines: list[Entry] = []
    for entry in sorted(entries, key=lambda e: e.revision):
        why = check_entry(entry, network)
        if why is not None:
            rejected.append((entry.key, f"record {entry.key!r} {why}"))
        elif entry.key.startswith(QUARANTINE_PREFIX):
            quarantines.append(entry)
        elif entry.key.startswith(TALLY_PREFIX):
            claims.append(
                (Seat(entry.key, entry.record.public_key, ROLE_TALLY, entry.revision), False)
            )
        elif entry.key.startswith(ADMITTED_PREFIX):
            seat_id = entry.key.removeprefix(ADMITTED_PREFIX)
            admissions.append(
                (Seat(seat_id, entry.record.public_key, ROLE_VERIFIER, entry.revision), True)
            )
        else:
            claims.append(
                (Seat(entry.key, entry.record.public_key, ROLE_VERIFIER, entry.revision), False)
            )

    # an admission is the admin's say on a seat id: it beats the id's own record
    # (which then counts only as a confirmation if it names the same key)
    by_id: dict[tuple[str, str], Seat] = {}
    for seat, _ in sorted(admissions + claims, key=lambda c: not c[1]):
        slot = (seat.role, seat.id)
        held = by_id.get(slot)
        if held is None:
            by_id[slot] = seat
        elif held.public_key != seat.public_key:
            why = f"seat {seat.id!r}: own record's key is not the admitted one"
            rejected.append((seat.id, why))
        else:
            by_id[slot] = replace(held, revision=min(held.revision, seat.revision))
    seats: list[Seat] = []
    holders: dict[bytes, Seat] = {}
    for seat in sorted(by_id.values(), key=lambda s: s.revision):
        first = holders.get(seat.public_key)
        if first is not None:  # one seat per key: the first holder keeps it
            rejected.append((seat.id, f"seat {seat.id!r}: key already holds seat {first.id!r}"))
            continue
        holders[seat.public_key] = seat
        seats.append(seat)
    verifiers = tuple(s for s in seats if s.role == ROLE_VERIFIER)
    tallies = tuple(s for s in seats if s.role == ROLE_TALLY)

    cap = fault_tolerance(len(verifiers))
    current = {s.id: s for s in verifiers}
    out: list[Seat] = []
    over: list[str] = []
    for entry in quarantines:  # earliest revisions first
        target = current.get(entry.key.removeprefix(QUARANTINE_PREFIX))
        if target is None or target.public_key != entry.record.public_key:
            rejected.append((entry.key, f"record {entry.key!r} names no current seat's key"))
        elif len(out) < cap:
            out.append(target)
        else:
            over.append(target.id)
    return Pool(
        verifiers=tuple(sorted(verifiers, key=lambda s: s.id)),
        tallies=tuple(sorted(tallies, key=lambda s: s.id)),
        quarantined=tuple(sorted(out, key=lambda s: s.id)),
        over_cap=tuple(over),
        rejected=tuple(rejected),
    )
