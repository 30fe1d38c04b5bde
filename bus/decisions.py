"""Where decisions are kept: the decisions bucket (idempotency) and the audit stream.

A JetStream key-value bucket (``{prefix}_decisions``, TTL 24 h, direct gets
on). Key = ``decision_key(scope_id(...))`` (a hash: request ids may hold
characters KV keys cannot). Writes are create-only — the first certificate
stored for a scope is the one every later retry gets, whichever tally answers.

Request ids are scoped to their signer (``scope_id``): the scope of a request
is its (public key, request id), so one client cannot take another's id. A
decision holds that scope only if its request was signed by that key
(``claims_scope``): a request whose signature does not verify (anyone can name
any public key) is stored under its exact bytes instead — (public key, request
id, request digest) — so it answers its own retries and blocks nobody.

Lookups are batched: one JetStream *batched direct get* (``multi_last``, NATS
2.11+) answers up to ``MAX_BATCH`` keys in one round trip, so the cost per
request is a fraction of a KV ``get``. Missing keys are simply absent from the
answer. Errors are raised as ``TransportError`` (NotConnected when the
connection or JetStream is missing), and handed to ``on_error`` as such;
the caller decides how to degrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
)

from bus.config import js_replicas
from bus.kv import WRONG_LAST_SEQUENCE
from bus.nats_errors import STORE_FULL, is_store_full, jetstream_error, map_jetstream_errors
from bus.streams import ensure_stream
from bus.subjects import Subjects
from schemas.errors import StoreFull, TransportError
from schemas.messages import ConsensusResult

log = logging.getLogger("agentic_payments.decisions")
DECISION_TTL_S = 24 * 3600
MAX_BATCH = 256
LOOKUP_TIMEOUT_S = 2.0
ACK_TIMEOUT_S = 5.0
MAX_OUTSTANDING_ACKS = 20_000


#: Vote reasons that say the request's signature does not verify under its key.
SIGNATURE_REASONS = frozenset({"BAD_SIGNATURE", "BAD_SIGNATURE_LENGTH", "BAD_KEY_LENGTH"})


def decision_key(scope: str) -> str:
    """The KV key of a scope (``scope_id``), as a hash."""
    return hashlib.sha256(scope.encode()).hexdigest()[:40]


def scope_id(public_key: bytes, request_id: str, digest: bytes = b"") -> str:
    """The idempotency scope of a request: its signer's key and its id, or (``digest``
    given) only those exact request bytes. Hex fields carry no dots, so the string is
    unambiguous whatever the request id holds."""
    return f"{public_key.hex()}.{digest.hex()}.{request_id}"


def claims_scope(cert: ConsensusResult) -> bool:
    """Whether a decision holds its request id for the request's public key.

    Not when the certificate shows the request's signature does not verify: decided
    INVALID and every counted vote against says a signature reason. That takes at
    least q votes, so at least q - f > 0 honest verifiers — a client cannot make a
    request signed by the key's holder look unsigned, and a request that nobody
    holding the key signed cannot take the id from its holder.
    """
    if cert.decision != "INVALID":
        return True
    against = [v for v in cert.votes if not v.valid]
    return not against or not all(v.reason in SIGNATURE_REASONS for v in against)


async def ensure_audit_stream(nc: Client, subjects: Subjects, days: float) -> None:
    """Create the append-only audit stream over ``{prefix}.decision.>`` if it is missing.

    Every certificate a tally produces is published there (TIMEOUTs included),
    kept ``days`` days. An existing stream is left as the operator configured it.
    """
    await ensure_stream(
        nc,
        subjects.audit_stream,
        [subjects.decisions_all],
        max_age_s=days * 86400,
        description="agentic-payments decisions",
    )


class DecisionStore:
    def __init__(
        self, nc: Client, subjects: Subjects, on_error: Callable[[str, BaseException, bool], None]
    ) -> None:
        self._on_error = on_error
        self._acks: dict[str, tuple[float, str]] = {}
        self._nc = nc
        self._js = nc.jetstream()
        self.bucket = subjects.decisions_bucket
        self._stream = f"KV_{self.bucket}"
        self._subject_prefix = f"$KV.{self.bucket}."
        self._kv: Any = None
        self._direct = False
        self._inbox = ""
        self._sub: Any = None
        self._batches: dict[str, tuple[asyncio.Future[None], dict[str, bytes]]] = {}
        self._seq = 0

    async def start(self) -> None:
        """Open (or create) the bucket; NotConnected without JetStream or connection."""
        with map_jetstream_errors(f"opening bucket {self.bucket}"):
            await self._open()

    async def _open(self) -> None:
        try:
            self._kv = await self._js.key_value(self.bucket)
        except BucketNotFoundError:
            replicas = js_replicas()
            with contextlib.suppress(Exception):  # a concurrent creator may win the race
                await self._js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    ttl=DECISION_TTL_S,
                    direct=True,
                    replicas=replicas,
                    description="agentic-payments certificates by request id",
                )
            self._kv = await self._js.key_value(self.bucket)
        info = await self._js.stream_info(self._stream)
        self._direct = bool(info.config.allow_direct)
        if not self._direct:
            log.warning(
                "bucket %s has no direct gets; lookups fall back to one get per key", self.bucket
            )
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future, _ in self._batches.values():
            if not future.done():
                future.cancel()

    # ------------------------------------------------------------------ lookups
    async def get_many(self, request_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored certificates for those of ``request_ids`` (scopes: ``scope_id``)
        that have one."""
        keys = {decision_key(rid): rid for rid in request_ids}
        found: dict[str, bytes] = {}
        items = list(keys)
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start : start + MAX_BATCH]
            raw = await (self._batch_get(chunk) if self._direct else self._get_each(chunk))
            found.update({keys[k]: v for k, v in raw.items()})
        return found

    async def _get_each(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in keys:
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            except Exception as exc:
                raise TransportError(f"decision lookup failed: {exc}") from None
            if entry.value:
                out[key] = entry.value
        return out

    async def _batch_get(self, keys: list[str]) -> dict[str, bytes]:
        self._seq += 1
        token = f"b{self._seq}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        results: dict[str, bytes] = {}
        self._batches[token] = (future, results)
        request = {"multi_last": [self._subject_prefix + k for k in keys], "batch": len(keys)}
        try:
            with map_jetstream_errors("decision lookup"):
                await self._nc.publish(
                    f"$JS.API.DIRECT.GET.{self._stream}",
                    json.dumps(request).encode(),
                    reply=f"{self._inbox}.{token}",
                )
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):  # not wait_for (bpo-42130)
                await future
        except TimeoutError:
            raise TransportError("decision lookup timed out") from None
        finally:
            self._batches.pop(token, None)
        return results

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if token.startswith("a"):
            self._on_ack(token, msg)
            return
        batch = self._batches.get(token)
        if batch is None:
            return
        future, results = batch
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            subject = headers.get("Nats-Subject", "")
            if subject.startswith(self._subject_prefix) and msg.data:
                results[subject[len(self._subject_prefix) :]] = msg.data
            return
        if not future.done():
            if status in ("204", "404"):  # end of batch / nothing found
                future.set_result(None)
            else:
                future.set_exception(
                    TransportError(
                        f"decision lookup failed: status {status} {headers.get('Description', '')}"
                    )
                )

    # ------------------------------------------------------------------ writes
    async def store(self, request_id: str, data: bytes) -> None:
        """Create-only write; failures reach ``on_error(request_id, exc, already_stored)``.

        Acks come back to our own inbox rather than through nats-py's
        ``publish_async``: in nats-py 2.16 a JetStream error ack (such as
        "wrong last sequence") raises inside its reply handler, so the future
        never completes and its in-flight slot leaks. For the same reason it is not
        a bus/kv.KeyValue create, which awaits each write: the tally pipelines these.
        """
        self._expire_acks()
        if len(self._acks) >= MAX_OUTSTANDING_ACKS:
            self._on_error(
                request_id, TransportError("too many unacknowledged decision writes"), False
            )
            return
        self._seq += 1
        token = f"a{self._seq}"
        self._acks[token] = (time.monotonic(), request_id)
        try:
            await self._nc.publish(
                self._subject_prefix + decision_key(request_id),
                data,
                reply=f"{self._inbox}.{token}",
                headers={"Nats-Expected-Last-Subject-Sequence": "0"},
            )
        except Exception as exc:
            self._acks.pop(token, None)
            self._on_error(request_id, jetstream_error(exc, "decision write"), False)

    def _on_ack(self, token: str, msg: Msg) -> None:
        sent = self._acks.pop(token, None)
        if sent is None:
            return
        request_id = sent[1]
        status = (msg.headers or {}).get("Status")
        if status == "503":
            self._on_error(
                request_id, TransportError("no JetStream stream for the decisions bucket"), False
            )
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            self._on_error(request_id, TransportError("unreadable JetStream ack"), False)
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        if error and is_store_full(error.get("err_code")):
            self._on_error(request_id, StoreFull(f"decision write refused: {STORE_FULL}"), False)
        elif error:
            already = error.get("err_code") in WRONG_LAST_SEQUENCE  # the key exists
            self._on_error(request_id, TransportError(f"decision write refused: {error}"), already)

    def _expire_acks(self) -> None:
        deadline = time.monotonic() - ACK_TIMEOUT_S
        while self._acks:
            token, (sent, request_id) = next(iter(self._acks.items()))
            if sent > deadline:
                break
            del self._acks[token]
            self._on_error(request_id, TransportError("decision write not acknowledged"), False)
