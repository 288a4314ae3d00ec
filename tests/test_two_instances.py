"""Two instances on one database: one feed order, exact replay, live delivery across nodes."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import Api, Socket, wait_for

pytestmark = pytest.mark.asyncio


async def drain(sock: Socket, count: int) -> list[dict]:
    return [(await sock.expect("notification", 10))["notification"] for _ in range(count)]


async def test_concurrent_creates_on_two_nodes_replay_in_order_without_gaps(
    node, second_node, api_key
):
    a, b = Api(node.url, api_key), Api(second_node.url, api_key)
    watcher = await Socket.open(second_node.url, await b.token("p-1"))
    await watcher.expect("welcome")
    # A device that saw "before" and then went away; it comes back with that cursor.
    first = await a.notify("p-1", "before")

    made = await asyncio.gather(
        *[(a if i % 2 else b).notify("p-1", f"n{i}") for i in range(40)],
        *[(b if i % 2 else a).notify("p-2", f"other {i}") for i in range(10)],
    )
    mine = [m for m in made if m["user_id"] == "p-1"]
    cursors = sorted(int(m["cursor"]) for m in made)
    assert cursors == list(range(cursors[0], cursors[0] + 50)), "seq must be dense"

    back = await Socket.open(second_node.url, await b.token("p-1"), since=first["cursor"])
    welcome = await back.expect("welcome")
    assert welcome["recovered"] is True
    replayed = await drain(back, 40)
    assert [n["id"] for n in replayed] == [
        m["id"] for m in sorted(mine, key=lambda m: int(m["cursor"]))
    ]
    assert (await back.expect("replay_done"))["cursor"] == replayed[-1]["cursor"]

    live = await drain(watcher, 41)
    assert [n["id"] for n in live][1:] == [n["id"] for n in replayed]
    assert [int(n["cursor"]) for n in live] == sorted(int(n["cursor"]) for n in live)
    last = await a.notify("p-1", "sentinel")
    for sock in (back, watcher):  # the next one each: nothing came twice before it
        assert (await sock.expect("notification"))["notification"]["id"] == last["id"]


async def test_a_notification_created_on_one_node_reaches_a_socket_on_the_other(
    node, second_node, api_key
):
    a, b = Api(node.url, api_key), Api(second_node.url, api_key)
    here = await Socket.open(node.url, await a.token("p-1"))
    there = await Socket.open(second_node.url, await b.token("p-1"))
    await here.expect("welcome")
    await there.expect("welcome")
    created = await a.notify("p-1", "cross")
    assert (await there.expect("notification"))["notification"] == created
    assert (await here.expect("notification"))["notification"] == created
    here.send({"type": "read", "id": created["id"]})
    assert (await there.expect("read"))["ids"] == [created["id"]]
    assert (await there.expect("unread_count"))["count"] == 0


async def test_a_device_resuming_on_a_node_that_lags_never_gets_its_cursor_again(
    node, second_node, api_key
):
    """The other node hears of the device's last notifications only after it came back."""
    a, b = Api(node.url, api_key), Api(second_node.url, api_key)
    hub = second_node.node.hub
    heard, hear = [], asyncio.Event()
    advance = hub.advance

    async def lagging(seq: int) -> None:  # this node's change stream, held back
        heard.append(seq)
        await hear.wait()
        await advance(seq)

    hub.advance = lagging
    device = await Socket.open(node.url, await a.token("p-1"))
    await device.expect("welcome")
    seen = [await a.notify("p-1", f"n{i}") for i in range(2)]
    for created in seen:
        assert (await device.expect("notification"))["notification"]["id"] == created["id"]
    device.close()
    await wait_for(lambda: heard, what="node B has the doorbell but has not dispatched it")
    assert hub.seq < int(seen[-1]["cursor"])

    back = await Socket.open(second_node.url, await b.token("p-1"), since=seen[-1]["cursor"])
    assert (await back.expect("welcome"))["recovered"] is True
    assert (await back.expect("replay_done"))["cursor"] == seen[-1]["cursor"]
    hear.set()  # B now dispatches what the device already has: none of it may come again
    later = await a.notify("p-1", "after")
    assert (await back.expect("notification"))["notification"]["id"] == later["id"]
    last = await a.notify("p-1", "sentinel")
    assert (await back.expect("notification"))["notification"]["id"] == last["id"]
