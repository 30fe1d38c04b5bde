"""Wire fuzz: 20,000+ hostile payloads against a running system, then a valid decision.

Every worker kind runs as a real process under its role's NATS user (the
per-role configuration of bus/permissions.py). The payloads (tests/fuzz/
wire_payloads.py: every string field of every sample set to each hostile token,
then 20,000 seeded payloads) go to every subject a client may publish to, as the
client user ``alice`` (so the grants are the real ones: the request subject and
the read-only JetStream API of the membership bucket), and to every request
subject of the services, as the operator (``admin``): keys, trust, authority,
recovery history and each worker's status endpoint. Most are requests with a
reply inbox, some plain publishes (nobody waits, nobody must answer).

Pass means: every reply of a worker decodes as the subject's reply or an
ErrorReply whose code is documented (schemas/errors.WIRE_ERROR_CODES, which
tests/unit/test_asyncapi.py keeps equal to the AsyncAPI ``x-error-codes``) and
is not INTERNAL; every JetStream API reply is the server's JSON (or a direct-get
status); no request goes unanswered; no process dies or logs a traceback; and
afterwards the system
still decides a valid request VALID with a certificate the client verifies.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bus.client import VerifyClient
from bus.connection import connect
from bus.permissions import permissions
from bus.subjects import Subjects
from schemas import authority, keys, recovery, trust
from schemas.errors import WIRE_ERROR_CODES
from schemas.identity import AgentIdentity
from schemas.messages import (
    ConsensusResult,
    ErrorReply,
    MetricsSnapshot,
    VerificationRequest,
    WireMessage,
    decode_reply,
)
from tests.fuzz import samples
from tests.fuzz.wire_payloads import payload, token_swaps
from tests.secure import USERS, SecureCluster, SecureServer, start_secure_server

pytestmark = [pytest.mark.fuzz, pytest.mark.e2e, pytest.mark.slow]

#: ``AP_FUZZ_SEED`` / ``AP_FUZZ_PAYLOADS`` pick other payloads or more of them (local runs).
SEED = int(os.environ.get("AP_FUZZ_SEED", "20261204"))
TOTAL = max(20_000, int(os.environ.get("AP_FUZZ_PAYLOADS", "20000")))
#: Requests in flight at once (the replies are what is measured).
CONCURRENCY = 160
#: One payload in this many is a plain publish (no reply subject).
PUBLISH_EVERY = 10
#: A request unanswered after this long is a finding (a round under load takes < 1 s).
REPLY_TIMEOUT_S = 20.0
SERVICES = [
    ("keys", "keys1"),
    ("trust", "trust1"),
    ("authority", "authority1"),
    ("anomaly", "anomaly1"),
    ("recovery", "recovery1"),
]


@dataclass(frozen=True)
class Target:
    """One subject, who sends to it, what to mutate, and what it may answer."""

    subject: str
    sender: str  # "alice" or "admin"
    samples: list[bytes]
    #: reply classes of a worker's subject; None: the JetStream API (nats-server answers)
    replies: tuple[type[WireMessage], ...] | None
    weight: int = 1


def client_targets(subjects: Subjects) -> list[Target]:
    """Every subject the client role may publish to (bus/permissions.py), concrete."""
    p = subjects.prefix
    members = subjects.members_bucket
    member_subject = f"$KV.{members}.v1"
    js_samples = {
        "STREAM.INFO": [b"", b"{}", b'{"subjects_filter":">"}'],
        "STREAM.MSG.GET": [b'{"seq":1}', json.dumps({"last_by_subj": member_subject}).encode()],
        "DIRECT.GET": [b'{"seq":1}', json.dumps({"last_by_subj": member_subject}).encode()],
    }
    out: list[Target] = []
    for pattern in permissions("client", "alice", subjects).publish:
        if pattern == subjects.request:
            out.append(
                Target(pattern, "alice", samples.verification_requests(), (ConsensusResult,), 20)
            )
            continue
        assert pattern.startswith("$JS.API."), pattern
        if pattern.endswith(".>"):  # direct get by subject: the payload is ignored
            out.append(Target(f"{pattern[:-2]}.{member_subject}", "alice", [b""], None, 2))
            continue
        api = pattern.removeprefix("$JS.API.").removesuffix(f".KV_{members}")
        out.append(Target(pattern, "alice", js_samples[api], None, 2))
    assert out[0].subject == f"{p}.verify.request"
    return out


def service_targets(subjects: Subjects, workers: list[tuple[str, str]]) -> list[Target]:
    """Every request subject of the services (as the operator, who may call them all)."""
    msgs = samples.messages()
    key_replies = (keys.KeyInfo, keys.KeyList, keys.KeySignature, keys.KeySweep)
    out = [
        Target(subjects.keys_op(op), "admin", [raw], key_replies)
        for op, raw in samples.key_requests().items()
    ]
    trust_replies = (trust.TrustAck, trust.ChainReply, trust.TrustListing)
    out += [
        Target(subjects.trust(op), "admin", msgs[cls], trust_replies)
        for op, cls in trust.OPS.items()
    ]
    authority_replies = (
        authority.AuthorityRecord,
        authority.QuorumPolicy,
        authority.AuthorityList,
        authority.PolicyVerdict,
    )
    out += [
        Target(subjects.authority(op), "admin", msgs[cls], authority_replies)
        for op, cls in authority.OPERATIONS.items()
    ]
    out.append(
        Target(
            subjects.recovery_history,
            "admin",
            [*msgs[recovery.HistoryQuery], b""],
            (recovery.HistoryReply,),
        )
    )
    out += [
        Target(subjects.status(kind, wid), "admin", [b""], (MetricsSnapshot,))
        for kind, wid in workers
    ]
    return out


@dataclass
class Tally:
    """What came back, per subject."""

    sent: collections.Counter[str]
    published: collections.Counter[str]
    outcomes: dict[str, collections.Counter[str]]
    findings: list[str]

    def record(self, subject: str, outcome: str) -> None:
        self.outcomes.setdefault(subject, collections.Counter())[outcome] += 1


def judge_reply(target: Target, msg: Msg, data: bytes) -> tuple[str, str | None]:
    """(outcome label, finding or None) for one reply."""
    if target.replies is None:  # nats-server's JetStream API
        status = (msg.headers or {}).get("Status")
        if status:
            return f"js-status:{status}", None
        try:
            body = json.loads(msg.data)
        except ValueError:
            if msg.headers and "Nats-Sequence" in msg.headers:
                return "js-direct-message", None
            return "js-unparsable", f"{target.subject}: reply is not JSON: {msg.data[:80]!r}"
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return f"js-error:{error.get('err_code')}", None
        return f"js-ok:{body.get('type') if isinstance(body, dict) else type(body).__name__}", None
    try:
        reply = decode_reply(msg.data, *target.replies)  # type: ignore[call-overload]
    except Exception as exc:
        return "undecodable", f"{target.subject}: reply does not decode ({exc}) for {data[:60]!r}"
    if isinstance(reply, ErrorReply):
        if reply.code not in WIRE_ERROR_CODES:
            return f"code:{reply.code}", f"{target.subject}: undocumented code {reply.code}"
        if reply.code == "INTERNAL":
            return "code:INTERNAL", f"{target.subject}: INTERNAL for {data[:120]!r}"
        return f"code:{reply.code}", None
    label = reply.decision if isinstance(reply, ConsensusResult) else reply.TYPE
    return f"reply:{label}", None


async def fuzz(conns: dict[str, Client], targets: list[Target], tally: Tally) -> None:
    rng = random.Random(SEED)
    plan = [t for t in targets for _ in range(t.weight)]
    # first every string field of every sample set to each hostile token, then TOTAL
    # seeded payloads
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(target: Target, data: bytes, publish: bool) -> None:
        nc = conns[target.sender]
        try:
            if publish:
                await nc.publish(target.subject, data)
                tally.published[target.subject] += 1
                return
            try:
                msg = await nc.request(target.subject, data, timeout=REPLY_TIMEOUT_S)
            except NatsTimeout:
                tally.record(target.subject, "timeout")
                tally.findings.append(f"{target.subject}: no reply to {data[:120]!r}")
                return
            except NoRespondersError:
                tally.record(target.subject, "no-responders")
                tally.findings.append(f"{target.subject}: no responders")
                return
            label, finding = judge_reply(target, msg, data)
            tally.record(target.subject, label)
            if finding is not None:
                tally.findings.append(finding)
        finally:
            gate.release()

    work = [(t, swapped) for t in targets for s in t.samples for swapped in token_swaps(s)]
    work += [(target, payload(rng, target.samples)) for target in rng.choices(plan, k=TOTAL)]
    tasks = []
    for i, (target, data) in enumerate(work):
        tally.sent[target.subject] += 1
        await gate.acquire()
        tasks.append(asyncio.create_task(one(target, data, i % PUBLISH_EVERY == 1)))
    await asyncio.gather(*tasks)
    for nc in conns.values():
        await nc.flush()


@pytest.fixture
def fuzz_cluster(tmp_path: Path) -> Iterator[SecureCluster]:
    prefix = f"z{uuid.uuid4().hex[:10]}"
    specs = USERS + [f"{kind}:{wid}" for kind, wid in SERVICES]
    server: SecureServer = start_secure_server(tmp_path / "nats", prefix, specs)
    c = SecureCluster(nats_url=server.url, prefix=prefix, data_dir=tmp_path, secure=server)
    try:
        yield c
    finally:
        c.stop_all()
        server.server.stop()


@pytest.mark.timeout(420)
async def test_hostile_payloads_on_every_subject_leave_the_system_deciding(
    fuzz_cluster: SecureCluster,
) -> None:
    c = fuzz_cluster
    assert c.secure is not None
    await c.start_system(4)
    for kind, wid in SERVICES:
        c._spawn(f"{kind}-{wid}", ["-m", "workers.cli", "worker", kind, "--id", wid])
    subjects = Subjects(c.prefix)
    workers = [("tally", "t1"), *[("verifier", f"v{i}") for i in range(1, 5)], *SERVICES]
    targets = client_targets(subjects) + service_targets(subjects, workers)
    conns = {
        "alice": await connect(c.secure.config("alice"), name="fuzz-alice"),
        "admin": await connect(c.admin(), name="fuzz-admin"),
    }
    try:
        # every service answers before the fuzz starts (a slow start is not a finding)
        for target in targets:
            if target.sender == "admin":
                await _wait_answered(conns["admin"], target.subject)
        tally = Tally(collections.Counter(), collections.Counter(), {}, [])
        started = time.monotonic()
        await fuzz(conns, targets, tally)
        elapsed = time.monotonic() - started
        summary = {
            "payloads": sum(tally.sent.values()),
            "published_without_reply": sum(tally.published.values()),
            "replies": sum(sum(o.values()) for o in tally.outcomes.values()),
            "seconds": round(elapsed, 1),
            "codes": sorted({k for o in tally.outcomes.values() for k in o}),
            "per_subject": {
                t.subject: {"sent": tally.sent[t.subject], **tally.outcomes.get(t.subject, {})}
                for t in targets
            },
        }
        print(json.dumps(summary, indent=1))
        assert summary["payloads"] >= TOTAL
        assert all(tally.sent[t.subject] > 0 for t in targets), "a subject got no payload"
        assert not tally.findings, "\n".join(tally.findings[:40])

        for name, proc in c.processes.items():
            assert proc.poll() is None, f"{name} died under the fuzz:\n{c.log(name)[-4000:]}"
        # hostile input is a verdict, not a failure: no worker logs a traceback for it
        # (one per message would also let any client fill the worker's disk)
        tracebacks = {name: c.log(name).count("Traceback") for name in c.processes}
        assert not any(tracebacks.values()), _first_traceback(c, tracebacks)

        agent = AgentIdentity.generate()
        message = b"pay 1 EUR to merchant-after-fuzz"
        request = VerificationRequest(
            request_id=f"after-fuzz-{uuid.uuid4().hex[:8]}",
            message=message,
            signature=agent.sign(message),
            public_key=agent.public_key,
        )
        async with await VerifyClient.connect(c.secure.config("alice"), timeout=30) as client:
            cert = await client.verify_with_consensus(request)  # checks the certificate too
        assert cert.decision == "VALID", cert.summary()
    finally:
        for nc in conns.values():
            await nc.close()


def _first_traceback(c: SecureCluster, counts: dict[str, int]) -> str:
    name = next(n for n, count in counts.items() if count)
    log = c.log(name)
    at = log.index("Traceback")
    return f"tracebacks per worker {counts}; first, in {name}:\n{log[max(0, at - 300) : at + 1500]}"


async def _wait_answered(nc: Client, subject: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, b"\xc1", timeout=1.0)
            return
        except (NatsTimeout, NoRespondersError):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answers {subject}") from None
            await asyncio.sleep(0.2)
