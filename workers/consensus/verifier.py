"""The verifier worker: one Ed25519 identity, one signed vote per ballot.

It receives every ballot (no queue group) and judges one only if the rules of
workers/consensus/ballot.py admit it: signed by the key that the current
pool's record ``tally.<tally_id>`` holds, issued within the clock-skew margin
of its clock (it is then judged at its ``issued_ms``, the one agreed "now"),
at the pool epoch this verifier is at. The vote goes to
``{prefix}.vote.<tally_id>`` — never to the message's reply subject, which
whoever delivered the bytes chose. Every vote is remembered until its ballot's
deadline has passed (plus the margin): a re-delivered ballot gets the very
same vote bytes and is never judged again. A refused or malformed ballot is
counted (``ballot_refused_<code>``) and logged, never answered, and the
verifier keeps serving.
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
from workers.consensus.ballot import (
    BallotRefusal,
    BallotWindow,
    VoteMemory,
    ballot_epoch_refusal,
    ballot_signature_refusal,
    ballot_signer_refusal,
    ballot_time_refusal,
)
from workers.consensus.judge import judge
from workers.consensus.verdict_state import (
    StateVerdicts,
    decode_state_record,
    merge_state_record,
)
from workers.trust.chain import ChainCache

log = logging.getLogger("agentic_payments.verifier")
#: How far a ballot's ``issued_ms`` may be from our clock (it is judged at
#: ``issued_ms`` inside this margin, refused outside it).
ISSUED_SKEW_MS = 2_000
#: How long past its deadline a ballot is answered from memory, not refused as late.
CLOCK_SKEW_MS = 30_000
#: Ballots whose deadline is further out than this are refused: their votes
#: would have to be remembered longer.
MAX_REMEMBER_MS = 120_000
MAX_REMEMBERED_VOTES = 100_000
MAX_REMEMBERED_BYTES = 64 * 1024 * 1024
#: How long a verifier whose verdict state is behind a ballot's waits to catch up.
STATE_CATCH_UP_MS = 1_000
#: How long a verifier whose pool view is behind a ballot's epoch waits to catch up.
EPOCH_CATCH_UP_MS = 1_000


class VerifierWorker(Worker):
    """Verifies every request in an admitted ballot and sends one signed vote."""

    kind = "verifier"

    def __init__(
        self,
        runtime: RuntimeConfig,
        *,
        key_file: Path | None = None,
        identity: AgentIdentity | None = None,
        tally_keys: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(runtime)
        #: tally id -> key pinned by the operator (``--tally-key``): used instead of the
        #: pool's tally records where the verifier cannot read the tallies' pool (its
        #: organization's own NATS account); the epoch rule is then off.
        self.pinned_tallies = dict(tally_keys or {})
        self.key_file = key_file or runtime.data_dir / "keys" / f"verifier-{self.worker_id}.key"
        self.identity = identity or AgentIdentity.load_or_create(self.key_file)
        self.window = BallotWindow(
            issued_skew_ms=ISSUED_SKEW_MS, grace_ms=CLOCK_SKEW_MS, horizon_ms=MAX_REMEMBER_MS
        )
        self._memory = VoteMemory(MAX_REMEMBERED_VOTES, MAX_REMEMBERED_BYTES)
        #: follows the members bucket without a consumer (direct gets and a wake-up
        #: subscription: its role's grants, bus/permissions.py)
        self._pool: membership.PoolWatcher | None = None
        self._state: BucketMirror[object] | None = None
        self._verdicts: StateVerdicts | None = None
        self._chain_cache = ChainCache()

    def gauges(self) -> dict[str, float]:
        return {
            **super().gauges(),
            "remembered_votes": len(self._memory),
            "remembered_vote_bytes": self._memory.bytes,
        }

    def extra_metadata(self) -> dict[str, str]:
        return {"public_key": self.identity.public_key_hex, "did": self.identity.did}

    async def setup(self) -> None:
        changed = await membership.register(
            self.client, self.subjects, self.worker_id, self.identity
        )
        log.info(
            "verifier %s %s pool membership (%s)",
            self.worker_id,
            "registered in" if changed else "already in",
            self.identity.did,
        )
        if not self.pinned_tallies:  # pinned tallies: no epoch rule, the pool is not read
            self._pool = membership.PoolWatcher(self.client, self.subjects)
            await self._pool.start()
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
        if self._pool is not None:
            await self._pool.stop()
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

    async def _pool_view(self, ballot: Ballot) -> membership.PoolView:
        """Our pool view, caught up to the ballot's epoch if it is ahead (a bounded
        wait for the watcher, which is asked to re-read at once). Reached only by
        ballots whose signature verified. The watcher follows every change of the
        bucket on its own, so a removed tally's ballots at the epoch it still knows
        stop being judged even when no newer ballot arrives."""
        assert self._pool is not None
        if ballot.epoch > self._pool.view.epoch:
            self.stats.count("epoch_catch_up")
            wait_s = min(EPOCH_CATCH_UP_MS, max(0, ballot.deadline_ms - now_ms())) / 1000
            await self._pool.wait_for_epoch(ballot.epoch, wait_s)
        return self._pool.view

    def _refuse(self, ballot: Ballot | None, code: str, detail: str = "") -> None:
        self.stats.count(f"ballot_refused_{code}")
        if ballot is None:
            log.warning("refused a ballot [%s]: %s", code, detail)
        else:
            log.warning(
                "refused ballot %s of tally %s [%s]%s",
                ballot.ballot_id,
                ballot.tally_id,
                code,
                f": {detail}" if detail else "",
            )

    async def _admit(self, ballot: Ballot, ballot_hash: bytes) -> bool:
        """Whether to judge ``ballot`` (refusals are counted and logged here)."""
        refusal: BallotRefusal | None = ballot_time_refusal(ballot, now_ms(), self.window)
        if refusal is None:
            refusal = ballot_signature_refusal(ballot, network=self.subjects.prefix)
        if refusal is None and self.pinned_tallies:
            refusal = ballot_signer_refusal(
                ballot,
                tally_keys=self.pinned_tallies.values(),
                record_key=self.pinned_tallies.get(ballot.tally_id),
            )
        elif refusal is None:
            view = await self._pool_view(ballot)
            refusal = ballot_epoch_refusal(ballot.epoch, view.epoch)
            if refusal is None:
                record = membership.tally_record_key(ballot.tally_id)
                holder = next(
                    (
                        m.public_key
                        for m in view.tallies
                        if m.worker_id == record and m.status == membership.ACTIVE
                    ),
                    None,
                )
                refusal = ballot_signer_refusal(
                    ballot, tally_keys=view.tally_keys, record_key=holder
                )
        if refusal is None and not self._memory.has_room(64 * len(ballot.requests) + 512, now_ms()):
            refusal = BallotRefusal.OVERLOADED
        if refusal is not None:
            self._refuse(ballot, refusal.value)
            return False
        return True

    async def _on_ballot(self, msg: Msg) -> None:
        started = time.perf_counter()
        try:
            ballot = Ballot.decode(msg.data)
        except CodecError as exc:
            self._refuse(None, exc.code, str(exc))
            return
        votes_subject = self.subjects.votes(ballot.tally_id)
        ballot_hash = hashlib.sha256(msg.data).digest()
        seen = self._memory.lookup(ballot.tally_id, ballot.ballot_id, ballot_hash)
        if isinstance(seen, bytes):  # a re-delivered ballot gets the very same vote
            self.stats.count("ballot_repeated")
            await self.client.publish(votes_subject, seen)
            return
        if seen is not None:  # never sign a second vote for one ballot id
            self._refuse(ballot, seen.value, "other contents under a ballot id already voted on")
            return
        if not await self._admit(ballot, ballot_hash):
            return
        ok = True
        spans = self._ballot_spans(msg, ballot) if tracing_active() else []
        try:
            state_rev, state = await self._judged_state(ballot, now_ms())
            # one "now" for every verifier: the ballot's (admitted only within our skew)
            entries = [judge(raw, state, ballot.issued_ms) for raw in ballot.requests]
            data = sign_vote(
                self.identity,
                ballot,
                entries,
                now_ms(),
                state_rev=state_rev,
                network=self.subjects.prefix,
            ).encode()
            self._memory.remember(
                ballot.tally_id,
                ballot.ballot_id,
                ballot_hash,
                self.window.remember_until(ballot),
                data,
            )
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
            await self.client.publish(votes_subject, data, headers=headers)
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
