"""Replays and unread counts from memory, and every case where the node must read MongoDB.

The window (``server.delivery.recent``) answers a reconnect only when it can prove that it
holds everything after the client's cursor. These tests drive the real node over real
sockets and count the database commands a reconnect sends (a PyMongo command listener on
the node's own client), and drive the window and the hub directly for the proof's rules.
"""

from __future__ import annotations

import pytest
from pymongo import MongoClient, monitoring

from server.delivery.hub import Hub, notification_frame
from server.delivery.recent import RecentFeed
from tests.support import Api, Socket, serve_node, wait_for
from tests.test_core_units import Recorder, doc


class Commands(monitoring.CommandListener):
    """The finds sent to the notifications collection of one test's database."""

    def __init__(self) -> None:
        self.db_name: str | None = None
        self.finds: list[dict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name != self.db_name or event.command_name != "find":
            return
        if event.command.get("find") == "notifications":
            self.finds.append(event.command.get("filter", {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = Commands()
_registered = False


@pytest.fixture
def commands(db_name):
    """The finds of this test's database (listed before ``node``: its client hears them)."""
    global _registered
    if not _registered:  # for every client made from now on in this process
        monitoring.register(LISTENER)
        _registered = True
    LISTENER.db_name, LISTENER.finds = db_name, []
    yield LISTENER
    LISTENER.db_name = None


async def resume(url: str, api: Api, user: str, cursor: str) -> tuple[dict, list[dict]]:
    """Reconnect with ``since``: the welcome and the replayed notifications."""
    sock = await Socket.open(url, await api.token(user), since=cursor)
    welcome = await sock.expect("welcome")
    await sock.expect("replay_done")
    sock.close()
    return welcome, [f["notification"] for f in sock.frames if f["type"] == "notification"]


async def first_cursor(url: str, api: Api, user: str) -> str:
    """Connect once (the node learns the user's unread state), note the cursor, leave."""
    sock = await Socket.open(url, await api.token(user))
    cursor = (await sock.expect("welcome"))["cursor"]
    sock.close()
    return cursor


def replays(source: str) -> float:
    from server.app.metrics import METRICS

    return METRICS.replay_memory.labels(source)._value.get()


# ---- over real sockets ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_reconnect_inside_the_window_reads_only_the_feeds_end(commands, node, api):
    cursor = await first_cursor(node.url, api, "p-1")
    missed = [await api.notify("p-1", f"missed {i}") for i in range(4)]
    commands.finds.clear()
    before = replays("memory")
    welcome, got = await resume(node.url, api, "p-1", cursor)
    assert [n["id"] for n in got] == [m["id"] for m in missed]
    assert welcome["recovered"] is True and welcome["unread_count"] == 4
    assert replays("memory") == before + 1
    # One read: the feed's end (nothing stored is newer than what this node holds); no
    # replay read, no unread read.
    assert commands.finds == [{}], commands.finds


@pytest.mark.asyncio
async def test_a_cursor_from_before_the_node_started_is_replayed_from_the_database(
    commands, settings, mongo_uri, node, api
):
    cursor = await first_cursor(node.url, api, "p-1")
    missed = [await api.notify("p-1", f"missed {i}") for i in range(3)]
    later = await serve_node(settings.with_(node_id="later"), mongo_uri)
    try:
        assert later.node.hub.recent.start >= int(missed[-1]["cursor"])
        commands.finds.clear()
        before = replays("database")
        welcome, got = await resume(later.url, api, "p-1", cursor)
        assert [n["id"] for n in got] == [m["id"] for m in missed]
        assert welcome["unread_count"] == 3
        assert replays("database") == before + 1
        assert any("seq" in f for f in commands.finds)  # the replay's read
    finally:
        await later.stop()


@pytest.mark.asyncio
async def test_a_window_too_small_for_the_gap_falls_back_to_the_database(settings, mongo_uri):
    running = await serve_node(settings.with_(replay_window_bytes=1500), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("t", ["notify", "tokens", "read"])
        api = Api(running.url, key)
        cursor = await first_cursor(running.url, api, "p-1")
        missed = [await api.notify("p-1", f"missed {i}") for i in range(6)]
        window = running.node.hub.recent
        assert window.bytes <= 1500 and window.start > int(cursor)
        before = replays("database")
        welcome, got = await resume(running.url, api, "p-1", cursor)
        assert [n["id"] for n in got] == [m["id"] for m in missed]
        assert welcome["recovered"] is True
        assert replays("database") == before + 1
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_a_notification_read_after_it_was_sent_is_replayed_from_the_database(node, api):
    cursor = await first_cursor(node.url, api, "p-1")
    missed = [await api.notify("p-1", f"missed {i}") for i in range(3)]
    await api.post(f"/v1/users/p-1/notifications/{missed[1]['id']}/read")
    before = replays("database")
    welcome, got = await resume(node.url, api, "p-1", cursor)
    assert replays("database") == before + 1  # the window's frame says unread: stale
    assert [n["id"] for n in got] == [m["id"] for m in missed]
    assert [n["read_at"] is not None for n in got] == [False, True, False]
    assert welcome["unread_count"] == 2  # the node's count followed the read


@pytest.mark.asyncio
async def test_unread_counts_kept_in_memory_follow_reads_on_another_node(node, second_node, api):
    await first_cursor(second_node.url, api, "p-1")  # the second node learns p-1's state
    made = [await api.notify("p-1", f"n{i}") for i in range(3)]
    await wait_for(lambda: second_node.node.hub.seq >= int(made[-1]["cursor"]))
    await api.post(f"/v1/users/p-1/notifications/{made[0]['id']}/read")  # on the first node
    await api.post("/v1/users/p-1/notifications/read-all")

    async def counted() -> int | None:
        sock = await Socket.open(second_node.url, await api.token("p-1"))
        count = (await sock.expect("welcome"))["unread_count"]
        sock.close()
        return count == 0

    await wait_for(counted, what="the read events reached the second node")
    assert second_node.node.hub.recent.stats()["unread_users"] >= 1


# ---- the window's rules, driven directly ---------------------------------------------


def test_the_proof_needs_a_cursor_at_or_after_the_start():
    window = RecentFeed(1 << 20, per_user=10)
    assert window.replay("p-1", 5, 0.0) is None  # nothing proven before the hub sets it
    window.reset(5)
    for seq in (6, 7, 8):
        window.record(doc(seq), notification_frame(doc(seq)))
    assert window.replay("p-1", 4, 0.0) is None  # 5 and before: not known here
    assert [seq for seq, _ in window.replay("p-1", 5, 0.0)] == [6, 7, 8]
    assert [seq for seq, _ in window.replay("p-1", 7, 0.0)] == [8]
    assert window.replay("p-2", 5, 0.0) == []  # proven: nothing for p-2 since 5


def test_a_user_past_the_per_user_bound_loses_the_proof_for_older_cursors():
    window = RecentFeed(1 << 20, per_user=2)
    window.reset(0)
    for seq in (1, 2, 3):
        window.record(doc(seq), notification_frame(doc(seq)))
    assert window.replay("p-1", 0, 0.0) is None  # 1 was trimmed
    assert [seq for seq, _ in window.replay("p-1", 1, 0.0)] == [2, 3]


def test_the_byte_bound_evicts_the_oldest_and_moves_the_start():
    frame = notification_frame(doc(1))
    window = RecentFeed(3 * (len(frame) + 200), per_user=100)
    window.reset(0)
    for seq in range(1, 6):
        window.record(doc(seq, f"p-{seq}"), notification_frame(doc(seq, f"p-{seq}")))
    assert window.stats()["entries"] == 3 and window.start == 2
    assert window.replay("p-1", 0, 0.0) is None
    assert window.replay("p-5", 2, 0.0) is not None


def test_a_change_before_dispatch_is_remembered_until_the_notification_arrives():
    window = RecentFeed(1 << 20, per_user=10)
    window.reset(0)
    window.changed("p-1", ["n2"], read=True)  # the read event outran the notification
    window.record(doc(1), notification_frame(doc(1)))
    window.record(doc(2), notification_frame(doc(2)))
    assert window.replay("p-1", 1, 0.0) is None  # its frame here would say unread
    assert window.replay("p-1", 2, 0.0) == []


@pytest.mark.asyncio
async def test_the_hub_fills_a_gap_into_the_window_and_a_failed_write_resets_it():
    stored = {s: doc(s) for s in range(1, 6)}

    async def fetch_range(after: int, upto: int | None) -> list[dict]:
        return [stored[s] for s in sorted(stored) if s > after and (upto is None or s <= upto)]

    hub = Hub(fetch_range, 100, 5, 500)
    hub.recent.reset(0)
    peer = Recorder()
    hub.subscribe(peer, "p-2", ["patient"]).go_live(())
    await hub.deliver([stored[1], stored[3]])  # 2 comes from the store first
    assert [seq for seq, _ in hub.recent.replay("p-1", 0, 0.0)] == [1, 2, 3]
    hub.withheld["n4"] = 4  # a failed write's leftover: never delivered, never replayed
    await hub.deliver([stored[4]])
    assert hub.recent.replay("p-1", 0, 0.0) is None
    hub.withheld.clear()
    await hub.deliver([stored[5]])
    assert [seq for seq, _ in hub.recent.replay("p-1", 4, 0.0)] == [5]


# ---- the writes a connect makes ----------------------------------------------------------


@pytest.mark.asyncio
async def test_last_seen_records_are_written_in_batches_and_at_shutdown(settings, mongo_uri):
    running = await serve_node(settings, mongo_uri)
    users = running.node.store.users
    try:
        key, _ = await running.node.api_keys.create("t", ["tokens", "read"])
        api = Api(running.url, key)
        socks = [await Socket.open(running.url, await api.token(f"p-{n}")) for n in range(3)]
        for sock in socks:
            await sock.expect("welcome")  # none waited for its record

        async def written() -> bool:
            found = await users.find({}).to_list()
            return sorted(r["_id"] for r in found if r["roles"] == ["patient"]) == [
                "p-0",
                "p-1",
                "p-2",
            ]

        await wait_for(written, what="the three last-seen records")
        running.node.users.delay = 3600.0  # from now on only a shutdown writes them
        late = await Socket.open(running.url, await api.token("p-late", ["nurse"]))
        await late.expect("welcome")
    finally:
        await running.stop()
    with MongoClient(mongo_uri) as client:
        record = client[settings.mongodb_db].users.find_one({"_id": "p-late"})
    assert record is not None and record["roles"] == ["nurse"]


# ---- a node's own inserts do not come back on its stream -------------------------------


@pytest.mark.asyncio
async def test_a_stream_can_leave_out_one_origins_inserts(mongo_uri, db_name):
    from server.app.store import Store, connect

    client = connect(mongo_uri, 5000)
    store = Store(client, db_name)
    try:
        stream = await store.watch("notifications", None, skip_origin="me")
        async with stream:
            await store.notifications.insert_many(
                [{"_id": "mine", "origin": "me"}, {"_id": "theirs", "origin": "other"}]
            )
            await store.notifications.insert_one({"_id": "last", "origin": "other"})
            seen: list[str] = []

            async def both_seen() -> bool:
                change = await stream.try_next()
                if change is not None:
                    seen.append(change["fullDocument"]["_id"])
                return len(seen) >= 2

            await wait_for(both_seen, what="the other origin's two inserts")
        assert seen == ["theirs", "last"]
    finally:
        await client.close()


def test_unread_counts_follow_dispatches_and_reads_and_a_raced_load_is_not_kept():
    window = RecentFeed(1 << 20, per_user=10)
    window.reset(0)
    aud, forever = ("all", "patient"), float("inf")
    window.begin_load("p-1")
    window.record(doc(1), notification_frame(doc(1)))  # dispatched while the load ran
    window.end_load("p-1", aud, {"old": forever}, set())
    assert window.unread("p-1", aud, [], 0.0) == 2
    window.record(doc(2), notification_frame(doc(2)))
    assert window.unread("p-1", aud, [], 0.0) == 3
    window.changed("p-1", ["old", "n1"], read=True)
    assert window.unread("p-1", aud, [], 0.0) == 1
    window.changed("p-1", ["n3"], read=True)  # read on another node before it arrived here
    window.record(doc(3), notification_frame(doc(3)))
    assert window.unread("p-1", aud, [], 0.0) == 1
    shared = [{"_id": "b1", "seq": 9}]
    assert window.unread("p-1", aud, shared, 0.0) == 2
    window.changed("p-1", ["b1"], read=True)
    assert window.unread("p-1", aud, shared, 0.0) == 1
    assert window.unread("p-1", ("all", "staff"), shared, 0.0) is None  # other audiences
    window.begin_load("p-2")
    window.changed("p-2", ["x"], read=True)  # a read raced the load: not kept
    window.end_load("p-2", aud, {"x": forever}, set())
    assert window.unread("p-2", aud, [], 0.0) is None
    window.forget_unread()  # the event stream broke
    assert window.unread("p-1", aud, [], 0.0) is None


@pytest.mark.asyncio
async def test_a_node_that_has_not_heard_out_its_stream_replays_from_the_database(node, api):
    """Other nodes' notifications may wait in its stream: memory would replay fewer, and
    ``replay_done`` would come before them."""
    cursor = await first_cursor(node.url, api, "p-1")
    missed = [await api.notify("p-1", f"missed {i}") for i in range(3)]
    await node.node.bus.stop()  # its stream no longer followed: not current
    assert node.node.hub.current is False
    before = replays("database")
    welcome, got = await resume(node.url, api, "p-1", cursor)
    assert [n["id"] for n in got] == [m["id"] for m in missed]
    assert welcome["unread_count"] == 3
    assert replays("database") == before + 1


# ---- the census: users who may have unread notifications ----------------------------


def test_the_census_rules_out_only_users_it_proves_have_nothing_unread(monkeypatch):
    window = RecentFeed(1 << 20, per_user=10)
    window.reset(0)
    aud, shared = ("all", "patient"), [{"_id": "b1", "seq": 9}]
    assert window.unread("p-3", aud, [], 0.0) is None  # no census yet: read MongoDB
    window.begin_census(0)
    window.record(doc(1, "p-2"), notification_frame(doc(1, "p-2")))  # while it reads
    window.end_census({"p-1"})
    assert window.census_users == 2
    assert window.unread("p-1", aud, [], 0.0) is None  # had some when counted
    assert window.unread("p-4", aud, shared, 0.0) is None  # which broadcasts it read: unknown
    assert window.unread("p-3", aud, [], 0.0) == 0  # nothing of its own, nothing shared
    window.record(doc(2, "p-3"), notification_frame(doc(2, "p-3")))  # followed from then on
    assert window.unread("p-3", aud, [], 0.0) == 1
    assert window.unread("p-2", aud, [], 0.0) == 1  # got one since: it is in the window
    window.record(doc(3, "p-5"), notification_frame(doc(3, "p-5")))
    window.changed("p-5", ["n3"], read=True)  # read since: its frame here is stale
    assert window.unread("p-5", aud, [], 0.0) is None
    window.begin_load("p-6")  # a read in flight wins over the census
    window.record(doc(4, "p-6"), notification_frame(doc(4, "p-6")))
    assert window.unread("p-6", aud, [], 0.0) is None
    window.record(doc(5, "p-7"), notification_frame(doc(5, "p-7")))
    window.forget_unread()  # a read event may have been missed: the window cannot say
    assert window.unread("p-7", aud, [], 0.0) is None
    assert window.unread("p-8", aud, [], 0.0) == 0  # but nobody gave p-8 anything
    window.end_census(None)  # a census that failed: nothing is ruled out
    assert window.unread("p-9", aud, [], 0.0) is None
    monkeypatch.setattr("server.delivery.recent.CENSUS_MAX", 2)
    window.begin_census(5)
    window.end_census({"a"})
    assert window.unread("p-10", aud, [], 0.0) == 0
    window.record(doc(6, "p-11"), notification_frame(doc(6, "p-11")))
    assert window.unread("p-11", aud, [], 0.0) == 1  # {"a", "p-11"}: at the bound
    window.record(doc(7, "c"), notification_frame(doc(7, "c")))  # past the bound: off
    assert window.unread("p-12", aud, [], 0.0) is None
    window.begin_census(7)
    window.record(doc(8, "e"), notification_frame(doc(8, "e")))  # counted in the next
    window.reset(8)  # a failed write's leftovers: the window starts again
    window.end_census(set())
    assert window.unread("e", aud, [], 0.0) is None  # the window no longer proves it
    assert window.unread("p-13", aud, [], 0.0) == 0


@pytest.mark.asyncio
async def test_a_user_the_census_rules_out_connects_with_no_read_of_their_notifications(
    commands, settings, mongo_uri, node, api
):
    old = await api.notify("p-old", "stored before the second node started")
    later = await serve_node(settings.with_(node_id="later"), mongo_uri)
    try:
        census = lambda: later.node.hub.recent.stats()["census_users"]  # noqa: E731
        await wait_for(lambda: census() >= 0, what="the second node's census")
        assert census() == 1  # p-old
        heard_out = lambda: later.node.hub.current  # noqa: E731
        commands.finds.clear()
        sock = await Socket.open(later.url, await api.token("p-new"))
        assert (await sock.expect("welcome"))["unread_count"] == 0
        sock.close()
        assert not [f for f in commands.finds if "user_id" in f], commands.finds
        sock = await Socket.open(later.url, await api.token("p-old"))
        assert (await sock.expect("welcome"))["unread_count"] == 1  # read from MongoDB
        sock.close()
        assert [f for f in commands.finds if "user_id" in f]
        for user in ("p-new", "p-moved"):  # p-moved: never seen by this node
            made = await api.notify(user, "after the census")
        await wait_for(lambda: later.node.hub.seq >= int(made["cursor"]))
        # Memory answers only a node that has heard out its stream (on a loaded machine a
        # connect came first, and read MongoDB, as it should).
        await wait_for(heard_out, what="the second node to hear out its stream again")
        commands.finds.clear()
        for user in ("p-new", "p-moved"):  # what they got since the census is in the window
            sock = await Socket.open(later.url, await api.token(user))
            assert (await sock.expect("welcome"))["unread_count"] == 1
            sock.close()
        assert not [f for f in commands.finds if "user_id" in f], commands.finds
        await api.post(f"/v1/users/p-old/notifications/{old['id']}/read")
        await later.node.notifications.census()  # taken again: p-old has nothing unread
        assert census() == 2  # p-new, p-moved
    finally:
        await later.stop()
