"""The bus between nodes: in-process checks, then three nodes as separate processes.

The process tests run ``run.py --port P`` three times on one MongoDB wire-protocol server.
The module starts its own embedded server on a fixed data folder and port (so that a test
can restart it in place) and three nodes at once on a fresh database; every test gets the
three nodes running (a node a test killed is started again) and uses its own users and
roles (a broadcast reaches every later member of its audience).
Heartbeats are fast (0.5 s, a node dead after 4 s: a live node would have to miss eight in
a row on a loaded machine to be taken for dead) so that bounds are checked in seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from server.app.metrics import METRICS
from server.app.store import connect
from server.ops.embedded import EmbeddedMongo, free_port
from tests.conftest import ALL_SCOPES
from tests.nodes import Nodes, make_key
from tests.support import WAIT, Api, ApiError, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio
slow = pytest.mark.slow  # the tests that start processes

HEARTBEAT, TIMEOUT = 0.5, 4.0
BOUND = TIMEOUT + HEARTBEAT + 4.0  # dead node gone from presence: timeout, a beat, slack


class Cluster(Nodes):
    """The embedded server of this module and three node processes on it."""

    def __init__(self, folder: Path):
        self.embedded = EmbeddedMongo(folder / "mongo", port=free_port())
        env = {
            "NOTIFY_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "NOTIFY_NODE_TIMEOUT_SECONDS": str(TIMEOUT),
            "NOTIFY_MONGODB_TIMEOUT_MS": "1000",
        }
        super().__init__(self.embedded.uri, f"cluster_{uuid.uuid4().hex[:10]}", folder, 3, env)
        self.key = ""

    def stop(self) -> None:
        super().stop()
        self.embedded.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.embedded.start()
    try:
        c.start()  # all three at once on a fresh database: index creation races
        c.key = asyncio.run(make_key(c.uri, c.db))
        yield c
    finally:
        c.stop()


@pytest.fixture
def nodes(cluster):
    """The cluster with its database and all three nodes running."""
    if cluster.embedded.running() is None:
        cluster.embedded.start()
    for i, proc in enumerate(cluster.procs):
        if proc is None or proc.poll() is not None:
            cluster.start_node(i)
    for i in range(3):
        cluster.wait_ready(i)
    return cluster


def apis(c: Cluster) -> list[Api]:
    return [Api(c.url(i), c.key) for i in range(3)]


class Device:
    """A client as the contract describes it: keeps its last cursor, reconnects with since."""

    def __init__(self, api: Api, url: str, user_id: str):
        self.api, self.url, self.user_id = api, url, user_id
        self.ids: list[str] = []
        self.cursor: str | None = None
        self.sock: Socket | None = None

    async def connect(self, url: str | None = None) -> dict:
        self.url = url or self.url
        token = await self.api.token(self.user_id)
        self.sock = await Socket.open(self.url, token, since=self.cursor)
        return await self.sock.expect("welcome")

    async def collect(self, wanted: list[str], timeout: float = 15.0) -> None:
        """Read until every wanted id arrived (reconnecting to the same node if closed)."""
        deadline = time.monotonic() + timeout
        while not set(wanted) <= set(self.ids):
            left = deadline - time.monotonic()
            assert left > 0, f"{self.user_id} missing {set(wanted) - set(self.ids)}"
            try:
                frame = await self.sock.recv(min(left, 1.0))
            except TimeoutError:
                continue
            if frame is None:
                await self.connect()
            else:
                self.take(frame)

    def take(self, frame: dict) -> None:
        if frame["type"] == "notification":
            self.ids.append(frame["notification"]["id"])
            self.cursor = frame["notification"]["cursor"]


@slow
async def test_three_nodes_started_together_share_one_set_of_indexes(nodes):
    client = connect(nodes.embedded.uri, 3000)
    try:
        db = client[nodes.db]
        for coll, wanted in [
            (db.notifications, {("seq",), ("user_id", "seq"), ("audience", "seq"), ("purge_at",)}),
            (db.presence, {("user_id",), ("owner",), ("node_id",)}),
        ]:
            found = await (await coll.list_indexes()).to_list()
            keys = [tuple(i["key"]) for i in found]  # names differ on the embedded server
            assert wanted <= set(keys) and len(keys) == len(set(keys)), keys
        unique = {tuple(i["key"]) for i in found if i.get("unique")}
        seq = await (await db.notifications.list_indexes()).to_list()
        assert any(tuple(i["key"]) == ("seq",) and i.get("unique") for i in seq)
        assert unique <= {("_id",)}
    finally:
        await client.close()
    for api in apis(nodes):
        stats = await api.get("/v1/ws/stats")
        assert [n["node_id"] for n in stats["nodes"]] == ["node-0", "node-1", "node-2"]


@slow
async def test_a_notification_created_anywhere_reaches_every_node_once(nodes):
    a, b, c = apis(nodes)
    socks = []
    for i, api in enumerate((a, b, c)):
        socks.append(await Socket.open(nodes.url(i), await api.token("x-1", ["x-role"])))
    other = await Socket.open(nodes.url(0), await a.token("x-2", ["x-other"]))
    for s in [*socks, other]:
        await s.expect("welcome")
    created = await b.notify("x-1", "From node 1")
    for s in socks:
        assert (await s.expect("notification"))["notification"]["id"] == created["id"]
    sent = await c.post(
        "/v1/broadcasts", {"audience": "x-role", "title": "T", "message": "M"}, expect=201
    )
    for s in socks:
        assert (await s.expect("notification"))["notification"]["id"] == sent["id"]
    last = await a.notify("x-1", "sentinel")
    for s in socks:  # no second copy anywhere before it
        assert (await s.expect("notification"))["notification"]["id"] == last["id"]
    mine = await a.notify("x-2", "sentinel")  # and none of x-1's for the other user
    assert (await other.expect("notification"))["notification"]["id"] == mine["id"]


@slow
async def test_read_on_node_0_updates_the_unread_count_on_node_2(nodes):
    a, b, c = apis(nodes)
    phone = await Socket.open(nodes.url(0), await a.token("r-1"))
    laptop = await Socket.open(nodes.url(2), await c.token("r-1"))
    await phone.expect("welcome")
    await laptop.expect("welcome")
    first = await b.notify("r-1")
    await b.notify("r-1")
    for s in (phone, laptop):
        await s.expect("notification")
        await s.expect("notification")
    phone.send({"type": "read", "id": first["id"]})
    assert (await laptop.expect("read"))["ids"] == [first["id"]]
    assert (await laptop.expect("unread_count"))["count"] == 1
    await b.post("/v1/users/r-1/notifications/read-all")
    assert (await laptop.expect("unread_count"))["count"] == 0
    assert (await phone.expect("unread_count"))["count"] == 1  # its own read, first
    assert (await phone.expect("unread_count"))["count"] == 0


@slow
async def test_kill_9_a_node_its_clients_move_and_miss_nothing(nodes):
    a, b, _ = apis(nodes)
    users = ["k-1", "k-2", "k-3"]
    devices = [Device(a, nodes.url(2), u) for u in users]
    for d in devices:
        await d.connect()
    ghost = await Socket.open(nodes.url(2), await a.token("k-ghost"))  # will not come back
    await ghost.expect("welcome")
    query = {"user_ids": ",".join([*users, "k-ghost"])}
    await _until(lambda: _online(a, query, 4))
    created: dict[str, list[str]] = {u: [] for u in users}

    async def send() -> None:
        for n in range(30):
            user = users[n % 3]
            created[user].append((await a.notify(user, f"n{n}"))["id"])
            await asyncio.sleep(0.03)

    async def read_until_closed(d: Device) -> None:
        while (frame := await d.sock.recv(10)) is not None:
            d.take(frame)

    async def ghost_gone() -> float:
        await _until(lambda: _offline(b, "k-ghost"), BOUND + 5)
        return time.monotonic()

    sender = asyncio.create_task(send())
    readers = [asyncio.create_task(read_until_closed(d)) for d in devices]
    while sum(len(v) for v in created.values()) < 10:
        await asyncio.sleep(0.01)
    nodes.kill(2)
    killed_at = time.monotonic()
    gone = asyncio.create_task(ghost_gone())
    await asyncio.wait_for(asyncio.gather(*readers), WAIT)
    for d in devices:  # reconnect elsewhere with the last cursor seen
        await d.connect(nodes.url(1))
    await sender
    for d in devices:  # a last one each: nothing came twice before it
        created[d.user_id].append((await a.notify(d.user_id, "sentinel"))["id"])
        await d.collect(created[d.user_id])
        assert d.ids == created[d.user_id], "missed, duplicated or out of order"
    # The ghost's only node died without cleanup: it goes offline within the bound.
    assert await gone - killed_at <= BOUND
    stats = await b.get("/v1/ws/stats")
    assert "node-2" not in [n["node_id"] for n in stats["nodes"]]
    assert (await b.get("/v1/presence", query={"user_ids": "k-1"}))["k-1"]["online"]


@slow
async def test_database_restart_the_bus_resumes_and_nothing_is_lost(nodes):
    a, b, c = apis(nodes)
    devices = [Device(api, nodes.url(i), "d-1") for i, api in enumerate((a, b, c))]
    for d in devices:
        await d.connect()
    created = [(await a.notify("d-1", "before"))["id"] for _ in range(3)]
    for d in devices:
        await d.collect(created)

    def gaps(i: int) -> float:
        return nodes.metric(i, "notify_bus_gaps_total", 'collection="notifications"')

    def restarts(i: int) -> float:
        return nodes.metric(i, "notify_bus_restarts_total", 'how="error"')

    before = [gaps(i) for i in range(3)]
    restarts_before = [restarts(i) for i in range(3)]
    nodes.embedded.stop()
    down = {"user_id": "d-1", "type": "custom", "title": "while down", "message": "m"}
    await b.post("/v1/notifications", down, expect=503)
    for i in range(3):  # every node's change streams broke (not only a request's wait)
        await _until(lambda i=i: _above(restarts(i), restarts_before[i]), WAIT)
    nodes.embedded.start()
    # Right away, through every node, while their streams may still be reopening.
    for api in (c, b, a):
        created.append(await _create_when_up(api, "d-1"))
    for d in devices:
        await d.collect(created, timeout=20)
        assert len(d.ids) == len(set(d.ids)), "a notification came twice"
    for i in range(3):  # each node's bus noticed, reopened and caught up (or is about to)
        await _until(lambda i=i: _above(gaps(i), before[i]))
    # Read state still crosses nodes after the restart.
    devices[0].sock.send({"type": "read_all"})
    assert (await devices[2].sock.expect("unread_count", 10))["count"] == 0


async def _create_when_up(api: Api, user: str, timeout: float = 15.0) -> str:
    """Create a notification, retrying while the node still answers 503 after the restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await api.notify(user, "after"))["id"]
        except ApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _above(value: float, floor: float) -> bool:
    return value > floor


async def _online(api: Api, query: dict, count: int) -> bool:
    answer = await api.get("/v1/presence", query=query)
    return sum(1 for v in answer.values() if v["online"]) == count


async def _offline(api: Api, user: str) -> bool:
    return not (await api.get("/v1/presence", query={"user_ids": user}))[user]["online"]


async def _until(check, timeout: float = WAIT) -> None:
    await wait_for(check, timeout, what="not within the bound")


# ---- the bus, with in-process nodes (fast) ---------------------------------------------


async def test_a_break_with_an_unusable_token_is_caught_up_by_seq(settings, mongo_uri, monkeypatch):
    a = await serve_node(settings.with_(node_id="bus-a"), mongo_uri)
    b = await serve_node(settings.with_(node_id="bus-b"), mongo_uri)
    try:
        key, _ = await a.node.api_keys.create("t", ALL_SCOPES)
        api_a, api_b = Api(a.url, key), Api(b.url, key)
        sock = await Socket.open(a.url, await api_a.token("bus-u"))
        await sock.expect("welcome")
        # Hold node A's stream closed, with a token it cannot resume from, while B stores one.
        gate, watch = asyncio.Event(), a.node.store.watch

        async def held(collection: str, token: dict | None, **kw):
            await gate.wait()
            return await watch(collection, token, **kw)

        monkeypatch.setattr(a.node.store, "watch", held)
        gaps = _sample("notify_bus_gap_items_total", {"collection": "notifications"})
        a.node.bus.tokens["notifications"] = {"_data": "not-a-token"}
        await a.node.bus._streams["notifications"].close()
        created = await api_b.notify("bus-u", "while A was not following")
        await sock.nothing(0.3)
        gate.set()
        assert (await sock.expect("notification"))["notification"]["id"] == created["id"]
        # Counted once the catch-up is done (the frame may arrive before it has finished).
        labels = {"collection": "notifications"}
        await _until(lambda: _above(_sample("notify_bus_gap_items_total", labels), gaps))
        assert _sample("notify_bus_gap_items_total", labels) == gaps + 1
        # And the stream works again afterwards.
        again = await api_b.notify("bus-u", "live again")
        assert (await sock.expect("notification"))["notification"]["id"] == again["id"]
    finally:
        await b.stop()
        await a.stop()


async def test_stream_only_delivery_reaches_local_sockets(settings, mongo_uri):
    running = await serve_node(settings.with_(direct_delivery=False), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("t", ALL_SCOPES)
        api = Api(running.url, key)
        sock = await Socket.open(running.url, await api.token("so-u"))
        await sock.expect("welcome")
        created = [await api.notify("so-u", f"n{i}") for i in range(4)]
        got = [(await sock.expect("notification"))["notification"]["id"] for _ in range(4)]
        assert got == [c["id"] for c in created]  # each once: the 4th is no copy of the 3rd
    finally:
        await running.stop()


def _sample(name: str, labels: dict) -> float:
    """A metric of this process (in-process nodes share one registry)."""
    return METRICS.registry.get_sample_value(name, labels) or 0.0
