"""Rate limits: token buckets, and the 429s, error frames and closes they cause."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.websocket import websocket_connect

from server.app.errors import RateLimited
from server.app.metrics import METRICS
from server.auth.ratelimit import OPEN_GATE, FrameGate, Limiter, RateLimits
from tests.conftest import ALL_SCOPES
from tests.support import Api, Socket, serve_node


def refused(kind: str) -> float:
    return METRICS.registry.get_sample_value("notify_rate_limited_total", {"kind": kind}) or 0.0


# ---- the buckets ---------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refuses_with_the_wait_until_a_token():
    limit = Limiter("t", rate=2.0, burst=3)
    assert [limit.take("k", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("k", now=100.0) == pytest.approx(0.5)
    assert limit.take("other", now=100.0) == 0.0  # one bucket per key
    assert limit.take("k", now=100.5) == 0.0  # refilled one token at 2 a second
    assert limit.take("k", now=100.5) == pytest.approx(0.5)
    assert limit.take("k", now=200.0) == 0.0  # long idle: full again


def test_a_limit_with_rate_zero_is_off():
    limit = Limiter("t", rate=0, burst=1)
    assert all(limit.take("k", now=1.0) == 0.0 for _ in range(1000))
    assert len(limit) == 0


def test_idle_buckets_are_evicted_and_memory_is_bounded():
    limit = Limiter("t", rate=1.0, burst=2, max_keys=100)
    for i in range(50):
        limit.take(f"ip-{i}", now=0.0)
    assert len(limit) == 50
    limit.take("late", now=10.0)  # everyone else is full again after 2 s: forgotten
    assert len(limit) == 1
    for i in range(1000):
        limit.take(f"flood-{i}", now=20.0)
    assert len(limit) == 100  # a flood of new keys cannot grow it past max_keys


def test_check_raises_rate_limited_with_retry_after_and_counts_it():
    limit = Limiter("unit_test", rate=0.5, burst=1)
    before = refused("unit_test")
    limit.check("k")
    with pytest.raises(RateLimited) as info:
        limit.check("k")
    assert 1.0 < info.value.retry_after <= 2.0 and info.value.status == 429
    assert refused("unit_test") == before + 1


def test_frame_gate_refuses_then_closes_when_it_persists():
    gate = FrameGate(rate=0.001, burst=3)
    verdicts = [gate.admit() for _ in range(20)]
    assert verdicts[:3] == ["ok"] * 3
    assert verdicts[3:13] == ["refuse"] * 10
    assert verdicts[13:] == ["close"] * 7


def test_login_delays_per_account_and_address_and_a_failure_limit_per_address(settings):
    now = [100.0]
    limits = RateLimits(
        settings.with_(
            login_free_failures=2,
            login_delay_seconds=1.0,
            login_delay_max_seconds=8.0,
            rate_login_ip=0.001,
            rate_login_ip_burst=7,
        )
    )
    guard = limits.login
    guard.clock = lambda: now[0]
    assert guard.failed("Alice", "10.0.0.1") == []
    assert guard.failed(" alice ", "10.0.0.1") == []  # the same account, however spelled
    lockout = guard.failed("alice", "10.0.0.1")
    assert lockout == [{"scope": "account_address", "failures": 3, "seconds": 1.0}]
    with pytest.raises(RateLimited) as info:
        guard.check("alice", "10.0.0.1")
    assert info.value.retry_after == pytest.approx(1.0)
    guard.check("alice", "10.0.0.2")  # the owner, elsewhere, is not locked out
    guard.check("bob", "10.0.0.1")  # nor another account from here
    now[0] += 1.0
    guard.check("alice", "10.0.0.1")
    assert guard.failed("alice", "10.0.0.1")[0]["seconds"] == 2.0  # doubling...
    now[0] += 2.0
    assert guard.failed("alice", "10.0.0.1")[0]["seconds"] == 4.0
    now[0] += 4.0
    assert guard.failed("alice", "10.0.0.1")[0]["seconds"] == 8.0  # ...up to the cap
    guard.succeeded("alice", "10.0.0.1")  # the right password: the pair starts afresh
    guard.check("alice", "10.0.0.1")
    # A 7th failure from 10.0.0.1, on any account, uses up the address's burst.
    assert guard.failed("carol", "10.0.0.1") == [{"scope": "address", "seconds": 1000.0}]
    with pytest.raises(RateLimited):
        guard.check("dave", "10.0.0.1")
    guard.check("dave", "10.0.0.3")


def test_a_pair_quiet_for_the_longest_delay_starts_afresh(settings):
    now = [0.0]
    limits = RateLimits(
        settings.with_(login_free_failures=1, login_delay_max_seconds=60.0, rate_login_ip=0)
    )
    guard = limits.login
    guard.clock = lambda: now[0]
    guard.failed("a", "ip")
    assert guard.failed("a", "ip")  # the second failure waits
    now[0] += 61.0
    guard.check("a", "ip")
    assert guard.failed("a", "ip") == []  # counted from one again


def test_frames_unlimited_when_turned_off(settings):
    assert RateLimits(settings.with_(rate_socket_frames=0)).frame_gate() is OPEN_GATE


# ---- over HTTP and sockets -------------------------------------------------------------


@pytest.mark.asyncio
async def serve(settings, mongo_uri, **changes):
    return await serve_node(settings.with_(**changes), mongo_uri)


@pytest.mark.asyncio
async def test_rest_per_api_key_answers_429_with_retry_after(settings, mongo_uri):
    running = await serve(settings, mongo_uri, rate_rest_key=0.01, rate_rest_key_burst=3)
    try:
        key, _ = await running.node.api_keys.create("a", ALL_SCOPES)
        other, _ = await running.node.api_keys.create("b", ALL_SCOPES)
        api = Api(running.url, key)
        before = refused("rest_key")
        for _ in range(3):
            await api.get("/v1/users/p-1/unread-count")
        error = await api.get("/v1/users/p-1/unread-count", expect=429)
        assert error["code"] == "rate_limited"
        assert int(api.last.headers["Retry-After"]) >= 1
        assert refused("rest_key") == before + 1
        await api.get("/v1/users/p-1/unread-count", key=other)  # another key has its own
        # A token is limited as its user, apart from the key that minted it.
        token = await Api(running.url, other).token("p-1")
        await api.get("/v1/users/p-1/unread-count", key=token)
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_rest_per_client_address_limits_even_unauthenticated_calls(settings, mongo_uri):
    running = await serve(settings, mongo_uri, rate_rest_ip=0.01, rate_rest_ip_burst=4)
    try:
        api = Api(running.url)
        for _ in range(2):
            await api.get("/v1/users/p-1/unread-count", expect=401)
        await api.get("/healthz")
        await api.get("/v1/nothing-here", expect=404)
        error = await api.get("/v1/users/p-1/unread-count", expect=429)
        assert error["code"] == "rate_limited" and api.last.headers["Retry-After"]
        await api.get("/healthz", expect=429)
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_socket_frames_past_the_limit_get_error_frames_then_1008(settings, mongo_uri):
    running = await serve(settings, mongo_uri, rate_socket_frames=0.01, rate_socket_frames_burst=5)
    try:
        key, _ = await running.node.api_keys.create("a", ALL_SCOPES)
        api = Api(running.url, key)
        sock = await Socket.open(running.url, await api.token("p-1"))
        await sock.expect("welcome")
        before = refused("socket_frames")
        for _ in range(5):
            sock.send({"type": "ping"})
            await sock.expect("pong")
        sock.send({"type": "ping"})
        error = await sock.expect("error")
        assert error["code"] == "rate_limited" and error["message"]
        for _ in range(15):
            sock.send({"type": "ping"})
        assert await sock.closed() == 1008
        after = sock.frames[sock.frames.index(error) :]
        assert [f["code"] for f in after] == ["rate_limited"] * 10  # no pong once limited
        assert refused("socket_frames") >= before + 11
        # Other sockets are not affected.
        fresh = await Socket.open(running.url, await api.token("p-2"))
        await fresh.expect("welcome")
        fresh.send({"type": "ping"})
        await fresh.expect("pong")
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_connects_without_a_valid_token_are_limited_per_address(settings, mongo_uri):
    running = await serve(settings, mongo_uri, rate_connect_ip=0.01, rate_connect_ip_burst=2)
    try:
        key, _ = await running.node.api_keys.create("a", ALL_SCOPES)
        token = await Api(running.url, key).token("p-1")
        base = running.url.replace("http", "ws") + "/v1/ws/notifications"
        first = Socket(await websocket_connect(f"{base}?token={token}"))  # not counted
        await first.expect("welcome")
        with pytest.raises(HTTPClientError) as info:  # a refused upgrade counts
            await websocket_connect(f"{base}?token=bad")
        assert info.value.code == 401
        waiting = Socket(await websocket_connect(base))  # lent one until its auth frame
        waiting.send({"type": "auth", "token": token})
        await waiting.expect("welcome")  # ...and given back
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(f"{base}?token=bad")
        assert info.value.code == 401
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(f"{base}?token=bad")
        assert info.value.code == 429
        plain = await AsyncHTTPClient().fetch(
            running.url + "/v1/ws/notifications", raise_error=False
        )
        assert plain.code == 429 and int(plain.headers["Retry-After"]) >= 1
        body = json.loads(plain.body)
        assert body == {
            "success": False,
            "error": {"code": "rate_limited", "message": body["error"]["message"]},
        }
        # A valid token still connects from this address: per credential first.
        again = Socket(await websocket_connect(f"{base}?token={token}"))
        await again.expect("welcome")
        first.send({"type": "ping"})  # the open socket is untouched
        await first.expect("pong")
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_default_limits_let_a_busy_integrator_through(node, api):
    """The defaults are generous (the benchmarks): a burst of calls and sockets passes."""
    for _ in range(50):
        await api.get("/v1/users/p-1/unread-count")
    token = await api.token("p-1")
    socks = [await Socket.open(node.url, token) for _ in range(10)]
    for s in socks:
        await s.expect("welcome")
        for _ in range(20):
            s.send({"type": "ping"})
        for _ in range(20):
            await s.expect("pong")
