"""Cluster-wide presence and stats: two in-process nodes on one database, real sockets.

Heartbeats are fast here (0.5 s, nodes dead after 4 s: a live node would have to miss eight
beats in a row on a loaded machine to be taken for dead) so the bounds take seconds.
"""

from __future__ import annotations

import time

import pytest
import pytest_asyncio

from tests.conftest import ALL_SCOPES
from tests.support import WAIT, Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio

FAST = {"heartbeat_seconds": 0.5, "node_timeout_seconds": 4.0}
# A dead node stops counting after the timeout; allow one heartbeat and a loaded machine.
BOUND = FAST["node_timeout_seconds"] + FAST["heartbeat_seconds"] + 4.0


@pytest_asyncio.fixture
async def pair(settings, mongo_uri):
    a = await serve_node(settings.with_(node_id="node-a", **FAST), mongo_uri)
    b = await serve_node(settings.with_(node_id="node-b", **FAST), mongo_uri)
    yield a, b
    await b.stop()
    await a.stop()


@pytest_asyncio.fixture
async def apis(pair):
    a, b = pair
    key, _ = await a.node.api_keys.create("tests", ALL_SCOPES)
    return Api(a.url, key), Api(b.url, key)


async def connect(api: Api, url: str, user_id: str) -> Socket:
    sock = await Socket.open(url, await api.token(user_id))
    await sock.expect("welcome")
    return sock


async def until(check, timeout: float = WAIT):
    """Poll an async check until it returns a truthy value, and return that value."""
    return await wait_for(check, timeout)


def wanted(**counts: int) -> dict:
    return {u: {"online": n > 0, "connections": n} for u, n in counts.items()}


async def test_presence_is_the_same_seen_from_either_node(pair, apis):
    (a, b), (api_a, api_b) = pair, apis
    u1 = [await connect(api_a, a.url, "u1") for _ in range(2)]
    await connect(api_b, b.url, "u2")
    u3_on_a = await connect(api_a, a.url, "u3")
    await connect(api_b, b.url, "u3")
    expected = wanted(u1=2, u2=1, u3=2, u4=0)
    query = {"user_ids": "u1,u2,u3,u4"}
    for api in (api_a, api_b):
        await until(lambda api=api: _equals(api, query, expected))
    for sock in [*u1, u3_on_a]:
        sock.close()
    expected = wanted(u1=0, u2=1, u3=1, u4=0)
    for api in (api_a, api_b):
        await until(lambda api=api: _equals(api, query, expected))


async def _equals(api: Api, query: dict, expected: dict) -> bool:
    return await api.get("/v1/presence", query=query) == expected


async def test_stats_total_the_cluster_and_list_each_node(pair, apis):
    (a, b), (api_a, api_b) = pair, apis
    await connect(api_a, a.url, "s1")
    await connect(api_a, a.url, "s1")
    await connect(api_a, a.url, "s2")
    await connect(api_b, b.url, "s2")  # s2 is on both nodes: one user, two sockets

    async def settled(api: Api):
        stats = await api.get("/v1/ws/stats")
        return stats if stats["connected_clients"] == 4 and stats["connected_users"] == 2 else None

    for api in (api_a, api_b):
        stats = await until(lambda api=api: settled(api))
        assert stats["status"] == "active" and stats["node_count"] == 2
        by_id = {n["node_id"]: n for n in stats["nodes"]}
        assert set(by_id) == {"node-a", "node-b"}
        assert (by_id["node-a"]["connections"], by_id["node-a"]["users"]) == (3, 2)
        assert (by_id["node-b"]["connections"], by_id["node-b"]["users"]) == (1, 1)
        for entry in by_id.values():
            assert entry["started_at"].endswith("Z") and entry["last_heartbeat_at"].endswith("Z")


async def test_single_node_stats_count_its_own_sockets(node, api):
    await connect(api, node.url, "only")
    stats = await api.get("/v1/ws/stats")
    assert (stats["connected_clients"], stats["connected_users"], stats["node_count"]) == (1, 1, 1)
    assert stats["nodes"][0]["node_id"] == node.node.node_id


async def test_a_node_that_stops_heartbeating_stops_counting(pair, apis, settings, mongo_uri):
    (a, _), (api_a, _) = pair, apis
    c = await serve_node(settings.with_(node_id="node-c", **FAST), mongo_uri)
    try:
        await connect(api_a, c.url, "ghost")
        await until(lambda: _equals(api_a, {"user_ids": "ghost"}, wanted(ghost=1)))
        # Freeze node C's heartbeat without any cleanup: to the others it is now dead,
        # exactly as after kill -9 (the process test in test_cluster.py does that for real).
        for task in c.node.cluster._tasks:
            task.cancel()
        frozen = time.monotonic()
        await until(lambda: _equals(api_a, {"user_ids": "ghost"}, wanted(ghost=0)))
        assert time.monotonic() - frozen <= BOUND
        stats = await api_a.get("/v1/ws/stats")
        assert "node-c" not in {n["node_id"] for n in stats["nodes"]}
        # A live node also deletes the dead node's records.
        await until(lambda: _gone(a.node.store.db, "node-c"))
    finally:
        await c.stop()


async def test_a_node_reaped_after_a_pause_registers_again(pair, apis):
    (a, b), (api_a, _) = pair, apis
    await connect(api_a, b.url, "back")
    await until(lambda: _equals(api_a, {"user_ids": "back"}, wanted(back=1)))
    epoch = b.node.cluster.epoch
    # What another node's reaper does to a node that paused longer than the timeout:
    db = a.node.store.db
    await db.nodes.delete_one({"_id": "node-b"})
    await db.presence.delete_many({"owner": f"node-b|{epoch}"})
    # Its next heartbeat notices, takes a new epoch and writes its presence again.
    await until(lambda: _equals(api_a, {"user_ids": "back"}, wanted(back=1)))
    assert b.node.cluster.epoch != epoch
    record = await db.nodes.find_one({"_id": "node-b"})
    assert record["epoch"] == b.node.cluster.epoch


async def _gone(db, node_id: str) -> bool:
    node = await db.nodes.find_one({"_id": node_id})
    left = await db.presence.find({"node_id": node_id}).to_list()
    return node is None and not left


async def test_a_clean_stop_removes_the_node_at_once(pair, apis):
    (a, b), (api_a, api_b) = pair, apis
    await connect(api_b, b.url, "leaving")
    await until(lambda: _equals(api_a, {"user_ids": "leaving"}, wanted(leaving=1)))
    await b.stop()
    assert await api_a.get("/v1/presence", query={"user_ids": "leaving"}) == wanted(leaving=0)
    assert await _gone(a.node.store.db, "node-b")
    b.stop = _noop  # the fixture's teardown


async def _noop() -> None:
    return None


async def test_duplicates_are_answered_once_and_500_ids_are_allowed(api):
    assert await api.get("/v1/presence", query={"user_ids": "a,a,b"}) == wanted(a=0, b=0)
    many = ",".join(f"user-{i}" for i in range(500))
    assert len(await api.get("/v1/presence", query={"user_ids": many})) == 500


@pytest.mark.parametrize(
    "query",
    [
        None,
        {"user_ids": ""},
        {"user_ids": ",,,"},
        {"user_ids": ",".join(f"u{i}" for i in range(501))},
        {"user_ids": "good,bad id"},
        {"user_ids": "-leading-dash"},
        {"user_ids": "x" * 129},
        {"user_ids": "ok", "extra": "1"},
    ],
    ids=["missing", "empty", "only-commas", "501-ids", "space", "dash", "too-long", "unknown"],
)
async def test_bad_presence_queries_are_400(api, query):
    err = await api.get("/v1/presence", query=query, expect=400)
    assert err["code"] in ("validation_error", "bad_request")
    assert err["fields"]


async def test_user_ids_given_twice_is_400(api):
    err = await api.get("/v1/presence?user_ids=a&user_ids=b", expect=400)
    assert "user_ids" in err["fields"]


@pytest.mark.parametrize("path", ["/v1/presence?user_ids=a", "/v1/ws/stats"])
async def test_presence_and_stats_need_the_read_scope(node, api, path):
    await api.get(path, key="", expect=401)
    await api.get(path, key="nk_not-a-real-key", expect=401)
    notify_only, _ = await node.node.api_keys.create("notify-only", ["notify"])
    await api.get(path, key=notify_only, expect=403)
    own_token = await api.token("a")  # even a user's own token may not read presence
    await api.get(path, key=own_token, expect=403)
    for scopes in (["read"], ["admin"]):
        key, _ = await node.node.api_keys.create("ok", scopes)
        await api.get(path, key=key)
