"""``GET /v1/sse/notifications`` (CONTRACT §10) over a real HTTP connection: the socket's
stream as Server-Sent Events, its refusals, and its place in stats, presence and the
dashboard's connection list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import jwt
import pytest

from server.dashboard.activity import connection_row
from tests.support import TOKEN_SECRET, serve_node, wait_for

pytestmark = pytest.mark.asyncio


class Stream:
    """One SSE connection: events parsed as they arrive, comments counted."""

    def __init__(self, response: httpx.Response, client: httpx.AsyncClient):
        self.response = response
        self.client = client
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.comments = 0
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, base_url: str, token: str | None = None, **kw) -> Stream:
        client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = client.build_request(
            "GET", base_url + "/v1/sse/notifications", headers=headers, **kw
        )
        response = await client.send(request, stream=True)
        return cls(response, client)

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        with contextlib.suppress(httpx.HTTPError):
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments += 1
                elif not line:
                    if fields:
                        event = {**fields, "frame": json.loads(fields["data"])}
                        await self.events.put(event)
                    fields = {}
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        await self.events.put({"event": "end"})

    async def expect(self, kind: str, timeout: float = 10.0) -> dict:
        """Read events until one of this type."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event["event"] in (kind, "end"):
                assert event["event"] == kind, f"the stream ended before a {kind!r} event"
                return event

    async def close(self) -> None:
        self.reader.cancel()
        await self.response.aclose()
        await self.client.aclose()


async def test_the_stream_carries_the_sockets_frames_with_ids_and_counts_as_a_connection(node, api):
    token = await api.token("p-1")
    stream = await Stream.open(node.url, token)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        welcome = await stream.expect("welcome")
        assert welcome["frame"]["user_id"] == "p-1" and welcome["id"] == welcome["frame"]["cursor"]
        made = await api.notify("p-1", "Lab ready")
        live = await stream.expect("notification")
        assert live["id"] == made["cursor"] and live["frame"]["notification"]["id"] == made["id"]
        # Like a socket: in stats, presence and the dashboard's list (transport sse).
        stats = await api.get("/v1/ws/stats")
        assert stats["connected_clients"] == 1 and stats["connected_users"] == 1
        presence = await api.get("/v1/presence", query={"user_ids": "p-1"})
        assert presence["p-1"] == {"online": True, "connections": 1}
        [sub] = node.node.hub.user_subscriptions("p-1")
        assert connection_row(sub)["transport"] == "sse"
        # Read state changes arrive as events too; the read itself goes over REST.
        await api.post(f"/v1/users/p-1/notifications/{made['id']}/read", key=token)
        read = await stream.expect("read")
        assert read["frame"]["ids"] == [made["id"]] and "id" not in read
    finally:
        await stream.close()
    await wait_for(lambda: not node.node.hub.user_subscriptions("p-1"), what="unsubscribed")


@pytest.mark.parametrize("how", ["Last-Event-ID", "since"])
async def test_a_reconnect_replays_what_it_missed_in_order(node, api, how):
    token = await api.token("p-1")
    first = await Stream.open(node.url, token)
    await first.expect("welcome")
    seen = await api.notify("p-1", "seen")
    last = (await first.expect("notification"))["id"]
    await first.close()
    missed = [await api.notify("p-1", f"missed {i}") for i in range(3)]
    kw = {"headers": {"Last-Event-ID": last}} if how == "Last-Event-ID" else {}
    if how == "since":
        kw["params"] = {"since": seen["cursor"]}
    again = await Stream.open(node.url, token, **kw)
    try:
        assert (await again.expect("welcome"))["frame"]["recovered"] is True
        replayed = [(await again.expect("notification"))["frame"]["notification"] for _ in missed]
        assert [n["id"] for n in replayed] == [m["id"] for m in missed]
        done = await again.expect("replay_done")
        assert done["id"] == done["frame"]["cursor"] == missed[-1]["cursor"]
    finally:
        await again.close()


async def test_keep_alive_comments_token_expiry_and_shutdown_close_the_stream(settings, mongo_uri):
    running = await serve_node(settings.with_(sse_keepalive_seconds=0.1), mongo_uri)
    try:
        soon = jwt.encode({"sub": "p-1", "exp": int(time.time()) + 2}, TOKEN_SECRET, "HS256")
        stream = await Stream.open(running.url, soon)
        await stream.expect("welcome")
        await wait_for(lambda: stream.comments >= 3, what="keep-alive comments")
        closed = await stream.expect("close", timeout=15)
        assert closed["frame"]["code"] == 1008 and "expired" in closed["frame"]["reason"]
        assert (await stream.expect("end"))["event"] == "end"
        await stream.close()

        later = jwt.encode({"sub": "p-1", "exp": int(time.time()) + 600}, TOKEN_SECRET, "HS256")
        stream = await Stream.open(running.url, None, params={"token": later})
        await stream.expect("welcome")
    finally:
        await running.stop()
    closed = await stream.expect("close")
    assert closed["frame"]["code"] == 1001
    await stream.close()


async def test_refusals_are_the_contracts_envelope(node, api):
    token = await api.token("p-1")
    cases = [
        ({}, 401, "unauthorized"),
        ({"headers": {"Authorization": "Bearer nope"}}, 401, "unauthorized"),
        ({"params": {"token": token, "since": "abc"}}, 400, "validation_error"),
        ({"params": {"token": token, "colour": "red"}}, 400, "validation_error"),
        ({"params": {"token": token}, "headers": {"Last-Event-ID": "x1"}}, 400, "validation_error"),
        ({"params": {"token": token, "user_id": "p-2"}}, 403, "forbidden"),
        ({"params": {"token": token}, "headers": {"Origin": "https://elsewhere.example"}}, 403,
         "forbidden"),
    ]  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as client:
        for kw, status, code in cases:
            answer = await client.get(node.url + "/v1/sse/notifications", **kw)
            assert answer.status_code == status, (kw, answer.text)
            body = answer.json()
            assert body["success"] is False and body["error"]["code"] == code, body
    assert not node.node.hub.user_subscriptions("p-1")


async def test_payloads_unframe_what_the_hub_writes_back_to_back():
    from server.delivery import wire

    messages = [
        {"type": "pong"},
        {"type": "x", "pad": "a" * 300},
        {"type": "y", "pad": "b" * 70000},
    ]
    joined = b"".join(wire.frame(m) for m in messages)  # 7-, 16- and 64-bit lengths
    assert [json.loads(p) for p in wire.payloads(joined)] == messages


async def test_a_portal_on_an_allowed_origin_may_open_the_stream(settings, mongo_uri):
    portal = "https://portal.clinic.example"
    running = await serve_node(settings.with_(allowed_origins=portal), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("tests", ["tokens"])
        async with httpx.AsyncClient(timeout=10) as client:
            minted = await client.post(
                running.url + "/v1/tokens",
                json={"user_id": "p-1"},
                headers={"Authorization": f"Bearer {key}"},
            )
            token = minted.json()["data"]["token"]
            ask = {"Access-Control-Request-Method": "GET",
                   "Access-Control-Request-Headers": "authorization,last-event-id"}  # fmt: skip
            pre = await client.options(
                running.url + "/v1/sse/notifications", headers={"Origin": portal, **ask}
            )
            assert pre.status_code == 204
            allowed = {
                h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")
            }
            assert {"authorization", "last-event-id"} <= allowed
        stream = await Stream.open(running.url, token, headers={"Origin": portal})
        try:
            assert stream.response.headers["Access-Control-Allow-Origin"] == portal
            await stream.expect("welcome")
        finally:
            await stream.close()
    finally:
        await running.stop()
