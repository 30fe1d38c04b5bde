"""Hostile input against every decoder: only the project's own errors may escape.

A decoder that leaks a KeyError, TypeError, msgpack exception or RecursionError
crashes whatever called it with a bare except for CodecError: a worker's
intake, a BucketMirror's apply loop, a client's reply path. So for every
decoder of the wire contract and of the stored records (tables below; a test
checks that every ``WireMessage`` class is in them), arbitrary bytes, arbitrary
MessagePack values and mutations of valid encodings must either decode or raise
an ``AgenticPaymentsError`` (schemas/errors.py). The verdict function of a
ballot's raw requests (``judge``) must not raise at all: it answers
MALFORMED_REQUEST. And what a decoder accepts must survive the checks run on it
next (certificate and vote verification, ballot signatures) with the same rule.

Examples per test: the ``fuzz-ci`` profile (tests/fuzz/strategies.py); run
``HYPOTHESIS_PROFILE=fuzz-long`` for a long local run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given

import schemas.alerts
import schemas.authority
import schemas.keys
import schemas.recovery
import schemas.trust
from bus.liveness import LivenessRecord
from schemas import authority as authority_schema
from schemas import keys as keys_schema
from schemas import recovery as recovery_schema
from schemas import trust as trust_schema
from schemas.certificate import verify_certificate
from schemas.codec import decode
from schemas.errors import AgenticPaymentsError, CertificateInvalid, CodecError, VoteRejected
from schemas.messages import (
    Ballot,
    ConsensusResult,
    Vote,
    WireMessage,
    decode_reply,
)
from schemas.pool import MemberRecord
from schemas.signing import ballot_signature_ok
from schemas.votes import VoteQuestion, admit_vote
from tests.fuzz import samples
from tests.fuzz.strategies import FUZZ, hostile, hostile_bytes
from workers.consensus import verdict_state
from workers.consensus.judge import judge

pytestmark = pytest.mark.fuzz


@dataclass(frozen=True)
class Decoder:
    """One decoder, valid inputs to mutate, and what it may raise."""

    decode: Callable[[bytes], object]
    samples: list[bytes]
    allowed: tuple[type[BaseException], ...] = (AgenticPaymentsError,)


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def _name(cls: type) -> str:
    return f"{cls.__module__.removeprefix('schemas.')}.{cls.__name__}"


def _verify_vector_certificate(vec: samples.Vector, data: bytes) -> None:
    """Decode a certificate and check it offline against the vector's pool."""
    verify_certificate(
        ConsensusResult.decode(data), vec.pool_keys, network=vec.network, threshold=None
    )


def _admit_vector_vote(vec: samples.Vector, data: bytes) -> None:
    vote = Vote.decode(data)
    admit_vote(vote, VoteQuestion.of(vote, network=vec.network), vec.pool_keys)


def _check_ballot(vec: samples.Vector, data: bytes) -> None:
    ballot_signature_ok(Ballot.decode(data), network=vec.network)


def _judge(data: bytes) -> None:
    judge(data)


def _reply_decoder(classes: tuple[type[WireMessage], ...]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        return decode_reply(data, *classes)  # type: ignore[call-overload]

    return run


def _liveness(data: bytes) -> None:
    LivenessRecord.parse(data)


def build() -> dict[str, Decoder]:
    vec = samples.vector()
    messages = samples.messages()
    table = {_name(cls): Decoder(cls.decode, items) for cls, items in messages.items()}
    requests = messages[schemas.messages.VerificationRequest]
    for op, sample in samples.key_requests().items():
        table[f"keys.KeyRequest.decode_for[{op}]"] = Decoder(
            functools.partial(keys_schema.KeyRequest.decode_for, op), [sample]
        )
    table["keys.KeyRecord"] = Decoder(keys_schema.KeyRecord.decode, [samples.key_record().encode()])
    table["pool.MemberRecord"] = Decoder(MemberRecord.decode, samples.member_records())
    replies = {
        "consensus": (),
        "keys": (
            keys_schema.KeyInfo,
            keys_schema.KeyList,
            keys_schema.KeySignature,
            keys_schema.KeySweep,
        ),
        "trust": (trust_schema.TrustAck, trust_schema.ChainReply, trust_schema.TrustListing),
        "authority": (
            authority_schema.AuthorityRecord,
            authority_schema.QuorumPolicy,
            authority_schema.AuthorityList,
            authority_schema.PolicyVerdict,
        ),
        "recovery": (recovery_schema.HistoryReply, recovery_schema.RestartReply),
    }
    for service, classes in replies.items():
        answers = [b for cls in classes or (ConsensusResult,) for b in messages[cls]]
        answers += messages[schemas.messages.ErrorReply]
        table[f"decode_reply[{service}]"] = Decoder(_reply_decoder(classes), answers)
    for key, value in samples.state_records():
        area = key.split(".", 1)[0]
        table[f"verdict_state.decode_state_record[{area}]"] = Decoder(
            functools.partial(verdict_state.decode_state_record, key), [value]
        )
    owners = {
        "key": keys_schema,
        "anchor": trust_schema,
        "cert": trust_schema,
        "authority": authority_schema,
        "policy": authority_schema,
    }
    for key, value in samples.state_records():  # each schema module's own decoder too
        area = key.split(".", 1)[0]
        module = owners[area]
        name = f"{module.__name__.removeprefix('schemas.')}.decode_state_record[{area}]"
        table[name] = Decoder(functools.partial(module.decode_state_record, key), [value])
    # a ballot's raw requests: the verdict is MALFORMED_REQUEST, never an exception
    table["judge"] = Decoder(_judge, requests + list(vec.requests), allowed=())
    # what a decoder accepts goes on to these checks, which must refuse it alike
    table["verify_certificate"] = Decoder(
        functools.partial(_verify_vector_certificate, vec), [vec.certificate]
    )
    table["admit_vote"] = Decoder(functools.partial(_admit_vector_vote, vec), list(vec.votes))
    table["ballot_signature_ok"] = Decoder(functools.partial(_check_ballot, vec), [vec.ballot])
    # the local liveness file (bus/liveness.py): its contract is ValueError
    table["liveness.LivenessRecord.parse"] = Decoder(
        _liveness,
        [LivenessRecord("verifier", "v1", 42, 1.5, 3.0).encode()],
        allowed=(ValueError,),
    )
    return table


DECODERS = build()


def check(name: str, data: bytes) -> None:
    """Run one decoder; an exception outside its ``allowed`` fails the test (and
    Hypothesis shrinks the input to the smallest one that leaks it)."""
    decoder = DECODERS[name]
    with contextlib.suppress(*decoder.allowed):
        decoder.decode(data)


def test_every_wire_message_has_a_decoder_under_fuzz() -> None:
    """A new message class must get samples here, or its decoder goes unfuzzed."""
    for module in (
        schemas.alerts,
        schemas.authority,
        schemas.keys,
        schemas.recovery,
        schemas.trust,
    ):
        assert module.__name__  # imported: its classes are WireMessage subclasses now
    missing = {_name(c) for c in _all_subclasses(WireMessage)} - set(DECODERS)
    assert not missing, f"no fuzz samples for {sorted(missing)} (tests/fuzz/samples.py)"


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_samples_are_valid(name: str) -> None:
    """The mutations start from inputs the decoder accepts (else they fuzz nothing)."""
    decoder = DECODERS[name]
    for data in decoder.samples:
        decoder.decode(data)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_hostile_input_raises_only_project_errors(name: str) -> None:
    @FUZZ
    @given(data=hostile(DECODERS[name].samples))
    def run(data: bytes) -> None:
        check(name, data)

    run()


@FUZZ
@given(data=hostile_bytes)
def test_codec_raises_only_codec_errors(data: bytes) -> None:
    """The one MessagePack boundary: every failure is a CodecError."""
    with contextlib.suppress(CodecError):
        decode(data)


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("verify_certificate", CertificateInvalid),
        ("admit_vote", VoteRejected),
    ],
)
def test_checks_refuse_with_their_own_error(name: str, allowed: type[AgenticPaymentsError]) -> None:
    """A decoded-but-wrong certificate is CertificateInvalid, a vote VoteRejected (or a
    CodecError before that), never another project error a caller does not expect."""

    @FUZZ
    @given(data=hostile(DECODERS[name].samples))
    def run(data: bytes) -> None:
        with contextlib.suppress(CodecError, allowed):
            DECODERS[name].decode(data)

    run()
