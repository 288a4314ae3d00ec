"""Storage faults: MongoDB stopped, hung or refusing a write halfway, during traffic.

Each test runs its own embedded database server (a data folder and a port it controls) so
that it can stop, freeze and restart it; the nodes under test must answer 503 in bounded
time, keep their sockets, write nothing half, and recover by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import pytest
import pytest_asyncio
from pymongo import ASCENDING, AsyncMongoClient, monitoring
from tornado.httpclient import HTTPRequest

from server.app.errors import StorageUnavailable
from server.app.metrics import METRICS
from server.app.store import is_hidden
from server.app.timeutil import utcnow
from server.ops.embedded import EmbeddedMongo, free_port
from tests.conftest import ALL_SCOPES
from tests.support import WAIT, Api, Socket, serve_node, stop_node, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]  # each test starts a database server

# Short timeouts so that the test is quick; the bound checked below follows from them. The
# slack is generous (a loaded machine): without the timeouts a call would hang for the
# client's 30 s, so the bound still tells the two apart.
TIMEOUTS = {"mongodb_timeout_ms": 800, "storage_timeout": 1.0}
BOUND = 2 * TIMEOUTS["storage_timeout"] + 6.0  # a queued write, then its own write, plus slack


class Database:
    """An embedded database server this test can stop, freeze and restart on one port."""

    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.server = EmbeddedMongo(folder, self.port)

    @property
    def uri(self) -> str:
        return self.server.uri

    def start(self) -> None:
        self.server = EmbeddedMongo(self.folder, self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def freeze(self) -> None:
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.server.process.pid, signal.SIGCONT)


@pytest_asyncio.fixture
async def database(tmp_path):
    db = Database(tmp_path / "db")
    db.start()
    yield db
    with contextlib.suppress(Exception):
        db.thaw()
    db.stop()


@pytest_asyncio.fixture
async def nodes(database, settings):
    first = await serve_node(settings.with_(**TIMEOUTS, node_id="a"), database.uri)
    second = await serve_node(settings.with_(**TIMEOUTS, node_id="b"), database.uri)
    yield first, second
    # A node that cannot stop (say, hung on the database) fails the test, with the stacks
    # of its tasks: never hidden.
    stopped = await asyncio.gather(
        *(stop_node(running) for running in (first, second)), return_exceptions=True
    )
    failed = [str(e) for e in stopped if isinstance(e, BaseException)]
    assert not failed, "a node did not stop cleanly:\n" + "\n".join(failed)


async def wait_ready(api: Api, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        resp = await api.client.fetch(api.base_url + "/readyz", raise_error=False)
        if resp.code == 200:
            return
        assert time.monotonic() < deadline, "did not recover"
        await asyncio.sleep(0.2)


async def timed(coro) -> tuple[object, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


async def titles_in_feed(api: Api, user_id: str) -> list[str]:
    feed = await api.get(f"/v1/users/{user_id}/notifications", query={"limit": 200})
    return [n["title"] for n in feed["items"]]


async def still_open(sock: Socket) -> None:
    sock.send({"type": "ping"})
    await sock.expect("pong", timeout=3)


async def test_database_stopped_and_restarted_during_traffic(database, nodes):
    first, second = nodes
    key, _ = await first.node.api_keys.create("t", ALL_SCOPES)
    api_a, api_b = Api(first.url, key), Api(second.url, key)
    on_a = await Socket.open(first.url, await api_a.token("p-1"))
    on_b = await Socket.open(second.url, await api_b.token("p-1"))
    await on_a.expect("welcome")
    await on_b.expect("welcome")
    errors_before = METRICS.registry.get_sample_value("notify_storage_errors_total") or 0

    outcomes: dict[str, int] = {}
    stop_traffic = asyncio.Event()

    async def traffic(api: Api, name: str) -> None:
        i = 0
        while not stop_traffic.is_set():
            title = f"{name}-{i}"
            body = {"user_ids": ["p-1", "p-2"], "type": "custom", "title": title, "message": "m"}
            outcomes[title] = await send(api, "POST", "/v1/notifications", body)
            i += 1
            await asyncio.sleep(0.05)

    loops = [asyncio.create_task(traffic(api_a, "a")), asyncio.create_task(traffic(api_b, "b"))]
    await wait_for(lambda: answered(outcomes, 201, "a-", "b-"), what="traffic before the outage")

    database.stop()
    (status, _), took = await timed(send(api_a, "POST", "/v1/notifications", one("p-1", "down")))
    assert status == 503 and took < BOUND
    (status, error), took = await timed(send(api_b, "GET", "/readyz"))
    assert status == 503 and error["code"] == "storage_unavailable" and took < BOUND
    (status, _), _ = await timed(send(api_a, "GET", "/readyz"))
    assert status == 503
    await still_open(on_a)
    await still_open(on_b)
    await wait_for(lambda: answered(outcomes, 503, "a-", "b-"), what="traffic meeting the outage")

    database.start()
    await wait_ready(api_a)
    await wait_ready(api_b)
    after_outage = len(outcomes)
    await wait_for(
        lambda: answered(dict(list(outcomes.items())[after_outage:]), 201, "a-", "b-"),
        what="traffic after the outage",
    )
    stop_traffic.set()
    await asyncio.gather(*loops)

    # Recovered by itself: a write on either node reaches the sockets on both.
    (status, made), _ = await timed(send(api_b, "POST", "/v1/notifications", one("p-1", "after")))
    assert status == 201 and made["title"] == "after"
    await wait_for_title(on_a, "after")
    await wait_for_title(on_b, "after")
    await still_open(on_a)

    statuses = {status for status, _ in outcomes.values()}
    assert statuses <= {201, 503}, statuses
    assert 201 in statuses and 503 in statuses, statuses
    stored = set(await titles_in_feed(Api(first.url, key), "p-1"))
    also = set(await titles_in_feed(Api(first.url, key), "p-2"))
    for title, (status, data) in outcomes.items():
        if status == 201:
            assert len(data) == 2 and title in stored and title in also, title
        else:  # all or nothing: a refused request shows nowhere
            assert title not in stored and title not in also, title
    refused = {t for t, (s, _) in outcomes.items() if s == 503}
    seen = {f["notification"]["title"] for f in on_a.frames if f["type"] == "notification"}
    assert not refused & seen, refused & seen
    assert (METRICS.registry.get_sample_value("notify_storage_errors_total") or 0) > errors_before


READS = [
    "/v1/users/p-1/notifications",
    "/v1/users/p-1/unread-count",
    "/v1/presence?user_ids=p-1",
    "/v1/ws/stats",
]


async def test_reads_are_503_while_the_database_is_down(database, settings):
    # The key is trusted from the node's cache during the outage, so each read reaches
    # its own storage call (not only the key lookup) and must answer 503 by itself.
    running = await serve_node(
        settings.with_(**TIMEOUTS, api_key_cache_seconds=600.0), database.uri
    )
    try:
        key, _ = await running.node.api_keys.create("t", ALL_SCOPES)
        api = Api(running.url, key)
        await api.notify("p-1", "before")
        for path in READS:
            assert (await send(api, "GET", path))[0] == 200, path
        database.stop()
        for path in READS:
            (status, error), took = await timed(send(api, "GET", path))
            assert (status, error["code"]) == (503, "storage_unavailable"), (path, error)
            assert took < BOUND, (path, took)
        database.start()
        await wait_ready(api)
        assert [i["title"] for i in (await api.get(READS[0]))["items"]] == ["before"]
    finally:
        await stop_node(running)


async def test_database_that_hangs_gives_503_in_bounded_time_then_recovers(database, nodes):
    first, _ = nodes
    key, _ = await first.node.api_keys.create("t", ALL_SCOPES)
    api = Api(first.url, key)
    sock = await Socket.open(first.url, await (Api(first.url, key)).token("p-1"))
    await sock.expect("welcome")

    database.freeze()
    try:
        writes = [send(api, "POST", "/v1/notifications", one("p-1", f"hung-{i}")) for i in range(3)]
        results, took = await timed(asyncio.gather(*writes))
        assert [status for status, _ in results] == [503, 503, 503] and took < BOUND
        (status, _), took = await timed(send(api, "GET", "/readyz"))
        assert status == 503 and took < BOUND
        sock.send({"type": "read_all"})  # a frame that needs storage: an error, in time
        error, took = await timed(sock.expect("error", timeout=BOUND + 5))
        assert error["code"] == "storage_unavailable" and took < BOUND
        await still_open(sock)
    finally:
        database.thaw()

    await wait_ready(api)
    assert first.node.sequencer.clean
    (status, _), _ = await timed(send(api, "POST", "/v1/notifications", one("p-1", "thawed")))
    assert status == 201
    await wait_for_title(sock, "thawed")
    titles = await titles_in_feed(Api(first.url, key), "p-1")
    assert titles == ["thawed"]  # what MongoDB took late from the refused writes is hidden
    hung = [f for f in sock.frames if f["type"] == "notification"]
    assert [f["notification"]["title"] for f in hung] == ["thawed"]


async def test_a_request_still_queued_when_its_time_is_up_is_refused_and_never_sent(
    database, nodes, monkeypatch
):
    first, _ = nodes
    node = first.node
    key, _ = await node.api_keys.create("t", ALL_SCOPES)
    writing = asyncio.Event()
    append = node.store.append

    async def observed(docs: list[dict]):  # the real write, announced to the test
        writing.set()
        return await append(docs)

    monkeypatch.setattr(node.store, "append", observed)

    async def create(title: str) -> list[dict]:  # below HTTP: no key lookup in the way
        payload = {"type": "custom", "priority": "normal", "title": title, "message": "m"}
        return await node.notifications.create({**payload, "user_id": "p-1", "data": {}})

    await create("before")  # the writer knows its next seq: "stuck" goes out at once
    database.freeze()
    try:
        # The writer sends "stuck" to the frozen server, waits out its timeout, then tries
        # to hide it (a second more): "queued" waits behind it, and is refused after its
        # own timeout in the queue, not after a write of its own (2.6 s or more).
        writing.clear()
        stuck = asyncio.create_task(create("stuck"))
        await asyncio.wait_for(writing.wait(), WAIT)  # the writer is busy with "stuck"
        queued_at = time.monotonic()
        with pytest.raises(StorageUnavailable, match="did not answer in time"):
            await create("queued")
        assert time.monotonic() - queued_at < 2 * TIMEOUTS["storage_timeout"]
        with pytest.raises(StorageUnavailable):
            await stuck
    finally:
        database.thaw()

    await wait_ready(Api(first.url, key))
    assert node.sequencer.clean and not node.sequencer._waiting
    titles = {d["title"] for d in await node.store.notifications.find({}).to_list()}
    assert "queued" not in titles  # withdrawn from the queue: nothing written
    assert await titles_in_feed(Api(first.url, key), "p-1") == ["before"]


async def test_a_batch_refused_halfway_is_hidden_and_never_delivered(database, nodes):
    first, second = nodes
    key, _ = await first.node.api_keys.create("t", ALL_SCOPES)
    api = Api(first.url, key)
    # A unique index that the second copy of a notification breaks: MongoDB stores the
    # first recipient's copy, then refuses the rest of the batch.
    await first.node.store.notifications.create_index(
        [("data.slot", ASCENDING)], unique=True, sparse=True, name="test_slot"
    )
    socks = []
    for running, user in ((first, "p-1"), (first, "p-2"), (second, "p-1")):
        sock = await Socket.open(running.url, await Api(running.url, key).token(user))
        await sock.expect("welcome")
        socks.append(sock)

    body = {
        "user_ids": ["p-1", "p-2"],
        "type": "custom",
        "title": "half",
        "message": "m",
        "data": {"slot": 1},
    }
    status, error = await send(api, "POST", "/v1/notifications", body)
    assert status == 503 and error["code"] == "storage_unavailable"
    stored = await first.node.store.notifications.find({"title": "half"}).to_list()
    assert len(stored) == 1 and is_hidden(stored[0])  # it went in, and was hidden
    for user in ("p-1", "p-2"):
        assert await titles_in_feed(Api(first.url, key), user) == []
        count = await Api(first.url, key).get(f"/v1/users/{user}/unread-count")
        assert count == {"count": 0}

    status, made = await send(api, "POST", "/v1/notifications", one("p-1", "next"))
    assert status == 201
    for sock in (socks[0], socks[2]):
        frame = await sock.expect("notification")
        assert frame["notification"]["title"] == "next"  # not "half" first
        assert int(frame["notification"]["cursor"]) > stored[0]["seq"]
    status, last = await send(api, "POST", "/v1/notifications", one("p-2", "sentinel"))
    assert status == 201
    await socks[1].only_then(last["id"])  # p-2 never got "half"
    # A reconnect replaying from before the refused batch does not bring it back either.
    back = await Socket.open(first.url, await Api(first.url, key).token("p-1"), since="0")
    await back.expect("welcome")
    replayed = await back.expect("replay_done")
    titles = [f["notification"]["title"] for f in back.frames if f["type"] == "notification"]
    assert titles == ["next"] and replayed["cursor"] == made["cursor"]


async def test_a_write_stored_after_its_reply_was_lost_is_withheld_then_hidden(database, nodes):
    first, _ = nodes
    node = first.node
    key, _ = await node.api_keys.create("t", ALL_SCOPES)
    api = Api(first.url, key)
    sock = await Socket.open(first.url, await api.token("p-1"))
    await sock.expect("welcome")
    payload = {"type": "custom", "priority": "normal", "title": "lost", "message": "m"}
    doc = node.notifications.build({**payload, "data": {}}, utcnow(), user_id="p-1")
    doc["seq"] = await node.store.high_seq() + 1

    # Another connection stands for the service's lost write: it reaches MongoDB, which is
    # stuck; the writer gives up on it and cannot hide what it may have stored either.
    sent = Sent()
    other = AsyncMongoClient(database.uri, tz_aware=True, event_listeners=[sent])
    await other.admin.command("ping")  # connected: the insert goes out at once
    database.freeze()
    try:
        insert = asyncio.create_task(other[node.store.db.name].notifications.insert_one(doc))
        await wait_for(lambda: "insert" in sent.commands, what="the insert on its way")
        await node.sequencer._undo([doc])
        assert not node.sequencer.clean and doc["_id"] in node.hub.withheld
        assert (await send(api, "GET", "/readyz"))[0] == 503
    finally:
        database.thaw()
    await insert  # MongoDB stored it after all, and the change stream rings every node
    await other.close()

    await wait_ready(api)  # ready again only once the leftover is hidden
    assert node.sequencer.clean
    assert is_hidden(await node.store.get(doc["_id"]))
    await node.hub.catch_up()
    await sock.nothing()
    assert await titles_in_feed(api, "p-1") == []
    assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0


# ---- helpers ---------------------------------------------------------------------------


class Sent(monitoring.CommandListener):
    """The commands a client has started to send."""

    def __init__(self):
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def answered(outcomes: dict[str, tuple[int, Any]], status: int, *prefixes: str) -> bool:
    """Each traffic loop (by title prefix) got this status at least once."""
    return all(
        any(t.startswith(p) and s == status for t, (s, _) in outcomes.items()) for p in prefixes
    )


def one(user_id: str, title: str) -> dict:
    return {"user_id": user_id, "type": "custom", "title": title, "message": "m"}


async def send(api: Api, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    """A call that may answer any status: (status, data or error), the envelope checked."""
    req = HTTPRequest(
        api.base_url + path,
        method=method,
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
        body=None if method == "GET" else json.dumps(body or {}),
        request_timeout=30,
    )
    resp = await api.client.fetch(req, raise_error=False)
    envelope = json.loads(resp.body)
    assert envelope["success"] is (resp.code < 400), envelope
    return resp.code, envelope["data"] if resp.code < 400 else envelope["error"]


async def wait_for_title(sock: Socket, title: str) -> None:
    deadline = time.monotonic() + 10
    while not any(
        f["type"] == "notification" and f["notification"]["title"] == title for f in sock.frames
    ):
        assert time.monotonic() < deadline, f"{title!r} never arrived"
        await sock.expect("notification", timeout=deadline - time.monotonic())
