"""The authority coordinator against a real nats-server: every operation, governance,
compare-and-set, and bad input (an error code, and the service keeps serving)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest
from nats.aio.client import Client

from bus.authority_client import AuthorityClient
from bus.config import NatsConfig
from bus.runtime import RuntimeConfig
from bus.state import state_bucket
from bus.subjects import Subjects
from schemas.authority import (
    ADMIN_CATEGORY,
    OPERATIONS,
    AuthorityChange,
    AuthorityRecord,
    Endorsement,
    EvaluateRequest,
    ListRequest,
    PolicyChange,
    PolicyGroup,
    PolicyQuery,
    QuorumPolicy,
    message_digest,
    sign_endorsement,
)
from schemas.errors import RemoteError
from schemas.identity import AgentIdentity
from schemas.messages import ErrorReply, decode_reply
from workers.authority.worker import AuthorityWorker

pytestmark = pytest.mark.integration
DIGEST = message_digest(b"pay 12.50 EUR to merchant-42")


def admin_ids() -> dict[str, AgentIdentity]:
    return {n: AgentIdentity.generate() for n in ("root", "high", "med", "low")}


LEVELS = {"root": "Root", "high": "High", "med": "Medium", "low": "Low"}


@contextlib.asynccontextmanager
async def authority(
    nats_config: NatsConfig, tmp_path: Path, worker_id: str = "a1"
) -> AsyncIterator[AuthorityWorker]:
    worker = AuthorityWorker(
        RuntimeConfig(worker_id=worker_id, nats=nats_config, data_dir=tmp_path, heartbeat_s=1)
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def refused(call: object, code: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await call  # type: ignore[misc]
    assert info.value.code == code, info.value
    return info.value


def record(ident: AgentIdentity, name: str, level: str) -> AuthorityRecord:
    return AuthorityRecord(ident.public_key, name, level, True, 1)


def endorse(
    idents: list[AgentIdentity], digest: bytes, category: str = ADMIN_CATEGORY
) -> tuple[Endorsement, ...]:
    return tuple(sign_endorsement(i, category, digest) for i in idents)


ADMIN = QuorumPolicy(ADMIN_CATEGORY, 2, "High", Fraction(1, 2))
ROOT_ADMIN = QuorumPolicy(ADMIN_CATEGORY, 1, "Root", Fraction(1))


async def bootstrap(client: AuthorityClient, ids: dict[str, AgentIdentity]) -> None:
    for name, ident in ids.items():
        await client.change("add", record(ident, name, LEVELS[name]))
    await client.set_policy(ADMIN)  # open only while no policy-admin policy exists


async def test_bootstrap_then_every_change_is_governed(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    ids = admin_ids()
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path):
        payments = QuorumPolicy("payments", 2, "Medium", Fraction(2, 3))
        # before the bootstrap: no policy but policy-admin can be set
        await refused(client.set_policy(payments), "POLICY_MISSING")
        # nobody to endorse yet: a policy-admin policy now would lock everything
        await refused(client.set_policy(ADMIN), "CHANGE_INVALID")
        await bootstrap(client, ids)
        admins = [ids["root"], ids["high"]]

        # afterwards an unendorsed change is refused, whatever it is
        await refused(client.set_policy(payments), "POLICY_NOT_MET")
        await refused(
            client.set_policy(dataclasses.replace(ADMIN, min_authorities=1, serial=2)),
            "POLICY_NOT_MET",
        )
        stranger = AgentIdentity.generate()
        newcomer = record(stranger, "newcomer", "Root")
        await refused(client.change("add", newcomer), "POLICY_NOT_MET")
        # a newcomer cannot endorse itself in, nor can under-level or too few admins
        await refused(
            client.change("add", newcomer, endorse([stranger], newcomer.digest())), "POLICY_NOT_MET"
        )
        await refused(
            client.change("add", newcomer, endorse([ids["root"], ids["med"]], newcomer.digest())),
            "POLICY_NOT_MET",
        )
        # endorsements over another digest do not count
        await refused(client.set_policy(payments, endorse(admins, DIGEST)), "POLICY_NOT_MET")

        stored = await client.set_policy(payments, endorse(admins, payments.digest()))
        assert stored == payments
        assert await client.get_policy("payments") == payments
        # replaying the same endorsed change: serial must move on
        await refused(
            client.set_policy(payments, endorse(admins, payments.digest())), "CHANGE_INVALID"
        )
        v2 = dataclasses.replace(payments, min_authorities=3, serial=2)
        await client.set_policy(v2, endorse(admins, v2.digest()))
        assert (await client.get_policy("payments")).min_authorities == 3

        added = await client.change("add", newcomer, endorse(admins, newcomer.digest()))
        assert added == newcomer
        # the policy-admin policy governs its own change
        admin2 = dataclasses.replace(ADMIN, min_authorities=3, serial=2)
        await refused(
            client.set_policy(admin2, endorse([ids["root"]], admin2.digest())), "POLICY_NOT_MET"
        )
        await client.set_policy(admin2, endorse(admins, admin2.digest()))
        listing = await client.list()
        assert {p.category: p.serial for p in listing.policies} == {
            ADMIN_CATEGORY: 2,
            "payments": 2,
        }
        assert len(listing.authorities) == 5
        assert listing.revision > 0


async def test_authority_lifecycle_and_evaluate(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    ids = admin_ids()
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path):
        for name, ident in ids.items():
            await client.change("add", record(ident, name, LEVELS[name]))
        await refused(client.change("add", record(ids["med"], "again", "High")), "AUTHORITY_EXISTS")
        unknown = record(AgentIdentity.generate(), "ghost", "High")
        await refused(
            client.change("deactivate", dataclasses.replace(unknown, active=False, serial=2)),
            "AUTHORITY_UNKNOWN",
        )
        # no policy at all: refused, never allowed
        verdict = await client.evaluate(
            "payments", DIGEST, endorse([ids["med"]], DIGEST, "payments")
        )
        assert (verdict.ok, verdict.code) == (False, "POLICY_MISSING")
        await client.set_policy(ROOT_ADMIN)  # here the Root authority alone governs
        admins = [ids["root"]]
        # changes that would make policy-admin impossible to meet are refused
        root = await client.record(ids["root"].public_key)
        assert root is not None
        for op, change in (
            ("deactivate", dataclasses.replace(root, active=False, serial=2)),
            ("set-level", dataclasses.replace(root, trust_level="High", serial=2)),
        ):
            error = await refused(
                client.change(op, change, endorse(admins, change.digest())), "CHANGE_INVALID"
            )
            assert "lock out" in str(error)
        impossible = dataclasses.replace(ROOT_ADMIN, min_authorities=2, serial=2)
        await refused(
            client.set_policy(impossible, endorse(admins, impossible.digest())), "CHANGE_INVALID"
        )
        default = QuorumPolicy("default", 2, "Medium", Fraction(1, 2), (PolicyGroup(1, "High"),))
        await client.set_policy(default, endorse(admins, default.digest()))
        with_med_high = endorse([ids["med"], ids["high"]], DIGEST, "payments")
        verdict = await client.evaluate("payments", DIGEST, with_med_high)
        assert verdict.ok and verdict.policy_category == "default"
        assert set(verdict.counted) == {ids["med"].public_key, ids["high"].public_key}
        # duplicates and low-level signers do not add up
        weak = endorse([ids["med"], ids["med"], ids["low"]], DIGEST, "payments")
        verdict = await client.evaluate("payments", DIGEST, weak)
        assert (verdict.ok, verdict.code, verdict.required) == (False, "POLICY_NOT_MET", 2)
        assert [r for _, r in verdict.ignored] == ["DUPLICATE", "BELOW_TRUST_LEVEL"]

        # deactivate high: its endorsement is ignored; activate again: counted again
        current = await client.record(ids["high"].public_key)
        assert current is not None
        off = dataclasses.replace(current, active=False, serial=current.serial + 1)
        await refused(client.change("deactivate", off), "POLICY_NOT_MET")
        await client.change("deactivate", off, endorse(admins, off.digest()))
        verdict = await client.evaluate("payments", DIGEST, with_med_high)
        assert not verdict.ok and verdict.ignored == ((ids["high"].public_key, "INACTIVE"),)
        on = dataclasses.replace(off, active=True, serial=off.serial + 1)
        # an inactive authority cannot endorse its own reactivation
        await refused(
            client.change("activate", on, endorse([ids["high"]], on.digest())), "POLICY_NOT_MET"
        )
        # wrong shapes of change are refused before any endorsement is looked at
        await refused(
            client.change("activate", dataclasses.replace(on, serial=9)), "CHANGE_INVALID"
        )
        await refused(
            client.change("activate", dataclasses.replace(on, trust_level="Root")), "CHANGE_INVALID"
        )
        await refused(
            client.change("set-level", dataclasses.replace(on, name="renamed")), "CHANGE_INVALID"
        )
        await refused(
            client.change("deactivate", dataclasses.replace(off, serial=off.serial)),
            "CHANGE_INVALID",
        )
        await client.change("activate", on, endorse([ids["root"]], on.digest()))
        assert (await client.evaluate("payments", DIGEST, with_med_high)).ok
        med = await client.record(ids["med"].public_key)
        assert med is not None
        low = dataclasses.replace(med, trust_level="Low", serial=med.serial + 1)
        await client.change("set-level", low, endorse([ids["root"]], low.digest()))
        verdict = await client.evaluate("payments", DIGEST, with_med_high)
        assert not verdict.ok
        assert verdict.ignored == ((ids["med"].public_key, "BELOW_TRUST_LEVEL"),)
        await refused(client.get_policy("payments"), "POLICY_MISSING")
        assert (await client.get_policy("default")) == default


async def raw_request(nc: Client, subject: str, data: bytes) -> ErrorReply:
    msg = await nc.request(subject, data, timeout=5)
    reply = decode_reply(msg.data, ErrorReply)
    assert isinstance(reply, ErrorReply)
    return reply


def _valid_requests() -> dict[str, bytes]:
    ident = AgentIdentity.generate()
    rec = record(ident, "x", "Low")
    return {
        "add": AuthorityChange(rec).encode(),
        "activate": AuthorityChange(rec).encode(),
        "deactivate": AuthorityChange(rec).encode(),
        "set-level": AuthorityChange(rec).encode(),
        "set-policy": PolicyChange(ADMIN).encode(),
        "get-policy": PolicyQuery("x").encode(),
        "list": ListRequest().encode(),
        "evaluate": EvaluateRequest("x", DIGEST).encode(),
    }


def _with(data: bytes, **changes: object) -> bytes:
    obj = msgpack.unpackb(data, raw=False)
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("op", list(OPERATIONS))
async def test_bad_input_gets_a_code_and_service_keeps_serving(
    nats_config: NatsConfig, nc: Client, tmp_path: Path, op: str
) -> None:
    subjects = Subjects(nats_config.prefix)
    valid = _valid_requests()[op]
    bad = {
        "MALFORMED_PAYLOAD": [b"\xc1", b"", b"\x92\x01", b"\x81\x01\x02"],
        "PAYLOAD_TOO_LARGE": [b"\x00" * (256 * 1024 + 1)],
        "UNSUPPORTED_VERSION": [_with(valid, v=2)],
        "SCHEMA_VIOLATION": [
            _with(valid, type="verification_request"),
            msgpack.packb([1, 2]),
            msgpack.packb({"type": "x", "v": 1}),
        ],
    }
    if op in ("add", "activate", "deactivate", "set-level"):
        bad["SCHEMA_VIOLATION"] += [
            _with(valid, record={**msgpack.unpackb(valid)["record"], "public_key": b"short"}),
            _with(
                valid,
                endorsements=[
                    {
                        "type": "endorsement",
                        "v": 1,
                        "authority_key": bytes(32),
                        "signature": bytes(63),
                    }
                ],
            ),
        ]
    if op == "evaluate":
        bad["SCHEMA_VIOLATION"] += [
            _with(valid, message_digest=bytes(31)),
            _with(valid, category="a.b"),
        ]
    if op == "set-policy":
        bad["SCHEMA_VIOLATION"] += [
            _with(valid, policy={**ADMIN.to_wire(), "threshold": "0.67"}),
            _with(valid, policy={**ADMIN.to_wire(), "threshold": 0.5}),
        ]
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path) as worker:
        await client.list()  # reachable (the client retries "no responders" briefly)
        for code, payloads in bad.items():
            for payload in payloads:
                reply = await raw_request(nc, subjects.authority(op), payload)
                assert reply.code == code, (payload[:40], reply)
        listing = await client.list()  # still serving
        assert listing.authorities == ()
        assert worker.stats.counters.get("rejected_SCHEMA_VIOLATION", 0) >= 2
        assert worker.stats.failures == 0


async def test_concurrent_instances_compare_and_set(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    """Two workers in the queue group race to create the same authority: exactly one wins."""
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path, "a1"), authority(nats_config, tmp_path, "a2"):
        for _ in range(5):
            ident = AgentIdentity.generate()
            attempts = [record(ident, f"n{i}", "High") for i in range(6)]
            results = await asyncio.gather(
                *(client.change("add", r) for r in attempts), return_exceptions=True
            )
            winners = [r for r in results if isinstance(r, AuthorityRecord)]
            losers = [r for r in results if isinstance(r, RemoteError)]
            assert len(winners) == 1 and len(losers) == 5, results
            assert {e.code for e in losers} <= {"AUTHORITY_EXISTS", "STATE_CONFLICT"}
            stored = await client.record(ident.public_key)
            assert stored == winners[0]


async def test_malformed_state_record_is_skipped_and_blocks_governance(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    subjects = Subjects(nats_config.prefix)
    kv = await state_bucket(nc, subjects)
    await kv.put("policy.payments", b"\xc1garbage")
    await kv.put("policy.refunds", QuorumPolicy("other", 1, "Low", Fraction(1)).encode())
    await kv.put("key.abcdef", b"the key manager's business")
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path):
        listing = await client.list()
        assert listing.policies == ()
        await refused(client.get_policy("payments"), "POLICY_MISSING")
        # fail closed: while a governance record is unreadable (it might be the
        # policy-admin policy), no change is accepted; repairing it reopens changes
        await refused(
            client.change("add", record(AgentIdentity.generate(), "root", "Root")), "CHANGE_INVALID"
        )
        await kv.delete("policy.payments")
        await kv.delete("policy.refunds")  # a record under another category's key
        await client.change("add", record(AgentIdentity.generate(), "root", "Root"))
        await client.set_policy(ROOT_ADMIN)
        assert [p.category for p in (await client.list()).policies] == [ADMIN_CATEGORY]


async def test_no_worker_is_no_responders(nats_config: NatsConfig, nc: Client) -> None:
    client = AuthorityClient(nc, nats_config.prefix, timeout=2)
    with pytest.raises(Exception) as info:
        await client.list()
    assert getattr(info.value, "code", None) in ("NO_RESPONDERS", "TIMEOUT")


async def test_verifier_path_reads_the_same_state(
    nats_config: NatsConfig, nc: Client, tmp_path: Path
) -> None:
    """What the integrator wires into verifiers: a BucketMirror of {prefix}_state decoded with
    decode_state_record, evaluated with evaluate_from_state — same answer as the service."""
    from bus.state import BucketMirror
    from schemas.authority import decode_state_record
    from workers.authority.policy import evaluate_from_state

    ids = admin_ids()
    client = AuthorityClient(nc, nats_config.prefix)
    async with authority(nats_config, tmp_path):
        await bootstrap(client, ids)
        default = QuorumPolicy("default", 2, "Medium", Fraction(2, 3))
        await client.set_policy(default, endorse([ids["root"], ids["high"]], default.digest()))
        mirror: BucketMirror[object] = BucketMirror(
            nc, Subjects(nats_config.prefix).state_bucket, decode_state_record
        )
        await mirror.start()
        try:
            signers = endorse([ids["med"], ids["high"], ids["low"]], DIGEST, "payments")
            service = await client.evaluate("payments", DIGEST, signers)
            assert await mirror.wait_for_revision(service.revision, 10)
            local = evaluate_from_state(mirror.items, "payments", DIGEST, signers)
            assert local.ok and service.ok
            assert (local.counted, local.ignored, local.required) == (
                service.counted,
                service.ignored,
                service.required,
            )
            assert local.policy_category == service.policy_category == "default"
        finally:
            await mirror.stop()
