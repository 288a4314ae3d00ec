"""The notification socket over a real connection: auth, delivery, read sync, replay."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from tests.support import TOKEN_SECRET, Socket

pytestmark = pytest.mark.asyncio


async def test_welcome_then_live_notification(node, api):
    token = await api.token("p-1")
    sock = await Socket.open(node.url, token)
    welcome = await sock.expect("welcome")
    assert welcome["user_id"] == "p-1"
    assert welcome["unread_count"] == 0 and welcome["recovered"] is True
    assert welcome["connection_id"]
    created = await api.notify("p-1", "Lab ready")
    frame = await sock.expect("notification")
    assert frame["notification"] == created
    sock.close()


async def test_every_device_of_a_user_gets_it_and_others_do_not(node, api):
    phone = await Socket.open(node.url, await api.token("p-1"))
    laptop = await Socket.open(node.url, await api.token("p-1"))
    other = await Socket.open(node.url, await api.token("p-2"))
    for s in (phone, laptop, other):
        await s.expect("welcome")
    created = await api.notify("p-1")
    assert (await phone.expect("notification"))["notification"]["id"] == created["id"]
    assert (await laptop.expect("notification"))["notification"]["id"] == created["id"]
    await other.only_then((await api.notify("p-2", "sentinel"))["id"])  # p-1's never came


async def test_read_on_one_device_updates_the_others(node, api):
    phone = await Socket.open(node.url, await api.token("p-1"))
    laptop = await Socket.open(node.url, await api.token("p-1"))
    await phone.expect("welcome")
    await laptop.expect("welcome")
    first = await api.notify("p-1")
    await api.notify("p-1")
    await phone.expect("notification")
    phone.send({"type": "read", "id": first["id"]})
    assert (await laptop.expect("read"))["ids"] == [first["id"]]
    assert (await laptop.expect("unread_count"))["count"] == 1
    phone.send({"type": "read_all"})
    assert (await laptop.expect("unread_count"))["count"] == 0


async def test_ping_frame_gets_pong(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    sock.send({"type": "ping"})
    await sock.expect("pong")


async def test_auth_frame_instead_of_query_token(node, api):
    sock = await Socket.open(node.url)
    sock.send({"type": "auth", "token": await api.token("p-9")})
    assert (await sock.expect("welcome"))["user_id"] == "p-9"


async def test_no_auth_frame_in_time_closes_with_policy(settings, mongo_uri):
    from tests.support import serve_node

    running = await serve_node(settings.with_(auth_timeout=0.3), mongo_uri)
    try:
        sock = await Socket.open(running.url)
        assert await sock.closed() == 1008
    finally:
        await running.stop()


async def test_bad_frames_get_error_frames_and_the_socket_stays(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    for bad in [
        "not json",
        "[1]",
        '{"type":"nope"}',
        '{"type":"read"}',
        '{"type":"ack","id":{"$gt":""}}',
    ]:
        sock.send(bad)
        err = await sock.expect("error")
        assert err["code"] == "bad_frame" and err["message"]
    sock.conn.write_message(b"\x00\x01", binary=True)
    assert (await sock.expect("error"))["code"] == "bad_frame"
    sock.send({"type": "read", "id": "no-such-id"})
    assert (await sock.expect("error"))["code"] == "not_found"
    sock.send({"type": "ping"})
    await sock.expect("pong")


def _url(node, **q):
    from urllib.parse import urlencode

    return node.url.replace("http", "ws") + "/v1/ws/notifications?" + urlencode(q)


@pytest.mark.parametrize(
    "make_token, status",
    [
        (lambda: "garbage", 401),
        (lambda: jwt.encode({"sub": "p-1", "exp": 1}, TOKEN_SECRET, algorithm="HS256"), 401),
        (
            lambda: jwt.encode(
                {"sub": "p-1", "exp": 4102444800}, "wrong-secret-xxxxxxxxxx", algorithm="HS256"
            ),
            401,
        ),
        (lambda: jwt.encode({"sub": "p-1", "exp": 4102444800}, None, algorithm="none"), 401),
        (lambda: jwt.encode({"exp": 4102444800}, TOKEN_SECRET, algorithm="HS256"), 401),
    ],
    ids=["garbage", "expired", "wrong-secret", "alg-none", "no-sub"],
)
async def test_bad_tokens_are_refused_before_the_upgrade(node, make_token, status):
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(_url(node, token=make_token()))
    assert info.value.code == status


async def test_user_id_parameter_must_match_the_token(node, api):
    token = await api.token("p-1")
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(_url(node, token=token, user_id="p-2"))
    assert info.value.code == 403
    sock = Socket(await websocket_connect(_url(node, token=token, user_id="p-1")))
    await sock.expect("welcome")


async def test_disallowed_origin_is_refused(node, api):
    from tornado.httpclient import HTTPRequest

    req = HTTPRequest(
        _url(node, token=await api.token("p-1")), headers={"Origin": "https://evil.example"}
    )
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(req)
    assert info.value.code == 403


async def test_replay_after_disconnect_in_order_without_repeats(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    seen = await api.notify("p-1", "one")
    cursor = (await sock.expect("notification"))["notification"]["cursor"]
    assert cursor == seen["cursor"]
    sock.close()
    missed = [await api.notify("p-1", f"missed {i}") for i in range(5)]
    back = await Socket.open(node.url, await api.token("p-1"), since=cursor)
    welcome = await back.expect("welcome")
    assert welcome["recovered"] is True and welcome["unread_count"] == 6
    got = [(await back.expect("notification"))["notification"]["id"] for _ in missed]
    assert got == [m["id"] for m in missed]
    done = await back.expect("replay_done")
    assert done["cursor"] == missed[-1]["cursor"]
    live = await api.notify("p-1", "live")
    assert (await back.expect("notification"))["notification"]["id"] == live["id"]
    await back.only_then((await api.notify("p-1", "sentinel"))["id"])  # none twice


async def test_replay_beyond_the_limit_is_not_recovered(settings, mongo_uri):
    from tests.support import Api, serve_node

    running = await serve_node(settings.with_(replay_limit=3), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("t", ["notify", "tokens"])
        api = Api(running.url, key)
        made = [await api.notify("p-1", f"n{i}") for i in range(5)]
        sock = await Socket.open(running.url, await api.token("p-1"), since="0")
        assert (await sock.expect("welcome"))["recovered"] is False
        got = [(await sock.expect("notification"))["notification"]["id"] for _ in range(3)]
        assert got == [m["id"] for m in made[-3:]]
        await sock.expect("replay_done")
    finally:
        await running.stop()


async def test_connection_caps_close_with_1013(settings, mongo_uri):
    from tests.support import Api, serve_node

    running = await serve_node(
        settings.with_(max_connections_per_user=2, max_connections=3), mongo_uri
    )
    try:
        key, _ = await running.node.api_keys.create("t", ["tokens"])
        api = Api(running.url, key)
        token = await api.token("p-1")
        a = await Socket.open(running.url, token)
        b = await Socket.open(running.url, token)
        await a.expect("welcome")
        await b.expect("welcome")
        third = await Socket.open(running.url, token)
        assert await third.closed() == 1013
        other = await Socket.open(running.url, await api.token("p-2"))
        await other.expect("welcome")
        fourth = await Socket.open(running.url, await api.token("p-3"))
        assert await fourth.closed() == 1013
    finally:
        await running.stop()


async def test_shutdown_closes_sockets_with_1001(settings, mongo_uri):
    from tests.support import Api, serve_node

    running = await serve_node(settings, mongo_uri)
    key, _ = await running.node.api_keys.create("t", ["tokens"])
    sock = await Socket.open(running.url, await Api(running.url, key).token("p-1"))
    await sock.expect("welcome")
    stopping = asyncio.ensure_future(running.stop())
    assert await sock.closed() == 1001
    await stopping


async def test_welcome_cursor_is_a_resume_point_for_a_device_that_saw_nothing(node, api):
    await api.notify("p-1", "old news")
    sock = await Socket.open(node.url, await api.token("p-1"))
    cursor = (await sock.expect("welcome"))["cursor"]
    sock.close()
    missed = [await api.notify("p-1", f"while away {i}") for i in range(2)]
    back = await Socket.open(node.url, await api.token("p-1"), since=cursor)
    await back.expect("welcome")
    got = [(await back.expect("notification"))["notification"]["id"] for _ in missed]
    assert got == [m["id"] for m in missed]
    await back.expect("replay_done")


async def test_a_cursor_beyond_the_feed_resumes_from_its_end_and_is_not_recovered(node, api):
    """A cursor this feed never handed out: a database restored from a backup, say."""
    last = await api.notify("p-1", "newest before")
    ahead = str(int(last["cursor"]) + 1000)
    sock = await Socket.open(node.url, await api.token("p-1"), since=ahead)
    welcome = await sock.expect("welcome")
    assert welcome["recovered"] is False and welcome["cursor"] == last["cursor"]
    assert (await sock.expect("replay_done"))["cursor"] == last["cursor"]
    live = await api.notify("p-1", "live")  # delivered, not held back until seq passes 1000
    assert (await sock.expect("notification"))["notification"]["id"] == live["id"]
    await sock.only_then((await api.notify("p-1", "sentinel"))["id"])  # none twice


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "9" * 30])
async def test_a_bad_since_is_refused_before_the_upgrade(node, api, since):
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(_url(node, token=await api.token("p-1"), since=since))
    assert info.value.code == 400


async def test_a_socket_is_closed_with_1008_when_its_token_expires(node):
    import time

    # Far enough ahead to connect on a loaded machine; the test checks that it did in time.
    exp = int(time.time()) + 4
    token = jwt.encode({"sub": "p-1", "roles": [], "exp": exp}, TOKEN_SECRET, algorithm="HS256")
    sock = await Socket.open(node.url, token)
    await sock.expect("welcome")
    assert time.time() < exp, "connecting took longer than the token's life"
    assert await sock.closed() == 1008
    assert time.time() >= exp - 0.05  # not before it expired
