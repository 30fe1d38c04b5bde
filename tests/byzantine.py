"""A Byzantine verifier for tests, built only from the public schemas.

It registers in the pool like an honest verifier, then misbehaves on every
ballot according to ``--mode``:

  lie          flip every verdict, correctly signed (the classic traitor)
  equivocate   send an honest vote and a flipped one for the same ballot
  replay       answer each ballot with its previous ballot's vote, relabelled
  unknown-key  sign with a key that is not in the pool
  forge        claim an honest member's key but sign with its own
  garbage      send malformed MessagePack and oversized junk as votes

Run: python -m tests.byzantine --id b1 --mode lie  (NATS_URL, AP_PREFIX, AP_DATA_DIR)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from dataclasses import replace

from nats.aio.msg import Msg

from bus import membership
from bus.config import NatsConfig
from bus.connection import connect
from bus.subjects import Subjects
from schemas.identity import AgentIdentity
from schemas.messages import Ballot, Vote, VoteEntry
from schemas.votes import sign_vote
from workers.consensus.judge import judge

MODES = ("lie", "equivocate", "replay", "unknown-key", "forge", "garbage")


def flipped(entries: list[VoteEntry]) -> list[VoteEntry]:
    return [VoteEntry(e.request_id, e.digest, not e.valid, "LIE") for e in entries]


async def main(worker_id: str, mode: str) -> None:
    config = NatsConfig.from_env()
    subjects = Subjects(config.prefix)
    data_dir = os.environ.get("AP_DATA_DIR", ".")
    me = AgentIdentity.load_or_create(f"{data_dir}/keys/byzantine-{worker_id}.key")
    stranger = AgentIdentity.generate()
    nc = await connect(config, name=f"byzantine-{worker_id}")
    await membership.register(nc, subjects, worker_id, me)
    previous: list[bytes] = []
    victims: list[bytes] = []

    net = subjects.prefix

    def sign(who: AgentIdentity, ballot: Ballot, entries: list[VoteEntry], ts: int) -> Vote:
        return sign_vote(who, ballot, entries, ts, network=net)

    async def on_ballot(msg: Msg) -> None:
        ballot = Ballot.decode(msg.data)
        honest = [judge(raw, now_ms=ballot.issued_ms) for raw in ballot.requests]
        ts = time.time_ns() // 1_000_000
        if mode == "lie":
            out = [sign(me, ballot, flipped(honest), ts).encode()]
        elif mode == "equivocate":
            out = [
                sign(me, ballot, honest, ts).encode(),
                sign(me, ballot, flipped(honest), ts).encode(),
            ]
        elif mode == "replay":  # an old signed vote, relabelled for this ballot
            out = [
                replace(Vote.decode(old), ballot_id=ballot.ballot_id).encode()
                for old in previous[-1:]
            ]
            previous.append(sign(me, ballot, flipped(honest), ts).encode())
        elif mode == "unknown-key":
            out = [sign(stranger, ballot, flipped(honest), ts).encode()]
        elif mode == "forge":
            if not victims:
                pool = await membership.read_pool(nc, subjects)
                victims.extend(sorted(k for k in pool.keys if k != me.public_key))
            vote = sign(me, ballot, flipped(honest), ts)
            out = [replace(vote, verifier_key=victims[0]).encode()]
        else:
            out = [b"\xc1\xc1", b"\x92\x01", b"\xdb" + b"\xff" * 8]
        for data in out:  # where honest verifiers send votes (ballots carry no reply)
            await nc.publish(subjects.votes(ballot.tally_id), data)

    await nc.subscribe(subjects.ballot, cb=on_ballot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.id, args.mode))
