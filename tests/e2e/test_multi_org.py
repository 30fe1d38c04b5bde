"""Multi-organization deployment: accounts on a hub, one organization behind a leafnode.

The layout of deploy/nats/accounts.conf and leafnode.conf, rendered for a
test prefix and random ports: the CONSORTIUM account runs the tally and owns
the pool; ORG_A runs verifiers v1, v2 connected to the hub in its own
account; ORG_B runs v3, v4 connected to ORG_B's own leafnode server. The
consortium registers the four verifier keys in ITS membership bucket (the
organizations' self-registrations land in their own accounts and count for
nothing). A client in the consortium gets VALID certificates with votes from
both organizations, and the account boundary holds: ORG_A cannot see ORG_B's
votes and its forged decision never reaches the consortium.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from bus import membership
from bus.client import VerifyClient, signed_request
from bus.config import NatsConfig
from bus.connection import barrier, connect
from bus.natsserver import NatsServer, start_nats_server
from bus.subjects import Subjects
from schemas.identity import AgentIdentity, did_key
from schemas.messages import Vote
from tests.e2e.test_nats_cluster import free_ports
from tests.helpers import ROOT, Cluster
from tests.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def hub_conf(p: str, port: int, leaf_port: int, store: Path) -> str:
    def org(name: str, user: str) -> str:
        return f"""  {name}: {{
    jetstream: enabled
    users: [ {{ user: "{user}", password: "{user}-pw" }} ]
    exports: [ {{ stream: "{p}.vote.>" }}, {{ stream: "{p}.heartbeat.>" }} ]
    imports: [
      {{ stream: {{ account: CONSORTIUM, subject: "{p}.ballot" }} }}
      {{ service: {{ account: CONSORTIUM, subject: "{p}.verify.request" }} }}
    ]
  }}
"""

    return f"""server_name: hub
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}", domain: hub }}
leafnodes {{ listen: 127.0.0.1:{leaf_port} }}
accounts {{
  CONSORTIUM: {{
    jetstream: enabled
    users: [ {{ user: "consortium", password: "consortium-pw" }} ]
    exports: [
      {{ stream: "{p}.ballot" }}
      {{ service: "{p}.verify.request" }}
    ]
    imports: [
      {{ stream: {{ account: ORG_A, subject: "{p}.vote.>" }} }}
      {{ stream: {{ account: ORG_B, subject: "{p}.vote.>" }} }}
    ]
  }}
{org("ORG_A", "org_a")}{org("ORG_B", "org_b")}}}
"""


def leaf_conf(port: int, hub_leaf_port: int, store: Path) -> str:
    return f"""server_name: org-b-leaf
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}", domain: orgb }}
leafnodes {{
  remotes: [ {{ url: "nats-leaf://org_b:org_b-pw@127.0.0.1:{hub_leaf_port}" }} ]
}}
"""


def with_user(url: str, user: str) -> str:
    return url.replace("nats://", f"nats://{user}:{user}-pw@")


@pytest.fixture
def hub_and_leaf(tmp_path: Path) -> Iterator[tuple[NatsServer, NatsServer, str]]:
    prefix = f"m{uuid.uuid4().hex[:10]}"
    port, leaf_listen, leaf_port = free_ports(3)
    servers: list[NatsServer] = []
    try:
        d = tmp_path / "hub"
        d.mkdir()
        (d / "hub.conf").write_text(hub_conf(prefix, port, leaf_listen, d / "js"))
        servers.append(
            start_nats_server(d, port=port, jetstream=False, extra_args=["-c", str(d / "hub.conf")])
        )
        d = tmp_path / "leaf"
        d.mkdir()
        (d / "leaf.conf").write_text(leaf_conf(leaf_port, leaf_listen, d / "js"))
        servers.append(
            start_nats_server(
                d, port=leaf_port, jetstream=False, extra_args=["-c", str(d / "leaf.conf")]
            )
        )
        yield servers[0], servers[1], prefix
    finally:
        for server in servers:
            server.stop()


async def test_two_organizations_decide_through_accounts_and_a_leafnode(
    hub_and_leaf: tuple[NatsServer, NatsServer, str], tmp_path: Path
) -> None:
    hub, leaf, prefix = hub_and_leaf
    s = Subjects(prefix)
    consortium = NatsConfig(url=with_user(hub.url, "consortium"), prefix=prefix)
    org_a_url = with_user(hub.url, "org_a")
    orgs = {"v1": org_a_url, "v2": org_a_url, "v3": leaf.url, "v4": leaf.url}
    procs: list[Cluster] = []
    # an organization's verifiers cannot read the consortium's pool (another account),
    # so its operator pins the consortium tally's key: ballots signed by anyone else
    # get no vote
    tally_key = AgentIdentity.load_or_create(tmp_path / "t" / "keys" / "tally-t1.key")
    try:
        for vid, url in orgs.items():
            c = Cluster(nats_url=url, prefix=prefix, data_dir=tmp_path / vid)
            c.data_dir.mkdir()
            c.start_verifier(vid, "--tally-key", f"t1={tally_key.public_key_hex}")
            procs.append(c)
        # each organization's verifier registers in its own account's bucket
        # (meaningless for the consortium); wait for that as the sign it is up
        # (two verifiers per organization share that bucket: wait for both)
        for c in procs:
            await c.wait_pool(2, timeout=40)
        keys = {
            vid: AgentIdentity.load(c.data_dir / "keys" / f"verifier-{vid}.key").public_key
            for vid, c in zip(orgs, procs, strict=True)
        }
        # the consortium admits the four keys into ITS pool
        admin = await connect(consortium, name="consortium-admin")
        try:
            for vid, key in keys.items():  # the operator command, as a process
                arg = key.hex() if vid != "v4" else did_key(key)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "workers.cli",
                    "admit",
                    vid,
                    arg,
                    "--json",
                    "--nats-url",
                    consortium.url,
                    "--prefix",
                    prefix,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await proc.communicate()
                assert proc.returncode == 0 and json.loads(out)["changed"] is True
            pool = await membership.read_pool(admin, s)
            assert len(pool.keys) == 4
            tally = Cluster(nats_url=consortium.url, prefix=prefix, data_dir=tmp_path / "t")
            tally.start_tally("t1")
            procs.append(tally)
            await tally.wait_tally(timeout=40)

            # account isolation: ORG_A sees neither ORG_B's votes nor reaches decisions
            org_a = await connect(NatsConfig(url=org_a_url, prefix=prefix), name="org-a-spy")
            seen_by_a: list[Msg] = []
            decisions: list[Msg] = []

            async def spy(msg: Msg) -> None:
                seen_by_a.append(msg)

            async def on_decision(msg: Msg) -> None:
                decisions.append(msg)

            await org_a.subscribe(s.votes_all, cb=spy)
            await admin.subscribe(s.decisions_all, cb=on_decision)
            await barrier(org_a)
            await barrier(admin)

            agent = AgentIdentity.generate()
            async with await VerifyClient.connect(consortium, timeout=15) as client:
                results = await client.verify_many(
                    [signed_request(agent, f"pay {i}") for i in range(10)]
                )
            assert [getattr(r, "decision", r) for r in results] == ["VALID"] * 10
            voters = {v.verifier_key for r in results for v in r.votes}  # type: ignore[union-attr]
            assert voters & {keys["v1"], keys["v2"]} and voters & {keys["v3"], keys["v4"]}, (
                "votes from both organizations"
            )

            await eventually(lambda: bool(seen_by_a), "ORG_A to see its own votes")
            a_keys = {keys["v1"], keys["v2"]}
            for msg in seen_by_a:
                assert Vote.decode(msg.data).verifier_key in a_keys
            before = len(decisions)
            await org_a.publish(s.decision("VALID"), b"forged by ORG_A")
            await barrier(org_a)
            await asyncio.sleep(0.5)  # time is the subject: the forgery never arrives
            assert all(m.data != b"forged by ORG_A" for m in decisions[before:])
            await org_a.close()
        finally:
            await admin.close()
    finally:
        for c in procs:
            c.stop_all()
