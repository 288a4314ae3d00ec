"""The pip package clinic-notify (clients/python) against real nodes: every REST call, sync
and async, its errors and retries, and ``listen`` over the real socket.

The package is imported from its source folder (clients/python/src), as CI's wheel test
installs it separately into a fresh virtual environment (.ci/packages.sh).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import re
import sys
import time
from asyncio.subprocess import PIPE
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
import pytest_asyncio

from server.ops.embedded import EmbeddedMongo, free_port
from tests.support import TOKEN_SECRET, Socket, serve_node, wait_for

SOURCE = Path(__file__).resolve().parent.parent / "clients" / "python" / "src"
sys.path.insert(0, str(SOURCE))

from clinic_notify import AsyncNotifyClient, NotifyClient, NotifyError  # noqa: E402

pytestmark = pytest.mark.asyncio

SOON = datetime.now(UTC) + timedelta(days=30)


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Caller:
    """Either flavor from an async test: the sync client runs in a thread (it blocks)."""

    def __init__(self, api: NotifyClient | AsyncNotifyClient):
        self.api = api

    def __getattr__(self, name: str):
        method = getattr(self.api, name)

        async def call(*args, **kwargs):
            if isinstance(self.api, AsyncNotifyClient):
                return await method(*args, **kwargs)
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


@pytest.fixture(params=["sync", "async"])
def flavor(request):
    return NotifyClient if request.param == "sync" else AsyncNotifyClient


@pytest_asyncio.fixture
async def client(node, api_key, flavor):
    return Caller(flavor(node.url, api_key))


async def test_appointment_for_one_user_and_for_several(client, api):
    starts = datetime(2026, 12, 2, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    made = await client.send_appointment_notification(
        "p-1", "a-77", "confirmed", "See you then.", starts_at=starts
    )
    assert made["type"] == "appointment" and made["title"] == "Appointment confirmed"
    assert made["message"] == "See you then." and made["user_id"] == "p-1"
    data = made["data"]
    assert (data["appointment_id"], data["status"]) == ("a-77", "confirmed")
    assert parse(data["starts_at"]) == datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    assert data["starts_at"].endswith("Z")
    feed = await api.get("/v1/users/p-1/notifications")
    assert [n["id"] for n in feed["items"]] == [made["id"]]

    many = await client.send_appointment_notification(
        ["p-1", "p-2"], "a-78", "reminder", title="Tomorrow", priority="high"
    )
    assert [(n["user_id"], n["title"], n["priority"]) for n in many] == [
        ("p-1", "Tomorrow", "high"),
        ("p-2", "Tomorrow", "high"),
    ]


async def test_lab_result_ai_analysis_system_alert_and_custom(client):
    lab = await client.send_lab_result_notification("p-1", "lab-5", test_name="HbA1c")
    assert (lab["type"], lab["title"]) == ("lab_result", "Lab results ready")
    assert lab["data"] == {"lab_result_id": "lab-5", "test_name": "HbA1c"}

    ai = await client.send_ai_analysis_notification("p-1", "an-1", "ecg", "Your ECG was read.")
    assert (ai["type"], ai["title"], ai["message"]) == (
        "ai_analysis",
        "AI analysis complete",
        "Your ECG was read.",
    )
    assert ai["data"] == {"analysis_id": "an-1", "analysis_type": "ecg"}

    alert = await client.send_system_alert("p-1", "Portal maintenance at 22:00", {"window": 2})
    assert (alert["type"], alert["title"], alert["data"]) == (
        "system_alert",
        "System alert",
        {"window": 2},
    )

    custom = await client.send_custom(
        "p-1", "Hello", "Welcome", {"k": [1, 2]}, priority="critical", expires_at=SOON
    )
    assert (custom["title"], custom["priority"], custom["data"]) == (
        "Hello",
        "critical",
        {"k": [1, 2]},
    )
    assert abs(parse(custom["expires_at"]) - SOON) < timedelta(milliseconds=1)


async def test_scheduling_then_cancelling(client):
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await client.send_custom("p-1", "Later", deliver_at=later)
    assert abs(parse(scheduled["deliver_at"]) - later) < timedelta(milliseconds=1)
    cancelled = await client.cancel(scheduled["id"])
    assert cancelled["id"] == scheduled["id"]
    with pytest.raises(NotifyError) as gone:
        await client.cancel(scheduled["id"])
    assert (gone.value.status, gone.value.code) == (404, "not_found")
    sent = await client.send_custom("p-1", "Now")
    with pytest.raises(NotifyError) as late:
        await client.cancel(sent["id"])
    assert (late.value.status, late.value.code) == (409, "conflict")


async def test_broadcast_and_token(client, node):
    sent = await client.broadcast("patient", "Flu shots", "Walk in this week.", priority="high")
    assert (sent["audience"], sent["type"], sent["priority"]) == ("patient", "system_alert", "high")

    minted = await client.mint_token("p-3", ["patient"], ttl_seconds=60)
    claims = jwt.decode(minted["token"], TOKEN_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["roles"]) == ("p-3", ["patient"])
    assert 55 <= claims["exp"] - datetime.now(UTC).timestamp() <= 61
    sock = await Socket.open(node.url, minted["token"])
    welcome = await sock.expect("welcome")
    assert welcome["user_id"] == "p-3" and welcome["unread_count"] == 1  # the broadcast
    sock.close()


async def test_feed_read_state_presence_stats_and_test_notification(client, node, api):
    made = [await client.send_custom("p-1", f"n{i}") for i in range(3)]
    page = await client.feed("p-1", limit=2)
    assert [n["id"] for n in page["items"]] == [made[2]["id"], made[1]["id"]]
    rest = await client.feed("p-1", limit=2, before=page["next"])
    assert [n["id"] for n in rest["items"]] == [made[0]["id"]] and rest["next"] is None
    assert await client.unread_count("p-1") == 3

    read = await client.mark_read("p-1", made[0]["id"])
    assert read["id"] == made[0]["id"] and read["read_at"]
    unread = await client.feed("p-1", unread=True)
    assert [n["id"] for n in unread["items"]] == [made[2]["id"], made[1]["id"]]
    assert await client.mark_all_read("p-1") == 2
    assert await client.unread_count("p-1") == 0

    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    presence = await client.presence(["p-1", "p-9"])
    assert presence["p-1"] == {"online": True, "connections": 1}
    assert presence["p-9"]["online"] is False
    stats = await client.stats()
    assert stats["connected_clients"] >= 1 and stats["status"] == "active"
    test = await client.send_test_notification("p-1", "Ping", "from the integrator")
    assert (await sock.expect("notification"))["notification"]["id"] == test["id"]
    sock.close()


@pytest.mark.parametrize(
    "call, status, code, field",
    [
        (lambda c: c.send_appointment_notification("p-1", "a-1", "maybe"), 400, None, "data"),
        (lambda c: c.send_custom("p 1", "bad id"), 400, "validation_error", "user_id"),
        (lambda c: c.mint_token("p-1", ttl_seconds=5), 400, "validation_error", "ttl_seconds"),
        (lambda c: c.broadcast("Everyone!", "t", "m"), 400, "validation_error", "audience"),
        (lambda c: c.mark_read("p-1", "no-such-id"), 404, "not_found", None),
    ],
)
async def test_bad_requests_raise_with_code_status_and_fields(client, call, status, code, field):
    with pytest.raises(NotifyError) as caught:
        await call(client)
    err = caught.value
    assert err.status == status and err.message
    assert err.code == (code or "validation_error")
    if field:
        assert field in err.fields, err.fields
        assert field in str(err)


async def test_bad_key_is_401_and_missing_scope_is_403(node, flavor):
    with pytest.raises(NotifyError) as bad:
        await Caller(flavor(node.url, "nk_not-a-real-key")).send_custom("p-1", "x")
    assert (bad.value.status, bad.value.code) == (401, "unauthorized")

    reader, _ = await node.node.api_keys.create("reader", ["read"])
    with pytest.raises(NotifyError) as denied:
        await Caller(flavor(node.url, reader)).send_custom("p-1", "x")
    assert (denied.value.status, denied.value.code) == (403, "forbidden")
    assert "notify" in denied.value.message


@pytest.mark.slow
async def test_storage_gone_is_503_and_the_service_recovers(settings, tmp_path):
    database = EmbeddedMongo(tmp_path / "db")
    uri = database.start()
    revived = EmbeddedMongo(tmp_path / "db", port=database.port)
    fast = settings.with_(mongodb_timeout_ms=500, storage_timeout=1.0)
    running = await serve_node(fast, uri)
    try:
        key, _ = await running.node.api_keys.create("tests", ["notify"])
        clients = [
            Caller(NotifyClient(running.url, key, retries=0)),
            Caller(AsyncNotifyClient(running.url, key, retries=0)),
        ]
        database.stop()  # the database process is gone; the node stays up
        for client in clients:
            with pytest.raises(NotifyError) as caught:
                await client.send_custom("p-1", "x")
            assert (caught.value.status, caught.value.code) == (503, "storage_unavailable")
        revived.start()  # it comes back, same port, same data
        for _ in range(100):
            with contextlib.suppress(NotifyError):
                await clients[0].send_custom("p-1", "back")
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the service did not recover")
        assert (await clients[1].send_custom("p-1", "again"))["title"] == "again"
    finally:
        await running.stop()
        database.stop()
        revived.stop()


async def test_no_service_at_the_address_is_unreachable(flavor):
    api = flavor(f"http://127.0.0.1:{free_port()}", "nk_whatever", timeout=2, retries=0)
    with pytest.raises(NotifyError) as caught:
        await Caller(api).stats()
    assert caught.value.code == "unreachable" and caught.value.status is None


async def test_local_mistakes_fail_before_any_request(flavor):
    api = Caller(flavor("http://127.0.0.1:9", "nk_x"))
    with pytest.raises(ValueError, match="aware"):
        await api.send_custom("p-1", "x", deliver_at=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="colour"):
        await api.send_custom("p-1", "x", colour="red")
    if flavor is NotifyClient:  # the async one may listen with a token alone
        with pytest.raises(ValueError):
            flavor("http://127.0.0.1:9", "")
    assert "nk_x" not in repr(api.api)


@pytest.mark.slow
async def test_the_package_needs_only_httpx_and_websockets_and_parses_as_python_3_9():
    code = (
        "import sys, clinic_notify, clinic_notify.cli; "
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('server', 'handlers', 'tornado', 'pymongo', 'marshmallow', 'jwt')]; "
        "print(bad)"
    )
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=PIPE, env=env)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "[]"
    # requires-python >= 3.9: no syntax of a later Python (the tests run on a later one)
    for path in (SOURCE / "clinic_notify").glob("*.py"):
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))
    assert (SOURCE / "clinic_notify" / "py.typed").exists()


@pytest.mark.slow
async def test_429_is_retried_after_retry_after_and_stored_once(settings, mongo_uri, flavor):
    limited = await serve_node(settings.with_(rate_rest_key=1.0, rate_rest_key_burst=1), mongo_uri)
    try:
        key, _ = await limited.node.api_keys.create("tests", ["notify", "read"])
        client = Caller(flavor(limited.url, key))
        first = await client.send_custom("p-1", "first")
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await client.send_custom("p-1", "second")  # 429, Retry-After: 1, then 201
        assert loop.time() - started >= 0.5
        assert second["id"] != first["id"]
        unlimited = Caller(flavor(limited.url, key, retries=0))
        with pytest.raises(NotifyError) as caught:
            await unlimited.send_custom("p-1", "third")
        assert (caught.value.status, caught.value.code) == (429, "rate_limited")
        assert caught.value.retry_after and caught.value.retry_after >= 1
    finally:
        await limited.stop()
    titles = []
    verify = await serve_node(settings.with_(node_id="verify"), mongo_uri)
    try:
        key, _ = await verify.node.api_keys.create("reader", ["read"])
        feed = await Caller(NotifyClient(verify.url, key)).feed("p-1")
        titles = sorted(n["title"] for n in feed["items"])
    finally:
        await verify.stop()
    assert titles == ["first", "second"]  # the retried write is stored once


class Flaky:
    """A real HTTP server on 127.0.0.1 that answers 503 (Retry-After: 0) before a 201, and
    records the headers of every request: what the client sends on a retry."""

    def __init__(self, failures: int):
        self.failures = failures
        self.seen: list[dict[str, str]] = []

    async def start(self) -> str:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets
        from tornado.web import Application, RequestHandler

        flaky = self

        class Answer(RequestHandler):
            def post(self, *args: str) -> None:
                flaky.seen.append(dict(self.request.headers))
                if len(flaky.seen) <= flaky.failures:
                    self.set_status(503)
                    self.set_header("Retry-After", "0")
                    error = {"code": "storage_unavailable", "message": "try again"}
                    self.finish({"success": False, "error": error})
                else:
                    self.set_status(201)
                    self.finish({"success": True, "data": {"id": "n-1"}})

        sockets = bind_sockets(0, "127.0.0.1")
        self.server = HTTPServer(Application([(r"/(.*)", Answer)]))
        self.server.add_sockets(sockets)
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}"


async def test_a_write_keeps_its_idempotency_key_across_retries(flavor):
    flaky = Flaky(failures=2)
    url = await flaky.start()
    try:
        client = Caller(flavor(url, "nk_x"))
        assert (await client.send_custom("p-1", "once"))["id"] == "n-1"
        keys = [h.get("Idempotency-Key") for h in flaky.seen]
        assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
        await client.send_custom("p-1", "another")  # a new call: a new key
        assert flaky.seen[-1]["Idempotency-Key"] != keys[0]
        flaky.failures = 99
        with pytest.raises(NotifyError) as caught:
            await Caller(flavor(url, "nk_x", retries=1)).send_custom("p-1", "gives up")
        assert (caught.value.status, caught.value.code) == (503, "storage_unavailable")
    finally:
        flaky.server.stop()


@pytest.mark.slow
async def test_listen_acks_and_resumes_with_since_across_a_restart(settings, mongo_uri):
    first = await serve_node(settings, mongo_uri)
    port = first.port
    key, _ = await first.node.api_keys.create("tests", ["notify", "tokens", "read"])
    api = AsyncNotifyClient(first.url, key)
    token = (await api.mint_token("p-1", ["patient"]))["token"]
    news: list[str] = []
    listener = AsyncNotifyClient(first.url).listen(
        "p-1", token, min_delay=0.1, max_delay=0.4, on_status=news.append
    )
    got: list[dict] = []
    again = None
    try:
        receive = asyncio.ensure_future(listener.__anext__())

        async def online() -> bool:
            return (await api.presence(["p-1"]))["p-1"]["online"]

        await wait_for(online, what="the listener connected")
        made = [await api.send_custom("p-1", "before")]
        got.append(await asyncio.wait_for(receive, 10))
        await first.stop()
        other = await serve_node(settings.with_(node_id="other"), mongo_uri)
        try:
            other_api = AsyncNotifyClient(other.url, key)
            made += [await other_api.send_custom("p-1", f"during {i}") for i in range(3)]
        finally:
            await other.stop()
        again = await serve_node(settings.with_(port=port, node_id="again"), mongo_uri)
        for _ in range(3):
            got.append(await asyncio.wait_for(listener.__anext__(), 20))
        made.append(await AsyncNotifyClient(again.url, key).send_custom("p-1", "after"))
        got.append(await asyncio.wait_for(listener.__anext__(), 10))
        assert [n["id"] for n in got] == [m["id"] for m in made]
        assert any(f"since={made[0]['cursor']}" in line for line in news)

        async def all_delivered() -> bool:  # each was acked: the service recorded it
            feed = await AsyncNotifyClient(again.url, key).feed("p-1")
            return all(n["delivered_at"] for n in feed["items"])

        await wait_for(all_delivered, what="every delivery recorded")
        assert not any(token in line for line in news)
    finally:
        await listener.aclose()
        if again is not None:
            await again.stop()


OTHER_SECRET = "another-secret-0123456789abcdefghijkl"


@pytest.mark.parametrize(
    "token, user_id, code",
    [
        ("not-a-token", "p-1", "unauthorized"),
        (jwt.encode({"sub": "p-1", "exp": 9999999999}, OTHER_SECRET), None, "unauthorized"),
    ],
)
async def test_listen_raises_when_the_token_is_refused(node, token, user_id, code):
    listener = AsyncNotifyClient(node.url).listen(user_id, token, min_delay=0.05)
    with pytest.raises(NotifyError) as caught:
        await asyncio.wait_for(listener.__anext__(), 10)
    assert caught.value.code == code and caught.value.message


async def test_listen_with_a_bad_since_is_refused_before_connecting(node, api):
    with pytest.raises(ValueError, match="since"):
        AsyncNotifyClient(node.url).listen("p-1", "t", since="abc")


def table(readme: str, marker: str) -> dict[str, str]:
    """The options table between <!-- marker --> and <!-- /marker -->: name -> default."""
    block = readme.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", block, re.M)
    return dict(rows)


async def test_the_readmes_option_tables_match_the_code():
    from clinic_notify.client import _Base
    from clinic_notify.listen import Listener

    readme = (SOURCE.parent / "README.md").read_text()
    for marker, function in (("options", _Base.__init__), ("listen-options", Listener.__init__)):
        params = inspect.signature(function).parameters.values()
        code = {p.name: repr(p.default) for p in params if p.kind is p.KEYWORD_ONLY}
        code.pop("since", None)  # a listen() argument of its own, documented in the text
        assert table(readme, marker) == code, marker


@pytest.mark.slow
async def test_listen_asks_a_token_function_again_when_the_token_expires(node, api):
    minted: list[str] = []

    async def fresh() -> str:  # a backend handing out two-second tokens
        claims = {"sub": "p-1", "roles": ["patient"], "exp": int(time.time()) + 2}
        minted.append(jwt.encode(claims, TOKEN_SECRET, "HS256"))
        return minted[-1]

    news: list[str] = []
    listener = AsyncNotifyClient(node.url).listen(
        None, fresh, min_delay=0.05, max_delay=0.2, on_status=news.append
    )
    try:
        receive = asyncio.ensure_future(listener.__anext__())
        await wait_for(lambda: any("connecting" in n for n in news), what="connecting")
        await wait_for(lambda: len(node.node.hub.user_subscriptions("p-1")) == 1, what="online")
        first = await api.notify("p-1", "first")
        assert (await asyncio.wait_for(receive, 10))["id"] == first["id"]
        receive = asyncio.ensure_future(listener.__anext__())  # listening goes on meanwhile
        await wait_for(lambda: len(minted) >= 2, timeout=15, what="a second token")
        assert any("closed: 1008 token expired" in n for n in news)
        second = await api.notify("p-1", "second")
        assert (await asyncio.wait_for(receive, 15))["id"] == second["id"]
    finally:
        await listener.aclose()


async def test_acknowledge_on_the_users_behalf(client, api):
    made = await client.send_custom("p-1", "Critical result", priority="critical")
    acked = await client.acknowledge("p-1", made["id"], note="called the patient")
    assert acked["id"] == made["id"] and acked["acknowledged_at"]
    assert acked["acknowledged_by"].startswith("key:")
    again = await client.acknowledge("p-1", made["id"])  # twice: 200, nothing changes
    assert again["acknowledged_at"] == acked["acknowledged_at"]
    with pytest.raises(NotifyError) as caught:
        await client.acknowledge("p-1", "no-such-id")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
