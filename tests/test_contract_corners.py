"""Corners of the contract no other module covers: close codes, a client that vanishes
without closing, the auth frame outside a browser, token defaults and how API keys are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import UTC, datetime

import jwt
import pytest

from server.app.timeutil import iso
from tests.support import TOKEN_SECRET, Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio


async def connections(node, user_id: str) -> int:
    """The user's sockets in the cluster's presence (what GET /v1/presence answers)."""
    return (await node.node.presence([user_id]))[user_id]["connections"]


# ---- §3 close codes --------------------------------------------------------------------


async def test_a_normal_close_is_answered_with_1000_and_the_socket_is_let_go(node, api):
    sock = await Socket.open(node.url, await api.token("c-1"))
    await sock.expect("welcome")
    await wait_for(lambda: connections(node, "c-1"), what="presence of the socket")
    sock.conn.close(1000, "bye")
    assert await sock.closed() == 1000  # the service's closing frame
    await wait_for(lambda: node.node.hub.stats()["connections"] == 0, what="the hub letting go")
    await wait_for(lambda: _offline(node, "c-1"), what="presence offline")


async def _offline(node, user_id: str) -> bool:
    return await connections(node, user_id) == 0


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode(
            {"sub": "c-1", "roles": [], "exp": 4102444800}, "another-secret-0123456789abcdefghij"
        ),
        jwt.encode({"sub": "c-1", "roles": [], "exp": 1}, TOKEN_SECRET, algorithm="HS256"),
    ],
    ids=["garbage", "wrong-secret", "expired"],
)
async def test_a_bad_token_in_the_auth_frame_closes_1008(node, token):
    """Outside a browser: a client that sends the auth frame itself (no ?token=)."""
    sock = await Socket.open(node.url)
    sock.send({"type": "auth", "token": token})
    assert await sock.closed() == 1008
    assert not any(f["type"] == "welcome" for f in sock.frames)
    assert node.node.hub.stats()["connections"] == 0


# ---- §3 a client that vanishes without closing -----------------------------------------


class Silence:
    """A TCP relay that can drop every byte both ways without closing: a half-open peer."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.passing = True
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src, dst) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if self.passing:
                    dst.write(data)
                    await dst.drain()

    async def stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_a_client_that_vanishes_is_reaped_by_pings_and_goes_offline(settings, mongo_uri):
    # Pings scaled down from 20 s: the node notices within interval + timeout.
    running = await serve_node(settings.with_(ping_interval=1.0, ping_timeout=1.0), mongo_uri)
    relay = Silence(running.port)
    try:
        key, _ = await running.node.api_keys.create("t", ["tokens", "read"])
        api = Api(running.url, key)
        port = await relay.start()
        gone = await Socket.open(f"http://127.0.0.1:{port}", await api.token("v-1"))
        await gone.expect("welcome")
        stays = await Socket.open(running.url, await api.token("v-2"))
        await stays.expect("welcome")
        await wait_for(lambda: connections(running, "v-1"), what="presence of the socket")

        relay.passing = False  # no FIN, no RST: the peer simply stops answering
        silent_at = asyncio.get_running_loop().time()
        await wait_for(lambda: _offline(running, "v-1"), what="the silent socket reaped")
        took = asyncio.get_running_loop().time() - silent_at
        # An interval, the timeout and a presence flush, with a loaded machine's slack.
        assert took < 1.0 + 1.0 + 8.0, took
        assert not running.node.hub.user_subscriptions("v-1")
        presence = await api.get("/v1/presence", query={"user_ids": "v-1,v-2"})
        assert presence == {
            "v-1": {"online": False, "connections": 0},
            "v-2": {"online": True, "connections": 1},
        }
        stays.send({"type": "ping"})  # the other socket answered its pings: still open
        await stays.expect("pong")
    finally:
        await relay.stop()
        await running.stop()


# ---- §2 POST /v1/tokens -----------------------------------------------------------------


async def test_a_token_with_only_a_user_id_takes_the_defaults(node, api):
    data = await api.post("/v1/tokens", {"user_id": "t-1"}, expect=201)
    claims = jwt.decode(data["token"], TOKEN_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "t-1" and claims["roles"] == []
    assert claims["exp"] - claims["iat"] == node.node.settings.token_ttl_seconds == 3600
    assert set(data) == {"token", "expires_at"}


@pytest.mark.parametrize("body", [{}, {"ttl_seconds": 120}, {"ttl_seconds": 86400}])
async def test_expires_at_is_the_tokens_exp(api, body):
    data = await api.post("/v1/tokens", {"user_id": "t-1", **body}, expect=201)
    exp = jwt.decode(data["token"], TOKEN_SECRET, algorithms=["HS256"])["exp"]
    assert data["expires_at"] == iso(datetime.fromtimestamp(exp, UTC))
    assert data["expires_at"].endswith("Z")


async def test_a_ttl_beyond_the_maximum_is_refused(api):
    body = {"user_id": "t-1", "ttl_seconds": 86400 * 31}
    error = await api.post("/v1/tokens", body, expect=400)
    assert "ttl_seconds" in error["fields"]


# ---- §1 API keys are stored only as a hash ----------------------------------------------


async def test_the_stored_api_key_record_holds_a_hash_never_the_key(node):
    key, record = await node.node.api_keys.create("billing", ["notify", "read"])
    [stored] = await node.node.store.db.api_keys.find({"_id": record["_id"]}).to_list()
    text = json.dumps(stored, default=str)
    secret = key[len(record["prefix"]) :]  # what the shown prefix does not already give away
    assert len(secret) >= 32 and key not in text and secret not in text
    hashes = [v for v in stored.values() if isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)]
    assert len(hashes) == 1, stored  # one digest of the key
    assert "hash" not in record  # not even the digest goes back to the caller
    await Api(node.url, key).get("/v1/ws/stats")  # and the key works, checked against it
