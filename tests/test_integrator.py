"""tools/integrator.py against a real node: every call, sync and async, and its errors."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from datetime import UTC, datetime, timedelta, timezone

import jwt
import pytest
import pytest_asyncio

from server.embedded import EmbeddedMongo, free_port
from tests.support import TOKEN_SECRET, Socket, serve_node, wait_for
from tools.integrator import AsyncNotifyApi, NotifyApi, NotifyError

pytestmark = pytest.mark.asyncio

SOON = datetime.now(UTC) + timedelta(days=30)


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Caller:
    """Either flavor from an async test: the sync client runs in a thread (it blocks)."""

    def __init__(self, api: NotifyApi | AsyncNotifyApi):
        self.api = api

    def __getattr__(self, name: str):
        method = getattr(self.api, name)

        async def call(*args, **kwargs):
            if isinstance(self.api, AsyncNotifyApi):
                return await method(*args, **kwargs)
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


@pytest.fixture(params=["sync", "async"])
def flavor(request):
    return NotifyApi if request.param == "sync" else AsyncNotifyApi


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


async def _sent(client: Caller) -> bool:
    """One notification went through (the service answers again)."""
    try:
        await client.send_custom("p-1", "back")
    except NotifyError:
        return False
    return True


@pytest.mark.slow
async def test_storage_gone_is_503_and_the_service_recovers(settings, tmp_path):
    database = EmbeddedMongo(tmp_path / "db")
    uri = database.start()
    revived = EmbeddedMongo(tmp_path / "db", port=database.port)
    fast = settings.with_(mongodb_timeout_ms=500, storage_timeout=1.0)
    running = await serve_node(fast, uri)
    try:
        key, _ = await running.node.api_keys.create("tests", ["notify"])
        clients = [Caller(NotifyApi(running.url, key)), Caller(AsyncNotifyApi(running.url, key))]
        database.stop()  # the database process is gone; the node stays up
        for client in clients:
            with pytest.raises(NotifyError) as caught:
                await client.send_custom("p-1", "x")
            assert (caught.value.status, caught.value.code) == (503, "storage_unavailable")
        revived.start()  # it comes back, same port, same data
        await wait_for(lambda: _sent(clients[0]), what="the service to recover")
        assert (await clients[1].send_custom("p-1", "again"))["title"] == "again"
    finally:
        await running.stop()
        database.stop()
        revived.stop()


async def test_no_service_at_the_address_is_unreachable(flavor):
    api = flavor(f"http://127.0.0.1:{free_port()}", "nk_whatever", timeout=2)
    with pytest.raises(NotifyError) as caught:
        await Caller(api).stats()
    assert caught.value.code == "unreachable" and caught.value.status is None


async def test_local_mistakes_fail_before_any_request(flavor):
    api = Caller(flavor("http://127.0.0.1:9", "nk_x"))
    with pytest.raises(ValueError, match="aware"):
        await api.send_custom("p-1", "x", deliver_at=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="colour"):
        await api.send_custom("p-1", "x", colour="red")
    with pytest.raises(ValueError):
        flavor("http://127.0.0.1:9", "")
    assert "nk_x" not in repr(api.api)


@pytest.mark.slow
async def test_the_module_needs_only_the_standard_library():
    code = (
        "import sys, tools.integrator as m; "
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('server', 'handlers', 'tornado', 'pymongo', 'marshmallow', 'jwt')]; "
        "print(bad)"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "[]"
