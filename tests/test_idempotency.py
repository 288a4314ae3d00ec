"""Idempotency-Key (CONTRACT §10) on POST /v1/notifications, /v1/broadcasts, /v1/webhooks."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPRequest, HTTPResponse

from server.app.idempotency import fingerprint
from tests.conftest import ALL_SCOPES
from tests.support import Api, serve_node
from tests.webhook_receiver import until

pytestmark = pytest.mark.asyncio

NOTE = {"user_id": "p-1", "type": "custom", "title": "Hello", "message": "m"}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def feed_size(api: Api, user: str = "p-1") -> int:
    return len((await api.get(f"/v1/users/{user}/notifications"))["items"])


async def test_a_retry_gets_the_first_answer_and_stores_nothing(api):
    first = await api.post("/v1/notifications", NOTE, headers=keyed("order-1"), expect=201)
    first_body = api.last.body
    assert "Idempotent-Replayed" not in api.last.headers
    again = await api.post("/v1/notifications", NOTE, headers=keyed("order-1"), expect=201)
    assert again == first and api.last.body == first_body
    assert api.last.headers["Idempotent-Replayed"] == "true"
    # the same JSON value written otherwise is the same body
    shuffled = json.dumps(dict(reversed(list(NOTE.items()))), indent=2).encode()
    await api.call("POST", "/v1/notifications", raw=shuffled, headers=keyed("order-1"), expect=201)
    assert json.loads(api.last.body) == json.loads(first_body)
    assert await feed_size(api) == 1
    await api.post("/v1/notifications", NOTE, expect=201)  # no key: a new one each time
    await api.post("/v1/notifications", NOTE, headers=keyed("order-2"), expect=201)
    assert await feed_size(api) == 3


async def test_many_recipients_broadcasts_and_webhooks_replay_too(api, node):
    many = {"user_ids": ["a-1", "a-2"], "type": "custom", "title": "T"}
    first = await api.post("/v1/notifications", many, headers=keyed("k"), expect=201)
    assert await api.post("/v1/notifications", many, headers=keyed("k"), expect=201) == first
    cast = {"audience": "nurse", "title": "Drill", "message": "at 3"}
    first = await api.post("/v1/broadcasts", cast, headers=keyed("b"), expect=201)
    assert await api.post("/v1/broadcasts", cast, headers=keyed("b"), expect=201) == first
    hook = {"url": "https://example.com/h", "events": ["notification.read"]}
    first = await api.post("/v1/webhooks", hook, headers=keyed("w"), expect=201)
    assert await api.post("/v1/webhooks", hook, headers=keyed("w"), expect=201) == first
    assert len((await api.get("/v1/webhooks"))["items"]) == 1
    # the key belongs to one request: another route with it is another body
    error = await api.post("/v1/broadcasts", cast, headers=keyed("k"), expect=422)
    assert error["code"] == "idempotency_mismatch"


async def test_a_retry_on_another_node_gets_the_first_answer(api, node, second_node):
    other = Api(second_node.url, api.key)
    first = await api.post("/v1/notifications", NOTE, headers=keyed("x-node"), expect=201)
    assert await other.post("/v1/notifications", NOTE, headers=keyed("x-node"), expect=201) == first
    assert await feed_size(other) == 1


async def test_another_body_with_the_same_key_is_422(api):
    await api.post("/v1/notifications", NOTE, headers=keyed("same"), expect=201)
    error = await api.post(
        "/v1/notifications", {**NOTE, "title": "Other"}, headers=keyed("same"), expect=422
    )
    assert error["code"] == "idempotency_mismatch"
    assert await feed_size(api) == 1


async def test_while_the_first_runs_the_second_is_409(api, node):
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(docs: list[dict]) -> None:
        entered.set()
        await gate.wait()

    node.node.notifications.planners.append(hold)
    first = asyncio.ensure_future(
        api.post("/v1/notifications", NOTE, headers=keyed("slow"), expect=201)
    )
    await asyncio.wait_for(entered.wait(), 10)
    error = await api.post("/v1/notifications", NOTE, headers=keyed("slow"), expect=409)
    assert error["code"] == "idempotency_in_flight"
    gate.set()
    created = await first
    assert await api.post("/v1/notifications", NOTE, headers=keyed("slow"), expect=201) == created
    node.node.notifications.planners.remove(hold)
    assert await feed_size(api) == 1


async def test_concurrent_retries_store_one_notification(api, node, second_node):
    other = Api(second_node.url, api.key)
    calls = [
        (api if i % 2 else other).call(
            "POST", "/v1/notifications", NOTE, headers=keyed("burst"), expect=201
        )
        for i in range(8)
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    created = [a for a in answers if isinstance(a, dict)]
    refused = [a for a in answers if not isinstance(a, dict)]
    assert created and all(c == created[0] for c in created)
    assert all("409" in str(r) and "idempotency_in_flight" in str(r) for r in refused)
    assert await feed_size(api) == 1


async def test_a_key_whose_first_request_died_is_taken_over(settings, mongo_uri):
    node = await serve_node(settings.with_(idempotency_in_flight_seconds=0.5), mongo_uri)
    try:
        key, record = await node.node.api_keys.create("tests", ALL_SCOPES)
        api = Api(node.url, key)
        # A node claimed the key and died before it answered.
        digest = fingerprint("POST /v1/notifications", NOTE)
        await node.node.idempotency.begin(record["_id"], "orphan", digest)

        async def taken_over() -> bool:
            answer = await post_raw(api, NOTE, "orphan")
            assert answer.code in (201, 409), answer.body
            return answer.code == 201

        await until(taken_over, timeout=10, every=0.1)
        assert await feed_size(api) == 1
    finally:
        await node.stop()


async def post_raw(api: Api, body: dict, key: str) -> HTTPResponse:
    """A POST whose status the caller checks."""
    headers = {"Authorization": f"Bearer {api.key}", **keyed(key)}
    request = HTTPRequest(
        api.base_url + "/v1/notifications", "POST", headers=headers, body=json.dumps(body)
    )
    return await api.client.fetch(request, raise_error=False)


BAD_KEYS = ["", "x" * 256, "tab\there", "caf\u00e9", "\u00a0nbsp"]


@pytest.mark.parametrize("bad", BAD_KEYS)
async def test_bad_keys_are_400_and_store_nothing(api, bad):
    raw = json.dumps(NOTE).encode()
    headers = {"Idempotency-Key": bad.encode("latin-1").decode("latin-1")}
    error = await api.call("POST", "/v1/notifications", raw=raw, headers=headers, expect=400)
    assert error["code"] == "validation_error" and "Idempotency-Key" in error["fields"]
    assert await feed_size(api) == 0


async def test_a_key_http_itself_refuses_stores_nothing(api):
    """DEL is not allowed in a header value: Tornado's parser answers 400 before any handler."""
    answer = await post_raw(api, NOTE, "del\x7f")
    assert answer.code == 400
    assert await feed_size(api) == 0


async def test_edges_of_a_good_key(api):
    for key in ("a", "x" * 255, "~ !#$%&'()*+,-./:;<=>?@[]^_`{|}"):
        await api.post("/v1/notifications", NOTE, headers=keyed(key), expect=201)
    assert await feed_size(api) == 3


async def test_keys_belong_to_their_api_key(api, node):
    other_key, _ = await node.node.api_keys.create("other", ["notify", "read"])
    mine = await api.post("/v1/notifications", NOTE, headers=keyed("shared"), expect=201)
    theirs = await api.post(
        "/v1/notifications", NOTE, key=other_key, headers=keyed("shared"), expect=201
    )
    assert mine["id"] != theirs["id"]
    # another key's different body with the same idempotency key is not a mismatch
    await api.post(
        "/v1/notifications", {**NOTE, "title": "T2"}, key=other_key, headers=keyed("k2"), expect=201
    )
    await api.post("/v1/notifications", NOTE, headers=keyed("k2"), expect=201)
    assert await feed_size(api) == 4


async def test_a_refused_request_keeps_no_answer(api, node):
    bad = {**NOTE, "title": ""}
    await api.post("/v1/notifications", bad, headers=keyed("fix-me"), expect=400)
    await api.post("/v1/notifications", NOTE, headers=keyed("fix-me"), expect=201)
    past = {**NOTE, "expires_at": "2001-01-01T00:00:00Z"}  # refused by the service itself
    await api.post("/v1/notifications", past, headers=keyed("later"), expect=400)
    await api.post("/v1/notifications", NOTE, headers=keyed("later"), expect=201)
    assert await node.node.store.db.idempotency.count_documents({}) == 2
    notify_only, _ = await node.node.api_keys.create("n", ["notify"])
    await api.post("/v1/broadcasts", {"audience": "all", "title": "t", "message": "m"},
                   key=notify_only, headers=keyed("nope"), expect=403)  # fmt: skip
    assert await node.node.store.db.idempotency.count_documents({}) == 2
