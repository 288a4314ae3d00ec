"""The fan-out's send path on real sockets: ``stream_send`` and the slow-reader cap.

``stream_send`` writes straight to the socket when nothing is queued and falls back to
Tornado's stream buffer when the kernel will not take more; these tests drive it against a
real node's socket with a client that reads, and with one that has stopped reading.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from handlers.socket import CLOSED, FULL, SENT, stream_send
from server.app.metrics import METRICS
from server.delivery import wire
from server.delivery.hub import Subscription
from tests.support import Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio


class RawClient:
    """A WebSocket client on a bare socket, so a test decides when (and whether) it reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, token: str, rcvbuf: int | None = None) -> RawClient:
        """Connect and upgrade; returns once the server answered 101."""
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(
            f"GET /v1/ws/notifications?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode()
        )  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), timeout)

    async def message(self, timeout: float = 5.0) -> dict:
        """The next text frame, as JSON (protocol pings in between are skipped)."""
        opcode, payload = await self.frame(timeout)
        while opcode == 0x9:
            opcode, payload = await self.frame(timeout)
        assert opcode == 0x1, (opcode, payload[:100])
        return json.loads(payload)

    def close(self) -> None:
        self.writer.close()


def dropped() -> float:
    """How many slow readers this process has dropped."""
    return METRICS.registry.get_sample_value("notify_slow_readers_dropped_total") or 0.0


async def server_side(running, user_id: str):
    """The server's WebSocket connection of a user's (only) socket."""
    subs = await wait_for(
        lambda: running.node.hub.user_subscriptions(user_id), what=f"{user_id} subscribed"
    )
    return next(iter(subs)).conn


async def test_an_idle_socket_gets_the_bytes_at_once_without_buffering(node, api):
    client = await RawClient.open(node.port, await api.token("p-1"))
    assert (await client.message())["type"] == "welcome"
    handler = await server_side(node, "p-1")
    data = wire.frame({"type": "notification", "n": 1})
    assert stream_send(handler.ws_connection, data, 1 << 20) == SENT
    assert len(handler.ws_connection.stream._write_buffer) == 0  # the kernel took it all
    assert (await client.message()) == {"type": "notification", "n": 1}
    client.close()


async def test_a_stalled_reader_is_buffered_in_order_up_to_the_limit_then_refused(node, api):
    client = await RawClient.open(node.port, await api.token("p-1"), rcvbuf=4096)
    assert (await client.message())["type"] == "welcome"
    conn = (await server_side(node, "p-1")).ws_connection
    limit, payload = 65536, "x" * 16000
    outcomes = []
    for n in range(5000):  # bounded: the kernel holds a few MB at most
        outcome = stream_send(conn, wire.frame({"n": n, "pad": payload}), limit)
        outcomes.append(outcome)
        if outcome != SENT:
            break
    assert outcomes[-1] == FULL, "the reader never filled up"
    assert 0 < len(conn.stream._write_buffer) <= limit  # buffered, and never past the cap
    sent = outcomes.count(SENT)
    # The reader resumes: every frame sent arrives whole and in order, direct or buffered.
    got = [(await client.message(timeout=10))["n"] for _ in range(sent)]
    assert got == list(range(sent))
    client.close()


async def test_a_closed_socket_is_reported_closed(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    handler = await server_side(node, "p-1")
    handler.close(1000, "bye")
    assert stream_send(handler.ws_connection, wire.frame({"n": 1}), 1 << 20) == CLOSED
    assert stream_send(None, wire.frame({"n": 1}), 1 << 20) == CLOSED


@pytest.mark.slow
async def test_a_slow_reader_is_dropped_and_the_others_get_everything(settings, mongo_uri):
    # 400 broadcasts from one key: past the default per-key rate limit, which is not tested here.
    running = await serve_node(
        settings.with_(send_buffer_bytes=32768, rate_rest_key=0.0), mongo_uri
    )
    try:
        # Up to 400 broadcasts as fast as they go, more than the default per-key limit lets
        # through (docs/security.md): this key has no limit of its own.
        key, _ = await running.node.api_keys.create("t", ["broadcast", "tokens"], rate=0)
        api = Api(running.url, key)
        stalled = await RawClient.open(running.port, await api.token("slow"), rcvbuf=4096)
        assert (await stalled.message())["type"] == "welcome"
        reader = await Socket.open(running.url, await api.token("quick"))
        await reader.expect("welcome")
        slow = await server_side(running, "slow")
        before = dropped()
        body = {"audience": "all", "title": "Big", "message": "\U0001f3e5" * 5000}
        for _ in range(400):  # about 20 KB each: the kernel's buffers fill within 8 MB
            await api.post("/v1/broadcasts", body, expect=201)
            await reader.expect("notification")  # the reading client keeps up
            if dropped() > before:
                break
        assert dropped() == before + 1, "the stalled reader was never dropped"
        assert slow.ws_connection is None  # closed by the server (1008), memory let go
        stalled.close()
    finally:
        await running.stop()


async def test_going_live_merges_what_arrived_during_the_replay_in_seq_order(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    handler = await server_side(node, "p-1")

    def note(seq: int) -> tuple[int, bytes]:
        return seq, wire.frame({"type": "notification", "notification": {"cursor": str(seq)}})

    # Held while the replay was read: 5 was stored just after the replay's first query,
    # so it is older than the replay's newest (6); 6 came both ways; 7 is newer.
    sub = Subscription(handler, "p-1", ("patient",))
    for seq, data in (note(5), note(6), note(7)):
        sub.offer(seq, data, 100)
    sub.go_live([note(3), note(6)], wire.frame({"type": "replay_done", "cursor": "6"}))
    got = [await sock.recv() for _ in range(5)]
    assert [f.get("cursor") or f["notification"]["cursor"] for f in got] == [
        "3", "5", "6", "6", "7",
    ]  # fmt: skip
    assert [f["type"] for f in got] == ["notification"] * 3 + ["replay_done", "notification"]
    await sock.nothing()
    sub.offer(7, note(7)[1], 100)  # live again: nothing at or below the last seq goes twice
    sub.offer(8, note(8)[1], 100)
    assert (await sock.recv())["notification"]["cursor"] == "8"


async def test_an_open_socket_keeps_neither_its_token_nor_its_headers(node, api):
    token = await api.token("p-1")
    client = await RawClient.open(node.port, token)
    assert (await client.message())["type"] == "welcome"
    handler = await server_side(node, "p-1")
    request = handler.request
    assert token not in request.uri and not request.query_arguments  # a credential
    assert token not in repr(vars(request.connection))  # nor Tornado's request line
    assert not list(request.headers.get_all())  # read by the handshake only
    assert not list(handler._headers.get_all())  # the upgrade's answer: sent and dropped
    created = await api.notify("p-1")
    assert (await client.message())["notification"]["id"] == created["id"]
    client.close()
