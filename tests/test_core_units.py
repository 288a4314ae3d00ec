"""Fast tests of the core pieces without HTTP: the hub's ordering and caps, the sequencer's
one order on a real database, and the feed service's read state.

The hub is driven through its own interfaces: a ``Recorder`` is a connection (what the hub
needs of a socket: send framed bytes, close), and the gap filler is the function the node
passes in. The sequencer and the feed use the real wire-protocol database.
"""

from __future__ import annotations

import asyncio
import json

import pymongo
import pytest
import pytest_asyncio

from server.app.errors import OverCapacity
from server.app.group_commit import GroupCommit
from server.app.store import Store, connect
from server.app.timeutil import utcnow
from server.delivery.hub import Hub
from server.feed.notifications import Notifications
from server.feed.sequencer import Sequencer
from server.feed.timeline import Timeline


class Recorder:
    """A connection that keeps what it was sent (the payloads of its text frames)."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.closed: tuple[int, str] | None = None

    def send_frame(self, data: bytes) -> bool:
        while data:  # a replay writes several frames in one call
            size, start = data[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(data[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(data[2:10], "big"), 10
            self.frames.append(json.loads(data[start : start + size]))
            data = data[start + size :]
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ids(self) -> list[str]:
        return [f["notification"]["id"] for f in self.frames if f["type"] == "notification"]


def doc(seq: int, user_id: str | None = "p-1", audience: str | None = None) -> dict:
    now = utcnow()
    return {
        "_id": f"n{seq}", "seq": seq, "user_id": user_id, "audience": audience,
        "type": "custom", "priority": "normal", "title": "t", "message": "m", "data": {},
        "created_at": now, "deliver_at": None, "expires_at": None, "delivered_at": None,
        "read_at": None,
    }  # fmt: skip


def hub_with(stored: dict[int, dict], **caps: int) -> Hub:
    async def fetch_range(after: int, upto: int | None) -> list[dict]:
        return [stored[s] for s in sorted(stored) if s > after and (upto is None or s <= upto)]

    return Hub(fetch_range, caps.get("total", 100), caps.get("per_user", 5), 500)


# ---- the hub --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hub_delivers_in_seq_order_fills_gaps_and_drops_duplicates():
    stored = {s: doc(s) for s in range(1, 6)}
    hub = hub_with(stored)
    peer = Recorder()
    hub.subscribe(peer, "p-1", ["patient"]).go_live(())
    await hub.deliver([stored[1]])
    await hub.deliver([stored[4], stored[3]])  # 2 is missing: read from the store first
    await hub.deliver([stored[1], stored[3]])  # already dispatched: dropped
    await hub.advance(5)  # another node's doorbell
    assert peer.ids() == ["n1", "n2", "n3", "n4", "n5"]
    assert hub.seq == 5


@pytest.mark.asyncio
async def test_hub_holds_live_frames_until_the_replay_and_merges_them_in_order():
    stored = {s: doc(s) for s in range(1, 5)}
    hub = hub_with(stored)
    peer = Recorder()
    sub = hub.subscribe(peer, "p-1", ["patient"])
    await hub.deliver([stored[3], stored[4]])  # arrive while the replay is being read
    replay = [(s, _frame(stored[s])) for s in (1, 2, 3)]
    sub.go_live(replay, b"\x81\x11" + b'{"type":"marker"}', after=0)
    assert [f.get("notification", {}).get("id", f["type"]) for f in peer.frames] == [
        "n1", "n2", "n3", "marker", "n4",
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_hub_never_resends_at_or_below_the_clients_cursor():
    stored = {s: doc(s) for s in range(1, 4)}
    hub = hub_with(stored)
    peer = Recorder()
    sub = hub.subscribe(peer, "p-1", ["patient"])
    sub.go_live((), after=2)  # the client already has 1 and 2 (seen on another node)
    await hub.deliver([stored[1], stored[2], stored[3]])
    assert peer.ids() == ["n3"]


@pytest.mark.asyncio
async def test_hub_routes_broadcasts_by_audience_and_enforces_caps():
    hub = hub_with({}, total=3, per_user=2)
    nurse, patient, other = Recorder(), Recorder(), Recorder()
    for peer, user, roles in ((nurse, "n-1", ["nurse"]), (patient, "p-1", ["patient"])):
        hub.subscribe(peer, user, roles).go_live(())
    hub.subscribe(other, "p-1", ["patient"]).go_live(())
    with pytest.raises(OverCapacity):
        hub.subscribe(Recorder(), "p-2", ["patient"])  # the node's cap
    await hub.deliver([doc(1, None, "nurse"), doc(2, None, "all"), doc(3, "p-1")])
    assert nurse.ids() == ["n1", "n2"]
    assert patient.ids() == other.ids() == ["n2", "n3"]
    hub.unsubscribe(hub.by_user["p-1"][0])
    with pytest.raises(OverCapacity):
        hub.subscribe(Recorder(), "p-1", ["patient"]).go_live(())
        hub.subscribe(Recorder(), "p-1", ["patient"])  # the user's cap of 2
    assert hub.send_user("p-1", [{"type": "unread_count", "count": 0}]) == 2


def _frame(d: dict) -> bytes:
    from server.delivery.hub import notification_frame

    return notification_frame(d)


# ---- the sequencer and the feed, on the real database -----------------------------------


@pytest_asyncio.fixture
async def store(mongo_uri, db_name):
    client = connect(mongo_uri, 5000)
    store = Store(client, db_name)
    await store.create_indexes()
    yield store
    await client.close()


@pytest.mark.asyncio
async def test_sequencer_gives_concurrent_appends_one_gapless_order(store):
    delivered: list[int] = []

    async def after_append(docs: list[dict]) -> None:
        delivered.extend(d["seq"] for d in docs)

    sequencer = Sequencer(store, after_append)
    sequencer.start()
    try:
        batches = [[{**doc(0), "_id": f"b{i}-{j}"} for j in range(3)] for i in range(20)]
        for batch in batches:
            for d in batch:
                del d["seq"]
        results = await asyncio.gather(*(sequencer.append(b) for b in batches))
    finally:
        await sequencer.stop()
    seqs = sorted(d["seq"] for batch in results for d in batch)
    assert seqs == list(range(1, 61))
    for batch in results:  # a request's documents stay together and in order
        own = [d["seq"] for d in batch]
        assert own == list(range(own[0], own[0] + 3))
    assert delivered == sorted(delivered) == seqs
    assert await store.high_seq() == 60


@pytest.mark.asyncio
async def test_queue_writes_of_concurrent_callers_share_one_write_and_its_outcome(store):
    from server.feed.scheduler import ScheduledStore

    queue, writes = ScheduledStore(store.db), []

    async def put_many(entries: list) -> None:
        writes.append(len(entries))
        if any(key.startswith("bad") for _, key, *_ in entries):
            raise OSError("refused")  # what a failed write looks like to each caller
        await queue.put_many(entries)

    group = GroupCommit(put_many, timeout=5.0)
    item = lambda key: ("push", key, 0, {}, None)  # noqa: E731
    with pymongo.timeout(0.001):  # a caller's short deadline is its own, not the write's
        await asyncio.sleep(0.01)
        await asyncio.gather(*(group.add([item(f"k{i}"), item(f"k{i}b")]) for i in range(10)))
    assert writes == [20]  # ten callers at once, one write
    assert await queue.collection.count_documents({}) == 20
    writes.clear()
    first = asyncio.ensure_future(group.add([item("ok")]))
    await asyncio.sleep(0)
    joined = await asyncio.gather(group.add([item("bad")]), group.add([item("also")]), first,
                                  return_exceptions=True)  # fmt: skip
    assert [type(r).__name__ for r in joined] == ["OSError", "OSError", "NoneType"]
    assert writes == [1, 2]  # the first alone; the two that waited for it, together
    assert await queue.collection.count_documents({"_id": "also"}) == 0


@pytest.mark.asyncio
async def test_sockets_connecting_during_a_broadcast_load_share_it(store):
    from server.delivery.broadcast_cache import BroadcastCache

    hub, reads = hub_with({}), []
    cache = BroadcastCache(store, hub)
    real = store.visible_broadcasts

    async def counted(audience, now):
        reads.append(audience)
        return await real(audience, now)

    store.visible_broadcasts = counted
    now = utcnow()
    await asyncio.gather(*(cache.visible(["all", "patient"], now) for _ in range(50)))
    assert sorted(reads) == ["all", "patient"]  # one load per audience, not one per socket
    await cache.visible(["all"], now)
    assert len(reads) == 2  # and then from memory
    hub.broadcasts_seen += 1  # a newer broadcast: the next connect loads again, once
    waiting = [asyncio.ensure_future(cache.visible(["all"], now)) for _ in range(5)]
    await asyncio.sleep(0)
    hub.broadcasts_seen += 1  # dispatched while that load ran: the later ones start a newer
    waiting += [asyncio.ensure_future(cache.visible(["all"], now)) for _ in range(5)]
    await asyncio.gather(*waiting)
    assert reads[2:] == ["all", "all"]


@pytest.mark.asyncio
async def test_feed_read_state_and_unread_count(store):
    sequencer = Sequencer(store, _nothing)
    sequencer.start()
    published: list[dict] = []

    async def publish(event: dict) -> None:
        published.append(event)

    hub = hub_with({})
    feed = Notifications(store, sequencer, hub, publish, "node-a", 500, Timeline(store.db, 90))
    try:
        payload = {"type": "custom", "priority": "normal", "title": "t", "message": "m",
                   "data": {}, "user_ids": ["p-1", "p-2"]}  # fmt: skip
        first, _ = await feed.create(payload)
        await feed.create({**payload, "user_ids": ["p-1"], "expires_at": None})
        assert await feed.unread_count("p-1", ("patient",)) == 2
        await feed.mark_read("p-1", ("patient",), first["id"])
        assert await feed.unread_count("p-1", ("patient",)) == 1
        assert published[-1]["ids"] == [first["id"]] and published[-1]["count"] == 1
        assert await feed.mark_all_read("p-1", ("patient",)) == 1
        assert await feed.unread_count("p-1", ("patient",)) == 0
        assert await feed.unread_count("p-2", ("patient",)) == 1
        page = await feed.feed("p-1", ("patient",), {"limit": 1, "unread": False})
        assert len(page["items"]) == 1 and page["next"] is not None
        assert page["items"][0]["read_at"] is not None
        unread = await feed.feed("p-2", ("patient",), {"limit": 5, "unread": True})
        assert [n["user_id"] for n in unread["items"]] == ["p-2"] and unread["next"] is None
    finally:
        await sequencer.stop()


async def _nothing(docs: list[dict]) -> None:
    """The sequencer's after-append when nothing is listening."""
