"""``cluster``: three nodes on one database (``run.py --nodes 3``), 2,000 sockets on each.

Latency across nodes: notifications are posted to the first node at 200/s (open-loop, as in
``latency``), each to a random user connected to the second or the third node; the client
subtracts the sender's stamp from its own clock when the frame arrives, so a figure is the
POST, the write, the change stream to the other node, and its socket.

Then the storm: the third node is killed with SIGKILL; while its clients are away, 10
notifications each are stored (through the first node, in batches); then every one of them
reconnects at once with ``since=<last cursor>``, dealt over the two nodes left, and checks
its replay as in ``reconnect`` (none lost, none twice, in order). Measured: the time from
the first reconnect until the last client has ``replay_done``. The floor is the same number
of plain reconnects to the bare server, in the same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.clients import LoadClients
from bench.latency import Offer, service_sender
from bench.profile import profiled
from bench.reconnect import MISSED
from bench.report import Options, Report, cpu_line, ms, pct
from bench.service import HOST, Baseline, Service, cpu_seconds

NODES = 3
DEFAULT_PER_NODE = 2_000
RATE = 200
DEFAULT_SECONDS = 10.0
WARM_UP = 2.0
SETTLE = 2.0
BATCH = 1000
TARGET_P99 = 0.100  # seconds, POST on one node to the frame on another
STORM_OVER_FLOOR = 3.0  # the single-node reconnect target: 3x the bare server's reconnects


@dataclass
class NodeProc:
    """One node of the local cluster, as the load clients see it."""

    port: int
    pid: int | None
    welcomes: bool = True


def node_pids(parent: int) -> dict[int, int]:
    """The local cluster's node processes (``run.py --port P``) by port."""
    found: dict[int, int] = {}
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return found
    for pid in map(int, children):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and any(a.endswith(b"run.py") for a in args):
            found[int(args[args.index(b"--port") + 1])] = pid
    return found


class Cluster(Service):
    """``run.py --nodes 3``: its nodes, and CPU time summed over them and the database."""

    nodes: list[NodeProc]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: every node together, and the database."""
        pids = node_pids(self.proc.pid).values()
        return {
            "nodes": sum(cpu_seconds(pid) for pid in pids),
            "database": cpu_seconds(self.db_pid),
        }


async def pile_up(cluster: Cluster, users: list[str], out: Report) -> None:
    """``MISSED`` notifications per user, stored through the first node."""
    api = cluster.api()
    started = time.monotonic()
    try:
        for i in range(MISSED):
            for at in range(0, len(users), BATCH):
                body = {"user_ids": users[at : at + BATCH], "type": "custom",
                        "title": f"Missed {i}", "message": "Stored while you moved.",
                        "data": {"i": i}}  # fmt: skip
                await api.json("POST", "/v1/notifications", body, expect=201)
    finally:
        api.close()
    seconds = time.monotonic() - started
    out.line(f"created {MISSED * len(users)} notifications while away in {seconds:.1f}s")


async def latency(cluster: Cluster, groups: list[LoadClients], users: list[str], opts, out):
    """POSTs to the first node for users of the others: p50, p99 and max, frames seen."""
    send = service_sender([0])
    port, key = cluster.port, cluster.key
    await Offer(port, key, send).run(users, RATE, min(WARM_UP, opts.timed(WARM_UP)))
    await asyncio.sleep(min(SETTLE, opts.timed(SETTLE)))
    for group in groups:
        await group.each("latencies")  # start clean
    offer = Offer(port, key, send)
    offered = await offer.run(users, RATE, opts.timed(DEFAULT_SECONDS))
    await asyncio.sleep(min(SETTLE, opts.timed(SETTLE)))
    lat = [x for g in groups for a in await g.each("latencies") for x in a["latencies"]]
    p99 = pct(lat, 99)
    out.line(
        f"across nodes at {RATE}/s (offered {offered:.0f}/s, posted to node 1, frames on "
        f"nodes 2 and 3): frames={len(lat)}/{offer.ok} p50={ms(pct(lat, 50))} p99={ms(p99)} "
        f"max={ms(max(lat, default=0))} | answer p50={ms(pct(offer.answers, 50))} "
        f"p99={ms(pct(offer.answers, 99))} failed={offer.failed}"
    )
    return p99


async def storm(
    cluster: Cluster, victims: LoadClients, users: list[str], out: Report, opts: Options
) -> dict:
    """SIGKILL the third node, pile up while its clients are away, move them to the others."""
    killed = cluster.nodes[-1]
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while sum(s["open"] for s in await victims.each("status")) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    out.line(f"node 3 (pid {killed.pid}) killed with SIGKILL; its {len(users)} clients are away")
    await pile_up(cluster, users, out)
    cpu_before = cluster.cpu()
    ports = [n.port for n in cluster.nodes[:-1]]
    async with profiled(opts, out, cluster.nodes[0].pid, "cluster-storm-node1"):
        answers = await victims.each(
            "reconnect", host=HOST, port=ports[0], ports=ports, expect=MISSED, concurrency=32,
            timeout=120,
        )  # fmt: skip
    out.line(cpu_line(cpu_before, cluster.cpu(), len(users), "moved client"))
    started = min(a["started"] for a in answers)
    lasts = [a["last"] for a in answers if a["last"] is not None]
    failed: dict[str, int] = {}
    for a in answers:
        for why, n in a["failed"].items():
            failed[why] = failed.get(why, 0) + n
    return {
        "seconds": (max(lasts) - started) if lasts else float("inf"),
        "caught_up": sum(a["caught_up"] for a in answers),
        "lost": sum(a["lost"] for a in answers),
        "duplicated": sum(a["duplicated"] for a in answers),
        "out_of_order": sum(a["out_of_order"] for a in answers),
        "failed": failed,
    }


async def floor_seconds(opts: Options, clients: LoadClients, count: int) -> float:
    """``count`` plain reconnects to the bare server (no auth, no replay)."""
    baseline = await Baseline.start(opts.workdir)
    try:
        paths = [baseline.socket_path(f"u{i}") for i in range(count)]
        await clients.connect(baseline, paths, concurrency=32)
        await clients.each("drop")
        await clients.each("close")
        floor = await clients.connect(baseline, paths, concurrency=32)
    finally:
        await clients.each("close")
        await baseline.stop()
    return floor["seconds"]


async def run(opts: Options, out: Report) -> None:
    """Three nodes: latency across them, then one killed and its clients moved."""
    per_node = opts.sized(DEFAULT_PER_NODE)
    users = [[f"n{n}u{i}" for i in range(per_node)] for n in range(NODES)]
    groups = [await LoadClients.start(per_node, 1) for _ in range(NODES)]
    try:
        cluster = await Cluster.start(opts.workdir, mongodb_uri=opts.mongodb_uri, nodes=NODES)
        try:
            pids = node_pids(cluster.proc.pid)
            cluster.nodes = [NodeProc(cluster.port + i, pids.get(cluster.port + i))
                             for i in range(NODES)]  # fmt: skip
            for node, group, mine in zip(cluster.nodes, groups, users, strict=True):
                got = await group.connect(node, [cluster.socket_path(u) for u in mine])
                out.line(f"node on port {node.port}: connected={got['connected']} "
                         f"failed={got['failed']}")  # fmt: skip
            async with profiled(opts, out, cluster.nodes[1].pid, "cluster-latency-node2"):
                p99 = await latency(cluster, groups[1:], users[1] + users[2], opts, out)
            moved = await storm(cluster, groups[-1], users[-1], out, opts)
        finally:
            for group in groups:
                await group.each("close")
            await cluster.stop()
        floor = await floor_seconds(opts, groups[-1], per_node)
    finally:
        for group in groups:
            await group.stop()
    out.line(
        f"storm: {moved['caught_up']}/{per_node} moved clients caught up in "
        f"{moved['seconds']:.2f}s ({MISSED} missed each) lost={moved['lost']} "
        f"duplicated={moved['duplicated']} out_of_order={moved['out_of_order']} "
        f"failed={moved['failed']}"
    )
    out.line(f"baseline floor: {per_node} plain reconnects to the bare server in {floor:.2f}s")
    out.line(f"ratio storm/baseline floor: {moved['seconds'] / floor:.1f}")
    out.target("p99_seconds_across_nodes", p99, TARGET_P99)
    out.target("storm_over_floor", moved["seconds"] / floor, STORM_OVER_FLOOR)
    lost = moved["lost"] + moved["duplicated"] + moved["out_of_order"]
    out.target("storm_lost_plus_duplicated", lost, 0)
    out.target("storm_not_caught_up", per_node - moved["caught_up"], 0)
