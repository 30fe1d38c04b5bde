"""Keep ``schemas/asyncapi.yaml`` in step with the code.

Three layers, all table-driven from the code or from the document itself:

* inventory: every message class, field, required flag, subject, bucket, error code, domain
  tag, codec limit and size constant of the code is in the document, and nothing else;
* test vectors: the worked examples in the document are recomputed with the code;
* behaviour: for every field the document describes, the limits it states (type, exact byte
  length, min/max length, range, enum, required) are tried just inside and just outside
  against the real ``from_wire`` decoders, so the prose cannot drift from the validation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
import yaml

from bus.membership import MemberRecord
from bus.subjects import DEFAULT_PREFIX, TALLY_QUEUE, Subjects
from schemas import codec, merkle, pool, signing
from schemas.errors import WIRE_ERROR_CODES, CodecError, SchemaViolation, UnsupportedVersion
from schemas.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, verify_signature
from schemas.messages import (
    ALL_MESSAGES,
    DIGEST_BYTES,
    MAX_BALLOT_REQUESTS,
    MAX_COUNTERS,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_REQUEST_ID,
    VERSION,
    Ballot,
    ConsensusResult,
    ErrorReply,
    Health,
    Heartbeat,
    MetricsSnapshot,
    VerdictReason,
    VerificationRequest,
    Vote,
    VoteEntry,
    VoteProof,
)
from schemas.quorum import DEFAULT_THRESHOLD, MIN_POOL, Decision

DOC_PATH = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
MESSAGES: dict[str, Any] = DOC["components"]["messages"]
CHANNELS: dict[str, Any] = DOC["channels"]
OPERATIONS: dict[str, Any] = DOC["operations"]

#: Classes whose wire maps the document must describe field by field.
MAP_CLASSES: tuple[type, ...] = (*ALL_MESSAGES, VoteProof)
#: Fields a sender may leave out (everything else is required).
OPTIONAL: dict[type, set[str]] = {
    VerificationRequest: {"metadata", "chain", "category", "endorsements"},
    ErrorReply: {"request_id"},
}
MSGPACK_TYPES = {"bin", "str", "int", "bool", "float64", "array", "map", "bin|str"}
PARAM = re.compile(r"\{([a-z_]+)\}")


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def schema_for(cls: type) -> dict[str, Any]:
    found = [s for s in SCHEMAS.values() if s.get("x-python-class") == qualname(cls)]
    assert len(found) == 1, f"expected one schema with x-python-class {qualname(cls)}"
    return found[0]


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from walk_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_refs(item)


def render(address: str, **values: str) -> str:
    return PARAM.sub(lambda m: values.get(m.group(1), m.group(0)), address)


# ================================================================ structure


def test_document_structure() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert DOC["defaultContentType"] == "application/msgpack"
    assert DOC["x-wire-version"] == VERSION
    for section in ("channels", "operations", "servers"):
        assert isinstance(DOC[section], dict) and DOC[section], section
    for section in ("schemas", "messages", "parameters"):
        assert isinstance(DOC["components"][section], dict) and DOC["components"][section]
    assert {s["protocol"] for s in DOC["servers"].values()} == {"nats"}


@pytest.mark.parametrize("ref", sorted(set(walk_refs(DOC))))
def test_every_ref_resolves(ref: str) -> None:
    assert resolve(ref) is not None


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_is_well_formed(name: str) -> None:
    op = OPERATIONS[name]
    assert op["action"] in ("send", "receive")
    channel_ref = op["channel"]["$ref"]
    assert channel_ref.startswith("#/channels/")
    for message in op.get("messages", []):  # a subset of the channel's messages (3.0 rule)
        assert message["$ref"].startswith(channel_ref + "/messages/"), message
    reply = op.get("reply")
    if reply:
        reply_ref = reply["channel"]["$ref"]
        for message in reply.get("messages", []):
            assert message["$ref"].startswith(reply_ref + "/messages/"), message


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_is_msgpack(name: str) -> None:
    message = MESSAGES[name]
    assert message["contentType"] == "application/msgpack"
    assert "payload" in message


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_names_an_existing_python_class(name: str) -> None:
    path = SCHEMAS[name]["x-python-class"]
    module, _, attr = path.rpartition(".")
    assert inspect.isclass(getattr(importlib.import_module(module), attr)), path


# ================================================================ fields


@pytest.mark.parametrize("cls", MAP_CLASSES, ids=lambda c: c.__name__)
def test_properties_are_exactly_the_fields(cls: type) -> None:
    schema = schema_for(cls)
    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(cls.FIELDS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", MAP_CLASSES, ids=lambda c: c.__name__)
def test_required_fields(cls: type) -> None:
    required = schema_for(cls)["required"]
    assert len(required) == len(set(required))
    assert set(required) == set(cls.FIELDS) - OPTIONAL.get(cls, set())  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_type_and_version_constants(cls: type) -> None:
    props = schema_for(cls)["properties"]
    assert props["type"]["const"] == cls.TYPE  # type: ignore[attr-defined]
    assert props["v"]["const"] == VERSION


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_message_codec_limits(cls: type) -> None:
    ref = f"#/components/schemas/{next(k for k, v in SCHEMAS.items() if v is schema_for(cls))}"
    messages = [m for m in MESSAGES.values() if m["payload"].get("$ref") == ref]
    assert messages, f"no component message carries {ref}"
    for message in messages:
        limits = DOC["x-codec-limits"][message["x-codec-limits"]]
        assert limits == dataclasses.asdict(cls.LIMITS)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "limits"), [("request", codec.REQUEST_LIMITS), ("ballot", codec.BALLOT_LIMITS)]
)
def test_codec_limits(name: str, limits: codec.Limits) -> None:
    assert DOC["x-codec-limits"][name] == dataclasses.asdict(limits)


@pytest.mark.parametrize(
    ("schema", "field"),
    [(name, field) for name, schema in SCHEMAS.items() for field in schema.get("properties", {})],
)
def test_every_property_has_a_msgpack_type(schema: str, field: str) -> None:
    prop = SCHEMAS[schema]["properties"][field]
    assert prop.get("x-msgpack") in MSGPACK_TYPES
    assert prop.get("description") or field in ("type", "v") or "const" in prop


def test_vote_entry_is_a_four_element_array() -> None:
    schema = schema_for(VoteEntry)
    assert schema["type"] == "array" and schema["minItems"] == schema["maxItems"] == 4
    assert schema["x-fields"] == [f.name for f in dataclasses.fields(VoteEntry)]
    assert [i["x-msgpack"] for i in schema["items"]] == ["str", "bin", "bool", "str"]
    sample = VoteEntry("r", bytes(DIGEST_BYTES), True, "OK")
    assert sample.to_wire() == [getattr(sample, f) for f in schema["x-fields"]]


def test_member_record_matches_its_encoding() -> None:
    wire = msgpack.unpackb(MemberRecord("v1", bytes(PUBLIC_KEY_BYTES), "active", 5).encode())
    schema = schema_for(MemberRecord)
    assert set(schema["properties"]) == set(wire)
    assert set(schema["required"]) == set(wire)
    assert schema["properties"]["type"]["const"] == wire["type"]


@pytest.mark.parametrize(
    ("schema", "path", "key", "expected"),
    [
        ("VerificationRequest", "request_id", "maxLength", MAX_REQUEST_ID),
        ("VerificationRequest", "message", "x-max-bytes", MAX_MESSAGE_BYTES),
        ("VerificationRequest", "signature", "x-bytes", SIGNATURE_BYTES),
        ("VerificationRequest", "public_key", "x-bytes", PUBLIC_KEY_BYTES),
        ("VerificationRequest", "metadata", "maxProperties", MAX_METADATA_ENTRIES),
        ("Ballot", "requests", "maxItems", MAX_BALLOT_REQUESTS),
        ("Vote", "entries", "maxItems", MAX_BALLOT_REQUESTS),
        ("Vote", "verifier_key", "x-bytes", PUBLIC_KEY_BYTES),
        ("Vote", "sig", "x-bytes", SIGNATURE_BYTES),
        ("VoteProof", "count", "maximum", MAX_BALLOT_REQUESTS),
        ("VoteProof", "sig", "x-bytes", SIGNATURE_BYTES),
        ("ConsensusResult", "request_digest", "x-bytes", DIGEST_BYTES),
        ("ConsensusResult", "tally_key", "x-bytes", PUBLIC_KEY_BYTES),
        ("ConsensusResult", "request_id", "maxLength", MAX_REQUEST_ID),
        ("ConsensusResult", "decision", "enum", [d.value for d in Decision]),
        ("Heartbeat", "health", "enum", [h.value for h in Health]),
        ("MetricsSnapshot", "health", "enum", [h.value for h in Health]),
        ("MetricsSnapshot", "counters", "maxProperties", MAX_COUNTERS),
    ],
)
def test_constants(schema: str, path: str, key: str, expected: Any) -> None:
    assert SCHEMAS[schema]["properties"][path][key] == expected


def test_path_hash_size_and_verdict_reasons() -> None:
    assert SCHEMAS["VoteProof"]["properties"]["path"]["items"]["x-bytes"] == merkle.HASH_BYTES
    reasons = [r.value for r in VerdictReason]
    assert SCHEMAS["VoteProof"]["properties"]["reason"]["x-known-values"] == reasons
    assert schema_for(VoteEntry)["items"][3]["x-known-values"] == reasons


def test_verdict_state_refusal_codes_are_documented() -> None:
    from schemas.errors import ChainInvalid
    from schemas.keys import REFUSAL_CODES

    for doc in (SCHEMAS["VoteProof"]["properties"]["reason"], schema_for(VoteEntry)["items"][3]):
        codes = doc["x-refusal-codes"]
        assert set(codes["key"]) == set(REFUSAL_CODES)
        assert set(codes["chain"]) == set(ChainInvalid.REASONS)
        assert set(codes["policy"]) == {
            "POLICY_MISSING",
            "POLICY_NOT_MET",
            "POLICY_GOVERNANCE_CATEGORY",
        }


def test_quorum_constants() -> None:
    quorum = DOC["x-signing"]["quorum"]
    assert quorum["min_pool"] == MIN_POOL
    assert Fraction(quorum["default_threshold"]) == DEFAULT_THRESHOLD


# ================================================================ errors and signing


def test_error_codes() -> None:
    code = SCHEMAS["ErrorReply"]["properties"]["code"]
    assert set(code["x-error-codes"]) == WIRE_ERROR_CODES
    assert all(text.strip() for text in code["x-error-codes"].values())


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("vote", signing.DOMAIN_VOTE),
        ("certificate", signing.DOMAIN_CERTIFICATE),
        ("ballot", signing.DOMAIN_BALLOT),
        ("member", pool.DOMAIN_MEMBER),
    ],
)
def test_domain_tags(name: str, tag: bytes) -> None:
    domain = DOC["x-signing"]["domains"][name]
    assert bytes.fromhex(domain["hex"]) == tag
    assert domain["text"].replace("\\0", "\0").encode() == tag
    module, _, attr = domain["python"].rpartition(".")
    assert getattr(importlib.import_module(module), attr) == tag


# ================================================================ subjects and buckets


def _subjects() -> dict[str, str]:
    """Every name Subjects produces, with {param} placeholders for its arguments."""
    subjects = Subjects(DEFAULT_PREFIX)
    out: dict[str, str] = {}
    for name, member in inspect.getmembers(Subjects):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            out[name] = getattr(subjects, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            out[name] = getattr(subjects, name)(*(f"{{{p}}}" for p in params))
    return out


SUBJECTS = _subjects()
ADDRESSES = {
    name: render(ch["address"], prefix=DEFAULT_PREFIX)
    for name, ch in CHANNELS.items()
    if ch.get("address")
}
BUCKETS = {b["name"].replace("{prefix}", DEFAULT_PREFIX) for b in DOC["x-kv-buckets"].values()}


def _is_store(name: str) -> bool:
    return name.endswith(("_bucket", "_stream"))


STREAMS = {s["name"].replace("{prefix}", DEFAULT_PREFIX): s for s in DOC["x-streams"].values()}


@pytest.mark.parametrize(
    "name", sorted(n for n, s in SUBJECTS.items() if not _is_store(n) and ">" not in s)
)
def test_subject_is_a_channel(name: str) -> None:
    assert SUBJECTS[name] in ADDRESSES.values()


@pytest.mark.parametrize("name", sorted(n for n, s in SUBJECTS.items() if ">" in s))
def test_wildcard_covers_channels(name: str) -> None:
    stem = SUBJECTS[name].removesuffix(">")
    assert any(address.startswith(stem) for address in ADDRESSES.values())


@pytest.mark.parametrize("name", sorted(n for n in SUBJECTS if n.endswith("_bucket")))
def test_bucket_is_documented(name: str) -> None:
    assert SUBJECTS[name] in BUCKETS


@pytest.mark.parametrize("name", sorted(n for n in SUBJECTS if n.endswith("_stream")))
def test_stream_is_documented_with_its_subjects(name: str) -> None:
    stream = STREAMS[SUBJECTS[name]]
    covered = [s.replace("{prefix}", DEFAULT_PREFIX) for s in stream["subjects"]]
    assert covered, name
    assert set(covered) <= {v for v in SUBJECTS.values() if ">" in v}


@pytest.mark.parametrize("channel", sorted(ADDRESSES))
def test_channel_is_a_subject_with_parameters(channel: str) -> None:
    assert ADDRESSES[channel] in SUBJECTS.values()
    spec = CHANNELS[channel]
    names = PARAM.findall(spec["address"])
    assert set(spec.get("parameters", {})) == set(names)
    for name in names:
        assert resolve(spec["parameters"][name]["$ref"]) is not None


def test_prefix_parameter_default() -> None:
    assert DOC["components"]["parameters"]["prefix"]["default"] == DEFAULT_PREFIX


def test_bucket_count() -> None:
    assert len(BUCKETS) == len([n for n in SUBJECTS if n.endswith("_bucket")])


def _channel_of(subject: str) -> str:
    return next(name for name, address in ADDRESSES.items() if address == subject)


def test_request_is_received_in_the_tally_queue_and_answered() -> None:
    channel = _channel_of(Subjects(DEFAULT_PREFIX).request)
    ops = [op for op in OPERATIONS.values() if op["channel"]["$ref"] == f"#/channels/{channel}"]
    assert len(ops) == 1
    op = ops[0]
    assert op["action"] == "receive"
    assert op["bindings"]["nats"]["queue"] == TALLY_QUEUE
    payloads = {
        resolve(resolve(m["$ref"])["$ref"])["payload"]["$ref"] for m in op["reply"]["messages"]
    }
    assert payloads == {"#/components/schemas/ConsensusResult", "#/components/schemas/ErrorReply"}


# ================================================================ test vectors

VECTORS = DOC["x-test-vectors"]


def test_request_vector() -> None:
    vec = VECTORS["request"]
    key = nacl.signing.SigningKey(bytes.fromhex(vec["seed_hex"]))
    message = bytes.fromhex(vec["message_hex"])
    assert message == vec["message_text"].encode()
    assert bytes(key.verify_key).hex() == vec["public_key_hex"]
    assert key.sign(message).signature.hex() == vec["signature_hex"]
    raw = bytes.fromhex(vec["msgpack_hex"])
    request = VerificationRequest.decode(raw)
    assert request.encode() == raw
    assert (request.message, request.signature.hex(), request.public_key.hex()) == (
        message,
        vec["signature_hex"],
        vec["public_key_hex"],
    )
    assert verify_signature(request.public_key, request.message, request.signature)
    assert signing.request_digest(raw).hex() == vec["digest_hex"]
    assert MESSAGES["VerificationRequest"]["x-example-hex"] == vec["msgpack_hex"]


def test_entry_and_vote_signing_vectors() -> None:
    digest = bytes.fromhex(VECTORS["request"]["digest_hex"])
    entry = signing.entry_bytes("req-0001", digest, True, "OK")
    assert entry.hex() == VECTORS["entry"]["entry_bytes_hex"]
    assert merkle.leaf_hash(entry).hex() == VECTORS["entry"]["leaf_hex"]
    vec = VECTORS["vote_signing"]
    body = signing.vote_signing_bytes(
        network=vec["network"],
        ballot_id=vec["ballot_id"],
        epoch=vec["epoch"],
        tally_id=vec["tally_id"],
        verifier_key=bytes.fromhex(vec["verifier_key_hex"]),
        ts_ms=vec["ts_ms"],
        count=vec["count"],
        root=bytes.fromhex(vec["root_hex"]),
        state_rev=vec["state_rev"],
    )
    assert body.hex() == vec["signing_bytes_hex"]
    assert merkle.root([merkle.leaf_hash(entry)]).hex() == vec["root_hex"]


def test_merkle_vector() -> None:
    vec = VECTORS["merkle_three_leaves"]
    leaves = [merkle.leaf_hash(x) for x in (b"a", b"b", b"c")]
    assert [leaf.hex() for leaf in leaves] == vec["leaves_hex"]
    tree = merkle.levels(leaves)
    assert tree[-1][0].hex() == vec["root_hex"]
    for index in (0, 2):
        path = [bytes.fromhex(h) for h in vec[f"path_index_{index}_hex"]]
        assert merkle.proof(tree, index) == path
        assert merkle.root_from_proof(leaves[index], index, 3, path) == tree[-1][0]


# ================================================================ behaviour

KEY = bytes(range(PUBLIC_KEY_BYTES))
SIG = bytes(SIGNATURE_BYTES)
DIG = bytes(DIGEST_BYTES)
PROOF = VoteProof(
    verifier_key=KEY, ts_ms=1, count=2, index=0, valid=True, reason="OK", path=(DIG,), sig=SIG
)
SAMPLES: dict[type, Any] = {
    VerificationRequest: VerificationRequest(
        "req-1",
        b"pay",
        SIG,
        KEY,
        {"k": "v"},
        chain=(b"cert",),
        category="travel",
        endorsements=((KEY, SIG),),
    ),
    Ballot: Ballot("b1", 3, "t1", 10, (b"raw",), state_rev=7, issued_ms=5, tally_key=KEY, sig=SIG),
    Vote: Vote("b1", 3, "t1", KEY, 5, (VoteEntry("req-1", DIG, True, "OK"),), SIG, state_rev=7),
    VoteProof: PROOF,
    ConsensusResult: ConsensusResult(
        request_id="req-1",
        request_digest=DIG,
        decision="VALID",
        votes_for=1,
        votes_against=0,
        total_votes=1,
        n=4,
        q=3,
        f=1,
        threshold="2/3",
        epoch=3,
        ballot_id="b1",
        votes=(PROOF,),
        tally_id="t1",
        tally_key=KEY,
        decided_at_ms=9,
        latency_us=1500,
        sig=SIG,
        state_rev=7,
    ),
    Heartbeat: Heartbeat("verifier", "v1", "abc", 1, 2, 1.0, "Healthy", 3, "host"),
    MetricsSnapshot: MetricsSnapshot(
        "tally", "t1", "abc", 2, 3, 2, 1, 1.5, 2.5, "Degraded", {"decision_VALID": 2}
    ),
    ErrorReply: ErrorReply("OVERLOADED", "busy", "req-1"),
}
INT_MAX = 2**63 - 1
DELETE = object()

#: Cases where the code is more lenient than the contract; see the report of the bug.
KNOWN_BUGS: dict[str, str] = {}  # cases expected to fail (strict xfail) until fixed


@dataclasses.dataclass(frozen=True)
class Case:
    cls: type
    field: str
    label: str
    make: Callable[[Any], Any]  # base value of the field -> new value (or DELETE)
    error: type[Exception] | None  # None: must be accepted
    via_codec: bool = False  # run through cls.decode(encode(...)), not from_wire

    @property
    def id(self) -> str:
        return f"{self.cls.__name__}.{self.field}:{self.label}"


def _const(value: Any) -> Callable[[Any], Any]:
    return lambda _base: value


def _wrong_types(kind: str) -> dict[str, Any]:
    return {
        "bin": {"str": "x" * 32, "int": 1},
        "str": {"bin": b"x", "int": 1},
        "int": {"bool": True, "str": "1", "float": 1.0},
        "bool": {"int": 1, "str": "true", "nil": None},
        "float64": {"str": "1.0", "bool": True, "nan": float("nan"), "inf": float("inf")},
        "array": {"map": {}, "str": "x"},
        "map": {"array": [], "str": "x"},
        "bin|str": {"int": 1, "array": []},
    }[kind]


def _string_cases(
    cls: type, name: str, prop: dict[str, Any], err: type[Exception]
) -> Iterator[Case]:
    if "enum" in prop:
        yield Case(cls, name, "enum-other", _const("NOT_A_MEMBER"), err)
        for value in prop["enum"]:
            yield Case(cls, name, f"enum-{value}", _const(value), None)
        return
    if "const" in prop:
        yield Case(cls, name, "const-other", _const("not-" + str(prop["const"])), err)
        return
    if "maxLength" in prop:
        hi = prop["maxLength"]
        yield Case(cls, name, "max-length", _const("a" * hi), None)
        yield Case(cls, name, "max-length+1", _const("a" * (hi + 1)), err)
    lo = prop.get("minLength")
    if lo is not None:
        yield Case(cls, name, "min-length", _const("a" * lo), None)
        if lo > 0:
            yield Case(cls, name, "min-length-1", _const("a" * (lo - 1)), err)
    if prop.get("x-printable"):
        yield Case(cls, name, "control-char", _const("a\nb"), err)


def _pattern_cases(cls: type, name: str, prop: dict[str, Any]) -> Iterator[Case]:
    """A documented pattern: the sample matches it, a value that does not is refused."""
    assert re.fullmatch(prop["pattern"].strip("^$"), SAMPLES[cls].to_wire()[name])
    yield Case(cls, name, "pattern-other", _const("not matching"), SchemaViolation)


def _map_cases(cls: type, name: str, prop: dict[str, Any]) -> Iterator[Case]:
    hi = prop["maxProperties"]
    yield Case(cls, name, "max-entries", _const({f"k{i}": i for i in range(hi)}), None)
    yield Case(
        cls, name, "max-entries+1", _const({f"k{i}": i for i in range(hi + 1)}), SchemaViolation
    )
    key_len = prop["propertyNames"]["maxLength"]
    yield Case(cls, name, "key-max-length", _const({"k" * key_len: 1}), None)
    yield Case(cls, name, "key-max-length+1", _const({"k" * (key_len + 1): 1}), SchemaViolation)
    yield Case(cls, name, "value-array", _const({"k": [1]}), SchemaViolation)
    allowed = prop["additionalProperties"]["type"]
    allowed = allowed if isinstance(allowed, list) else [allowed]
    samples = {"string": "s", "integer": 7, "number": 1.5, "boolean": True, "null": None}
    for json_type in allowed:
        yield Case(cls, name, f"value-{json_type}", _const({"k": samples[json_type]}), None)
    if allowed == ["integer"]:
        yield Case(cls, name, "value-not-int", _const({"k": "many"}), SchemaViolation)


def _array_cases(cls: type, name: str, prop: dict[str, Any]) -> Iterator[Case]:
    hi, lo = prop["maxItems"], prop["minItems"]
    yield Case(cls, name, "max-items", lambda base: [base[0]] * hi, None)
    yield Case(cls, name, "max-items+1", lambda base: [base[0]] * (hi + 1), SchemaViolation)
    yield Case(cls, name, "min-items", lambda base: [base[0]] * lo, None)
    if lo > 0:
        yield Case(cls, name, "min-items-1", lambda base: [base[0]] * (lo - 1), SchemaViolation)
    items = prop["items"]
    if items.get("x-msgpack") == "bin":
        yield Case(cls, name, "item-str", _const(["x" * 32]), SchemaViolation)
        if "x-bytes" in items:
            size = items["x-bytes"]
            yield Case(cls, name, "item-short", _const([bytes(size - 1)]), SchemaViolation)
            yield Case(cls, name, "item-long", _const([bytes(size + 1)]), SchemaViolation)
        if "x-max-bytes" in items:  # a codec limit: checked by decode(), not from_wire
            size = items["x-max-bytes"]
            yield Case(cls, name, "item-max-bytes", _const([bytes(size)]), None, True)
            yield Case(cls, name, "item-max-bytes+1", _const([bytes(size + 1)]), CodecError, True)


def _cases_for(cls: type) -> Iterator[Case]:
    schema = schema_for(cls)
    required = set(schema["required"])
    if schema.get("additionalProperties") is False:  # signed messages are strict
        yield Case(cls, "x_unknown_key", "rejected", _const("anything"), SchemaViolation)
    else:
        yield Case(cls, "x_unknown_key", "ignored", _const("anything"), None)
    for name, prop in schema["properties"].items():
        kind = prop["x-msgpack"]
        err: type[Exception] = UnsupportedVersion if name == "v" else SchemaViolation
        must = name in required and not prop.get("x-receiver-tolerates-missing")
        yield Case(cls, name, "missing", _const(DELETE), SchemaViolation if must else None)
        if name in required or kind == "map":
            for label, value in _wrong_types(kind).items():
                if name == "v" and label in ("bool", "float") and cls is not VerificationRequest:
                    continue  # one shared _header; reported once, for the client-facing message
                yield Case(cls, name, f"wrong-type-{label}", _const(value), err)
        else:
            yield Case(cls, name, "wrong-type", _const(1), SchemaViolation)
        if kind in ("str", "bin|str") and name in required:
            yield from _string_cases(cls, name, prop, err)
        if kind == "str" and "pattern" in prop:
            yield from _pattern_cases(cls, name, prop)
        if kind == "int":
            if "const" in prop:
                yield Case(cls, name, "const-other", _const(prop["const"] + 1), err)
            else:
                lo, hi = prop["minimum"], prop["maximum"]
                yield Case(cls, name, "minimum", _const(lo), None)
                yield Case(cls, name, "minimum-1", _const(lo - 1), err)
                if "x-below-field" in prop:  # e.g. VoteProof.index < count
                    other = prop["x-below-field"]
                    yield Case(
                        cls,
                        name,
                        "below-other",
                        lambda _, c=cls, o=other: SAMPLES[c].to_wire()[o] - 1,
                        None,
                    )
                    yield Case(
                        cls,
                        name,
                        "equal-other",
                        lambda _, c=cls, o=other: SAMPLES[c].to_wire()[o],
                        err,
                    )
                else:
                    yield Case(cls, name, "maximum", _const(hi), None)
                yield Case(cls, name, "maximum+1", _const(hi + 1), err)
        if kind == "float64":
            yield Case(cls, name, "int-accepted", _const(2), None)
        if kind == "bool":
            yield Case(cls, name, "other-bool", lambda base: not base, None)
        if kind == "bin" and "x-bytes" in prop:
            size = prop["x-bytes"]
            yield Case(cls, name, "exact-bytes", _const(bytes(size)), None)
            yield Case(cls, name, "bytes-1", _const(bytes(size - 1)), err)
            yield Case(cls, name, "bytes+1", _const(bytes(size + 1)), err)
        if kind == "bin|str":
            size = prop["x-max-bytes"]
            yield Case(cls, name, "max-bytes", _const(bytes(size)), None)
            yield Case(cls, name, "max-bytes+1", _const(bytes(size + 1)), err)
            yield Case(cls, name, "empty", _const(b""), None)
            yield Case(cls, name, "str-max-utf8", _const("é" * (size // 2)), None)
            yield Case(cls, name, "str-utf8-over", _const("é" * (size // 2 + 1)), err)
        if kind == "array":
            yield from _array_cases(cls, name, prop)
        if kind == "map":
            yield from _map_cases(cls, name, prop)


CASES = [case for cls in MAP_CLASSES for case in _cases_for(cls)]


def _param(case: Case) -> Any:
    marks = []
    if case.id in KNOWN_BUGS:
        marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[case.id], strict=True))
    return pytest.param(case, id=case.id, marks=marks)


def test_every_known_bug_is_a_case() -> None:
    assert set(KNOWN_BUGS) <= {case.id for case in CASES}


@pytest.mark.parametrize("cls", MAP_CLASSES, ids=lambda c: c.__name__)
def test_sample_round_trips(cls: type) -> None:
    sample = SAMPLES[cls]
    wire = sample.to_wire()
    props = schema_for(cls)["properties"]
    assert set(schema_for(cls)["required"]) <= set(wire) <= set(props)
    assert cls.from_wire(copy.deepcopy(wire)) == sample  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_documented_limits_hold(case: Case) -> None:
    obj = SAMPLES[case.cls].to_wire()
    value = case.make(copy.deepcopy(obj.get(case.field)))
    if value is DELETE:
        obj.pop(case.field, None)
    else:
        obj[case.field] = value

    def run() -> Any:
        if case.via_codec:
            return case.cls.decode(msgpack.packb(obj, use_bin_type=True))  # type: ignore[attr-defined]
        return case.cls.from_wire(obj)  # type: ignore[attr-defined]

    if case.error is None:
        run()
    else:
        with pytest.raises(case.error):
            run()


def _entry_cases() -> Iterator[Any]:
    schema = schema_for(VoteEntry)
    base = VoteEntry("req-1", DIG, False, "BAD_SIGNATURE").to_wire()
    wrong = {"str": b"x", "bin": "x" * 32, "bool": 1}
    for i, item in enumerate(schema["items"]):
        name = schema["x-fields"][i]

        def put(value: Any, i: int = i) -> list[Any]:
            return [*base[:i], value, *base[i + 1 :]]

        yield pytest.param(put(wrong[item["x-msgpack"]]), False, id=f"{name}-wrong-type")
        if "maxLength" in item:
            yield pytest.param(put("a" * item["maxLength"]), True, id=f"{name}-max")
            yield pytest.param(put("a" * (item["maxLength"] + 1)), False, id=f"{name}-max+1")
            yield pytest.param(put("a" * item["minLength"]), True, id=f"{name}-min")
        if "x-bytes" in item:
            yield pytest.param(put(bytes(item["x-bytes"] - 1)), False, id=f"{name}-short")
            yield pytest.param(put(bytes(item["x-bytes"] + 1)), False, id=f"{name}-long")
    yield pytest.param(base, True, id="base")
    yield pytest.param(base[:3], False, id="three-items")
    yield pytest.param([*base, 1], False, id="five-items")
    yield pytest.param(dict(zip(schema["x-fields"], base, strict=True)), False, id="a-map")


@pytest.mark.parametrize(("item", "ok"), list(_entry_cases()))
def test_vote_entry_limits(item: Any, ok: bool) -> None:
    if ok:
        assert VoteEntry.from_wire(item).to_wire() == item
    else:
        with pytest.raises(SchemaViolation):
            VoteEntry.from_wire(item)


def test_request_example_is_what_a_client_sends() -> None:
    raw = bytes.fromhex(MESSAGES["VerificationRequest"]["x-example-hex"])
    obj = msgpack.unpackb(raw, raw=False)
    assert list(obj) == ["type", "v", "request_id", "message", "signature", "public_key"]
    assert hashlib.sha256(raw).hexdigest() == VECTORS["request"]["digest_hex"]
