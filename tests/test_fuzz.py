"""Hypothesis fuzzing of every JSON body, the feed and presence queries, and every socket frame.

One node serves all examples of a test (hypothesis runs them in the test's event loop).
Each example checks: no 5xx, always the contract's envelope, and a refused request changed
nothing in MongoDB (the collections requests write are compared whole, before and after).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from server.app.schemas import PRIORITIES, TYPES
from server.push.service import SWEEP_KEY
from tests.support import Socket

# Reproducible (tests/conftest.py): derandomized by default; HYPOTHESIS_PROFILE=explore draws
# from a seed shown in pytest's header, and keeps failing examples in .hypothesis/ (not in
# git), replayed first on the next run. print_blob prints a failure's @reproduce_failure line.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(name="settings")
def unlimited(settings):
    """The node of each fuzz test takes hundreds of requests from one key and opens a socket
    per example for one user, faster than the default limits allow (docs/security.md):
    those limits are off here, set explicitly; tests/test_limits.py is about them."""
    return settings.with_(rate_rest_key=0, rate_rest_token=0, rate_connect_user=0)


WRITTEN = ("notifications", "reads", "events", "scheduled", "users", "api_keys")
pytestmark = pytest.mark.slow  # hundreds of requests and frames per test

FRAME_WRITES = ("notifications", "reads", "events")
USERS = ("p-1", "p-2")

# ---- strategies ---------------------------------------------------------------------------

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)  # past int64 too: BSON cannot store those
    | st.sampled_from([2**63, -(2**63) - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.sampled_from(USERS) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,20}", fullmatch=True)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=14))])
times = st.builds(
    lambda d, tz: d.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offsets,
) | st.sampled_from(["2030-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00", "2020-13-01", ""])
data = st.one_of(
    st.dictionaries(st.text(max_size=12), anything, max_size=4),
    st.fixed_dictionaries(
        {},
        optional={
            "appointment_id": ids | anything,
            "status": st.sampled_from(["confirmed", "cancelled", "x"]) | anything,
            "starts_at": times | anything,
            "lab_result_id": ids,
            "analysis_id": ids,
            "analysis_type": st.text(max_size=20),
            "$where": anything,
        },
    ),
    anything,
)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A plausible value most of the time, any JSON value sometimes."""
    return st.one_of(strategy, strategy, anything)


CONTENT = {
    "type": maybe(st.sampled_from(TYPES)),
    "priority": maybe(st.sampled_from(PRIORITIES)),
    "title": maybe(st.text(max_size=250)),
    "message": maybe(st.text(max_size=100)),
    "data": data,
    "deliver_at": maybe(times),
    "expires_at": maybe(times),
}
BODIES = {
    "/v1/tokens": {
        "user_id": maybe(ids),
        "roles": maybe(st.lists(st.sampled_from(["patient", "staff", "Bad Role", ""]))),
        "ttl_seconds": maybe(st.integers(-10, 10**8)),
    },
    "/v1/notifications": {
        **CONTENT,
        "user_id": maybe(ids),
        "user_ids": maybe(st.lists(ids, max_size=5)),
    },
    "/v1/broadcasts": {**CONTENT, "audience": maybe(st.sampled_from(["all", "patient", "X"]))},
    "/v1/ws/test-notification": {
        "user_id": maybe(ids),
        "title": maybe(st.text(max_size=250)),
        "message": maybe(st.text(max_size=100)),
    },
}


# A valid body of each route: most examples change one or two of its fields, so that
# they reach the deep checks (and storage) rather than stop at the first missing field.
VALID = {
    "/v1/tokens": {"user_id": "p-1", "roles": ["patient"], "ttl_seconds": 600},
    "/v1/notifications": {"user_id": "p-1", "type": "custom", "title": "T", "data": {"k": 1}},
    "/v1/broadcasts": {"audience": "patient", "title": "T", "message": "M"},
    "/v1/ws/test-notification": {"user_id": "p-1", "title": "T", "message": "M"},
}
REMOVE = object()


def _changed(path: str, changes: list[tuple[str, object]]) -> dict:
    body = dict(VALID[path])
    for key, value in changes:
        if value is REMOVE:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def body_for(path: str) -> st.SearchStrategy:
    fields = {**BODIES[path], "unknown": anything}
    change = st.sampled_from(sorted(fields)).flatmap(
        lambda key: st.tuples(st.just(key), fields[key] | st.just(REMOVE))
    )
    mutated = st.lists(change, min_size=1, max_size=2).map(lambda cs: _changed(path, cs))
    loose = st.fixed_dictionaries({}, optional=fields)
    as_json = st.one_of(mutated, mutated, mutated, loose, anything).map(json.dumps)
    return st.one_of(as_json.map(str.encode), st.binary(max_size=64))


requests_ = st.sampled_from(sorted(BODIES)).flatmap(lambda p: st.tuples(st.just(p), body_for(p)))

# ---- helpers ------------------------------------------------------------------------------


async def snapshot(node, names: tuple[str, ...] = WRITTEN) -> dict[str, list]:
    """Every document of the collections a request could write (but the push sweep's standing
    entry in the due-work queue, which the node claims and releases on its own)."""
    db = node.node.store.db
    mine = {"scheduled": {"_id": {"$ne": SWEEP_KEY}}}
    return {
        name: await db[name].find(mine.get(name, {}), sort=[("_id", 1)]).to_list(None)
        for name in names
    }


async def call(url: str, method: str, key: str, body: bytes | None = None):
    """One request; returns (status, envelope) after checking the envelope's shape."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = HTTPRequest(url, method=method, headers=headers, body=body)
    resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    assert resp.code < 500, (resp.code, resp.body[:300])
    envelope = json.loads(resp.body)
    if resp.code < 300:
        assert envelope["success"] is True and "data" in envelope
    else:
        assert envelope["success"] is False
        assert set(envelope["error"]) <= {"code", "message", "fields"}
        assert isinstance(envelope["error"]["code"], str) and envelope["error"]["message"]
    return resp.code, envelope


# ---- tests --------------------------------------------------------------------------------


@pytest.mark.asyncio
@settings(FUZZ, max_examples=60)
@given(request=requests_)
async def test_json_bodies_never_fail_and_refusals_store_nothing(node, api_key, request):
    path, body = request
    before = await snapshot(node)
    status, envelope = await call(node.url + path, "POST", api_key, body)
    assert status in (201, 400), (status, envelope)
    if status == 400:
        assert await snapshot(node) == before, f"a refused {path} changed MongoDB"
        assert envelope["error"]["code"] == "validation_error"


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["data", "deliver_at", "expires_at", "title", "user_ids"])
@settings(FUZZ, max_examples=15)
@given(value=st.data())
async def test_each_notification_field_alone(node, api_key, field, value):
    """One field of a valid notification changed: reaches storage far more often than random
    bodies (where, for example, a ``data`` integer past 64 bits used to hang the request)."""
    body = {**VALID["/v1/notifications"], field: value.draw(BODIES["/v1/notifications"][field])}
    before = await snapshot(node)
    status, _ = await call(node.url + "/v1/notifications", "POST", api_key, json.dumps(body))
    assert status in (201, 400)
    if status == 400:
        assert await snapshot(node) == before


feed_queries = st.fixed_dictionaries(
    {},
    optional={
        "unread": maybe(st.sampled_from(["true", "false", "1", "yes"])).map(str),
        "type": maybe(st.sampled_from(TYPES)).map(str),
        "limit": maybe(st.integers(-5, 500)).map(str),
        "before": maybe(st.sampled_from(["c.5", "n.1", "7", "x.1", "1" * 30])).map(str),
        "junk": st.text(max_size=10),
    },
)
presence_queries = st.fixed_dictionaries(
    {}, optional={"user_ids": st.lists(maybe(ids).map(str), max_size=4).map(",".join)}
)


@pytest.mark.asyncio
@settings(FUZZ, max_examples=30)
@given(feed=feed_queries, presence=presence_queries, user=ids)
async def test_queries_never_fail(node, api_key, feed, presence, user):
    await call(f"{node.url}/v1/users/{user}/notifications?{urlencode(feed)}", "GET", api_key)
    status, _ = await call(f"{node.url}/v1/presence?{urlencode(presence)}", "GET", api_key)
    assert status in (200, 400)


frame_types = st.sampled_from(["ack", "read", "read_all", "ping", "auth"])
frames = st.one_of(
    st.fixed_dictionaries(
        {"type": maybe(frame_types)},
        optional={"id": maybe(ids), "token": maybe(st.text(max_size=50)), "extra": anything},
    ).map(json.dumps),
    anything.map(json.dumps),
    st.text(max_size=50),
    st.binary(max_size=50),
    # A key given twice: refused whichever value comes first (one parser, no last-wins).
    st.tuples(frame_types, ids, ids).map(
        lambda t: f'{{"type": "{t[0]}", "id": "{t[1]}", "id": "{t[2]}"}}'
    ),
)
REPLIES = {"error", "pong", "read", "unread_count", "notification"}
PING = json.dumps({"type": "ping"})


@pytest.mark.asyncio
@settings(FUZZ, max_examples=25)
@given(batch=st.lists(frames, min_size=1, max_size=6))
async def test_socket_frames_never_break_the_socket(node, api, batch):
    """Every frame gets its answer (or none), never a dropped socket; a refused one changes
    nothing."""
    token = await api.token("p-1", ["patient"], ttl=600)
    await api.notify("p-1")
    sock = await Socket.open(node.url, token)
    await sock.expect("welcome")
    for frame in batch:
        before = await snapshot(node, FRAME_WRITES)
        sock.conn.write_message(frame, binary=isinstance(frame, bytes))
        sock.send({"type": "ping"})  # frames are handled in order: its pong ends the answers
        replies, pongs = [], 2 if frame == PING else 1
        while pongs:
            reply = await sock.recv()
            assert reply is not None, f"closed ({sock.conn.close_code}) after {frame!r}"
            assert reply["type"] in REPLIES, reply
            pongs -= reply["type"] == "pong"
            replies.append(reply)
        if any(r["type"] == "error" for r in replies):
            assert all(r["code"] and r["message"] for r in replies if r["type"] == "error")
            assert await snapshot(node, FRAME_WRITES) == before, f"{frame!r} changed MongoDB"
    sock.close()
