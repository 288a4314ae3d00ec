"""What an operator sees: JSON log lines with request ids, and the Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from server.app import logs
from tests.conftest import ALL_SCOPES
from tests.support import Api, Socket, serve_node

SECRET_TITLE = "HIV test result available"
SECRET_MESSAGE = "Your viral load is undetectable"
SECRET_DATA = "ICD-B20"


@pytest.fixture
def log_lines():
    """Every log line of the process, as the service writes them (JSON, at DEBUG)."""
    stream = io.StringIO()
    root = logging.getLogger()
    level, pymongo_level = root.level, logging.getLogger("pymongo").level
    handler = logs.setup("DEBUG", "json", stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("pymongo").setLevel(pymongo_level)


async def fetch(url: str, **kw) -> object:
    return await AsyncHTTPClient().fetch(HTTPRequest(url, **kw), raise_error=False)


# ---- request ids -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_request_id_comes_back_and_is_made_when_missing_or_unfit(node):
    sent = await fetch(node.url + "/healthz", headers={"X-Request-Id": "lb-7f3a.9"})
    assert sent.headers["X-Request-Id"] == "lb-7f3a.9"
    made = await fetch(node.url + "/healthz")
    assert len(made.headers["X-Request-Id"]) == 32
    for unfit in ("x" * 65, "a b", "<script>", "id\\n"):
        resp = await fetch(node.url + "/v1/nothing", headers={"X-Request-Id": unfit})
        assert resp.code == 404 and resp.headers["X-Request-Id"] != unfit
    error = await fetch(node.url + "/v1/tokens", method="POST", body=b"{}")
    assert error.code == 401 and len(error.headers["X-Request-Id"]) == 32


def test_log_lines_are_json_with_request_id_and_extras():
    record = logging.LogRecord("notify.x", logging.WARNING, __file__, 1, "hi %s", ("there",), None)
    record.request_id = "r-1"
    record.user_id = "p-1"
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "hi there" and line["level"] == "WARNING"
    assert line["logger"] == "notify.x" and line["request_id"] == "r-1"
    assert line["user_id"] == "p-1" and line["time"].endswith("+00:00")
    token = logs.REQUEST_ID.set("from-context")
    try:
        plain = logging.LogRecord("notify.x", logging.INFO, __file__, 1, "m", (), None)
        assert json.loads(logs.JsonFormatter().format(plain))["request_id"] == "from-context"
    finally:
        logs.REQUEST_ID.reset(token)


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/ws/notifications?since=4&token=abc.def.ghi (127.0.0.1)",
        "Authorization: Bearer nk_0123456789abcdefghij",
        "bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwLTEifQ.c2lnbmF0dXJl",
        "path /v1/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwLTEifQ.c2ln/x",
        "key nk_AbCdEfGhIjKlMnOp_qrs-tu",
    ],
)
def test_credentials_are_scrubbed_from_any_line(text):
    scrubbed = logs.redact(text)
    assert "[redacted]" in scrubbed
    for secret in ("abc.def.ghi", "nk_0123", "eyJ", "nk_AbC"):
        assert secret not in scrubbed


@pytest.mark.asyncio
async def test_no_token_key_or_notification_body_in_any_log_line_after_a_full_flow(
    node, api, api_key, log_lines
):
    token = await api.token("p-1")
    sock = await Socket.open(node.url, token)  # the token in the query string
    await sock.expect("welcome")
    late = await Socket.open(node.url)
    late.send({"type": "auth", "token": token})  # and in an auth frame
    await late.expect("welcome")
    made = await api.post(
        "/v1/notifications",
        {
            "user_id": "p-1",
            "type": "custom",
            "title": SECRET_TITLE,
            "message": SECRET_MESSAGE,
            "data": {"code": SECRET_DATA},
        },
        expect=201,
        headers={"X-Request-Id": "flow-create-1"},
    )
    await sock.expect("notification")
    sock.send({"type": "ack", "id": made["id"]})
    sock.send({"type": "read", "id": made["id"]})
    await late.expect("read")
    await api.get("/v1/users/p-1/notifications", key=token)
    await api.get("/v1/users/p-2/notifications", key=token, expect=403)
    await api.post("/v1/users/p-1/notifications/read-all")
    bad = {"user_id": "p-1", "type": "custom", "title": SECRET_TITLE, "message": 5}
    await api.post("/v1/notifications", bad, expect=400)
    await api.post("/v1/notifications", raw=f'{{"title": "{SECRET_TITLE}"'.encode(), expect=400)
    await api.get(f"/v1/users/{token}/notifications", expect=404)  # a token in a path
    await api.get("/v1/users/p-1/unread-count", key=token + "x", expect=401)
    with pytest.raises(HTTPClientError):
        await websocket_connect(
            node.url.replace("http", "ws") + f"/v1/ws/notifications?token={token}x"
        )
    sock.close()
    late.close()
    await node.node.audit.flush()

    text = log_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    access = [line for line in lines if line["logger"] == "notify.access"]
    assert len(access) >= 10
    created = [line for line in access if line.get("request_id") == "flow-create-1"]
    assert len(created) == 1 and created[0]["message"].startswith("201 POST /v1/notifications")
    for secret in (token, api_key, SECRET_TITLE, SECRET_MESSAGE, SECRET_DATA):
        assert secret not in text, secret
    # The token in the path reached the access line only as a user id's pseudonym.
    assert logs.pseudonym(token, node.node.log_key) in text


# ---- metrics ---------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


async def metrics(url: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await fetch(url + "/metrics", headers=headers)
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return resp.body.decode()


@pytest_asyncio.fixture
async def second(settings, mongo_uri):
    running = await serve_node(settings.with_(node_id="second"), mongo_uri)
    yield running
    await running.stop()


@pytest.mark.asyncio
async def test_metrics_cover_connections_deliveries_latency_replay_bus_and_refusals(
    node, second, api
):
    before = samples(await metrics(node.url))
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    other = await Socket.open(node.url, await api.token("p-2"))
    await other.expect("welcome")
    first = await api.notify("p-1")
    await sock.expect("notification")
    await api.post(
        "/v1/notifications",
        {"user_id": "p-1", "type": "lab_result", "data": {"lab_result_id": "l-1"}},
        expect=201,
    )
    await sock.expect("notification")
    via_second = Api(second.url, api.key)
    await via_second.notify("p-1", "from the other node")  # reaches us through the bus
    await sock.expect("notification")
    back = await Socket.open(node.url, await api.token("p-1"), since=first["cursor"])
    await back.expect("replay_done")
    text = await metrics(node.url)
    after = samples(text)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert after[("notify_connections", ())] >= 3 and after[("notify_users", ())] >= 2
    assert grew("notify_notifications_created_total", type="custom") >= 1
    assert grew("notify_notifications_created_total", type="lab_result") == 1
    assert grew("notify_notifications_delivered_total", type="lab_result") == 1
    assert grew("notify_notifications_delivered_total", type="custom") >= 2
    assert grew("notify_delivery_latency_seconds_count") >= 3
    assert grew("notify_replayed_total") == 2
    assert grew("notify_bus_lag_seconds_count") >= 1
    for name in ("notify_rate_limited", "notify_storage_errors", "notify_slow_readers_dropped"):
        assert name in families(text)


@pytest.mark.asyncio
async def test_metrics_can_be_restricted_to_a_read_key(settings, mongo_uri):
    running = await serve_node(settings.with_(metrics_public=False), mongo_uri)
    try:
        node = running.node
        read_key, _ = await node.api_keys.create("prom", ["read"])
        notify_key, _ = await node.api_keys.create("app", ["notify", "tokens"])
        token = await Api(running.url, notify_key).token("p-1")
        assert (await fetch(running.url + "/metrics")).code == 401
        for wrong in (notify_key, token):
            resp = await fetch(
                running.url + "/metrics", headers={"Authorization": f"Bearer {wrong}"}
            )
            assert resp.code == 403
        assert "notify_connections" in await metrics(running.url, read_key)
        admin, _ = await node.api_keys.create("root", ALL_SCOPES)
        assert "notify_connections" in await metrics(running.url, admin)
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_metrics_are_public_by_default(node):
    assert "notify_connections" in await metrics(node.url)
