"""The verifier worker: one Ed25519 identity, one signed vote per ballot.

It receives every ballot (no queue group), judges each raw request with the
pure ``judge`` function, and answers the ballot's reply subject with one Vote
whose signature covers every verdict (through a Merkle root). A ballot seen
again (anyone can republish one) gets the same vote bytes back, so the
verifier never signs two different votes for one ballot. A malformed
ballot is counted and dropped — there is nobody trustworthy to answer — and
the verifier keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from bus import membership
from bus.runtime import RuntimeConfig, Worker, now_ms
from bus.state import BucketMirror
from bus.tracing import (
    TRACEPARENTS_HEADER,
    context_of,
    extract_context,
    format_traceparents,
    parse_traceparents,
    start_messaging_span,
    tracing_active,
)
from schemas.errors import CodecError
from schemas.identity import AgentIdentity
from schemas.messages import Ballot
from schemas.votes import sign_vote
from workers.consensus.judge import judge_at_ballot_time
from workers.consensus.verdict_state import (
    StateVerdicts,
    decode_state_record,
    merge_state_record,
)
from workers.trust.chain import ChainCache

log = logging.getLogger("agentic_payments.verifier")
#: Ballots this far past their deadline (by our clock) are skipped; the margin
#: keeps a verifier whose clock runs ahead voting.
CLOCK_SKEW_MS = 30_000
MAX_REMEMBER_MS = 120_000
MAX_REMEMBERED_VOTES = 10_000
MAX_REMEMBERED_BYTES = 32 * 1024 * 1024
#: How long a verifier whose verdict state is behind a ballot's waits to catch up.
STATE_CATCH_UP_MS = 1_000


class VerifierWorker(Worker):
    """Verifies every request in a ballot and answers with one signed vote."""

    kind = "verifier"

    def __init__(
        self,
        runtime: RuntimeConfig,
        *,
        key_file: Path | None = None,
        identity: AgentIdentity | None = None,
    ) -> None:
        super().__init__(runtime)
        self.key_file = key_file or runtime.data_dir / "keys" / f"verifier-{self.worker_id}.key"
        self.identity = identity or AgentIdentity.load_or_create(self.key_file)
        self._voted: dict[bytes, tuple[int, bytes]] = {}
        self._voted_bytes = 0
        #: (tally id, ballot id) -> hash of the ballot bytes we voted on: one vote per
        #: ballot id, so a second ballot reusing an id cannot frame us as an equivocator
        self._ballot_ids: dict[tuple[str, str], bytes] = {}
        self._state: BucketMirror[object] | None = None
        self._verdicts: StateVerdicts | None = None
        self._chain_cache = ChainCache()

    def _remember(self, ballot_hash: bytes, deadline_ms: int, data: bytes, now: int) -> None:
        """Keep each vote until its ballot's deadline, oldest first out.

        Keyed by the hash of the exact ballot bytes; bounded by count, by bytes,
        and by a cap on how far ahead a (possibly hostile) deadline can keep an
        entry, so the cache cannot be used to exhaust memory.
        """
        expires = min(deadline_ms, now + MAX_REMEMBER_MS) + CLOCK_SKEW_MS
        self._voted[ballot_hash] = (expires, data)
        self._voted_bytes += len(data)
        while self._voted:
            oldest, (oldest_expiry, oldest_data) = next(iter(self._voted.items()))
            if (
                oldest_expiry >= now
                and len(self._voted) <= MAX_REMEMBERED_VOTES
                and self._voted_bytes <= MAX_REMEMBERED_BYTES
            ):
                break
            del self._voted[oldest]
            self._voted_bytes -= len(oldest_data)
        while len(self._ballot_ids) > MAX_REMEMBERED_VOTES:
            del self._ballot_ids[next(iter(self._ballot_ids))]

    def gauges(self) -> dict[str, float]:
        return {
            **super().gauges(),
            "remembered_votes": len(self._voted),
            "remembered_vote_bytes": self._voted_bytes,
        }

    def extra_metadata(self) -> dict[str, str]:
        return {"public_key": self.identity.public_key_hex, "did": self.identity.did}

    async def setup(self) -> None:
        changed = await membership.register(
            self.client,
            self.subjects,
            self.worker_id,
            self.identity.public_key,
            check_holders=False,
        )
        log.info(
            "verifier %s %s pool membership (%s)",
            self.worker_id,
            "registered in" if changed else "already in",
            self.identity.did,
        )
        self._state = BucketMirror(
            self.client,
            self.subjects.state_bucket,
            decode_state_record,
            keep_unreadable=True,
            merge=merge_state_record,  # a revocation, once seen, stays (hole 6c)
        )
        await self._state.start()
        await self.subscribe_intake(self.subjects.ballot, self._on_ballot)

    async def teardown(self) -> None:
        if self._state is not None:
            await self._state.stop()

    async def _judged_state(self, ballot: Ballot, now: int) -> tuple[int, StateVerdicts]:
        """The verdict state to judge ``ballot`` under: caught up to the ballot's
        revision if we are behind (bounded wait), and the revision we really used."""
        assert self._state is not None
        if ballot.state_rev > self._state.known_last:
            # a revision the bucket has not reached (as last polled): not worth waiting
            # for — a ballot can claim any number, and waiting stalls every later ballot
            self.stats.count("state_rev_unknown")
        elif self._state.revision < ballot.state_rev:
            self.stats.count("state_catch_up")
            wait_ms = min(STATE_CATCH_UP_MS, max(0, ballot.deadline_ms - now))
            if not await self._state.wait_for_revision(ballot.state_rev, wait_ms / 1000):
                self.stats.count("state_behind_ballot")
        revision = self._state.revision
        if self._verdicts is None or self._verdicts.revision != revision:
            self._verdicts = StateVerdicts(
                self._state.items, revision, chain_cache=self._chain_cache
            )
        return revision, self._verdicts

    async def _on_ballot(self, msg: Msg) -> None:
        started = time.perf_counter()
        try:
            ballot = Ballot.decode(msg.data)
        except CodecError as exc:
            self.stats.count(f"ballot_rejected_{exc.code}")
            log.warning("dropped malformed ballot [%s]: %s", exc.code, exc)
            return
        if not msg.reply:
            self.stats.count("ballot_without_reply")
            return
        now = now_ms()
        if ballot.deadline_ms + CLOCK_SKEW_MS < now:
            self.stats.count("ballot_late")
            return
        ballot_hash = hashlib.sha256(msg.data).digest()
        ballot_id_key = (ballot.tally_id, ballot.ballot_id)
        seen_hash = self._ballot_ids.get(ballot_id_key)
        if seen_hash is not None and seen_hash != ballot_hash:
            self.stats.count("ballot_id_reused")  # never sign a second vote for one ballot id
            log.warning(
                "ballot id %s of tally %s reused with other contents: not voting",
                ballot.ballot_id,
                ballot.tally_id,
            )
            return
        cached = self._voted.get(ballot_hash)
        if cached is not None:  # a replayed ballot gets the very same vote, never a new one
            self.stats.count("ballot_repeated")
            await self.client.publish(msg.reply, cached[1])
            return
        ok = True
        spans = self._ballot_spans(msg, ballot) if tracing_active() else []
        try:
            state_rev, state = await self._judged_state(ballot, now)
            # one "now" for every verifier: the ballot's, unless it is implausible
            entries = [
                judge_at_ballot_time(raw, state, ballot.issued_ms, now_ms())
                for raw in ballot.requests
            ]
            data = sign_vote(self.identity, ballot, entries, now_ms(), state_rev=state_rev).encode()
            self._remember(ballot_hash, ballot.deadline_ms, data, now)
            self._ballot_ids[ballot_id_key] = ballot_hash
            headers = None
            if spans:
                contexts: list[SpanContext | None] = [None] * len(entries)
                for index, span in spans:
                    contexts[index] = span.get_span_context()
                    span.set_attributes(
                        {
                            "agentic_payments.valid": entries[index].valid,
                            "agentic_payments.reason": entries[index].reason,
                            "agentic_payments.state_rev": state_rev,
                        }
                    )
                headers = {TRACEPARENTS_HEADER: format_traceparents(contexts)}
            await self.client.publish(msg.reply, data, headers=headers)
            self.stats.count("requests_judged", len(entries))
        except Exception as exc:
            ok = False
            for _, span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, exc.__class__.__name__))
            log.exception("failed to vote on ballot %s", ballot.ballot_id)
        finally:
            for _, span in spans:
                span.end()
            self.stats.record((time.perf_counter() - started) * 1000, ok)

    def _ballot_spans(self, msg: Msg, ballot: Ballot) -> list[tuple[int, Span]]:
        """``process`` spans for this ballot: one per request under that request's ballot
        span (``ap-traceparents``), so every request's trace shows every verifier's work.

        They cover the whole ballot (judging all of it, one signature, the vote
        publish): that is what this verifier did for each request. A ballot with only
        a W3C ``traceparent`` (e.g. from a client of the AsyncAPI contract) gets one
        span under it instead.
        """
        count = len(ballot.requests)
        headers = msg.headers or {}
        contexts = parse_traceparents(headers.get(TRACEPARENTS_HEADER), count)
        common = {
            "messaging.message.id": ballot.ballot_id,
            "messaging.batch.message_count": count,
            "messaging.message.body.size": len(msg.data),
            "messaging.client.id": self.worker_id,
            "agentic_payments.verifier_key": self.identity.public_key_hex,
            "agentic_payments.epoch": ballot.epoch,
        }
        if not any(contexts):
            if "traceparent" not in headers:
                return []
            return [
                (
                    0,
                    start_messaging_span(
                        "process",
                        msg.subject,
                        kind=SpanKind.CONSUMER,
                        parent=extract_context(headers),
                        attributes=common,
                    ),
                )
            ]
        return [
            (
                i,
                start_messaging_span(
                    "process",
                    msg.subject,
                    kind=SpanKind.CONSUMER,
                    parent=context_of(ctx),
                    attributes={**common, "agentic_payments.ballot_index": i},
                ),
            )
            for i, ctx in enumerate(contexts)
            if ctx is not None and ctx.trace_flags.sampled
        ]
