"""Connection tokens signed with the right secret but holding odd claims: a 401, never a 500.

A platform holding the shared secret mints tokens itself, so every claim is checked as
untrusted input: ``exp`` in milliseconds (``Date.now()``), out of any datetime's range, a
string of digits, Infinity; ``sub`` and ``roles`` of the wrong types. On REST that is a 401
with the contract's envelope; on the socket a 401 before the upgrade (``?token=``) or a
close with 1008 (the auth frame). A hypothesis test draws random claims for all three paths.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.support import TOKEN_SECRET, Socket

pytestmark = pytest.mark.asyncio

NOW = int(time.time())
GOOD = {"sub": "p-1", "roles": ["patient"], "exp": NOW + 3600}

# Each a claim set signed with the service's own secret, and why it is refused.
BAD_CLAIMS = {
    "exp-in-milliseconds": {**GOOD, "exp": int(time.time() * 1000)},
    "exp-10-to-the-20": {**GOOD, "exp": 10**20},
    "exp-a-string-of-digits": {**GOOD, "exp": "9999999999"},
    "exp-a-bool": {**GOOD, "exp": True},
    "exp-infinity": {**GOOD, "exp": float("inf")},
    "exp-nan": {**GOOD, "exp": float("nan")},
    "exp-a-list": {**GOOD, "exp": [NOW + 3600]},
    "exp-null": {**GOOD, "exp": None},
    "iat-a-string": {**GOOD, "iat": "yesterday"},
    "nbf-an-object": {**GOOD, "nbf": {"t": 1}},
    "iat-infinity": {**GOOD, "iat": float("-inf")},
    "sub-a-number": {**GOOD, "sub": 5},
    "sub-a-list": {**GOOD, "sub": ["p-1"]},
    "sub-empty": {**GOOD, "sub": ""},
    "sub-not-an-id": {**GOOD, "sub": "p 1\n"},
    "sub-too-long": {**GOOD, "sub": "p" * 200},
    "roles-a-string": {**GOOD, "roles": "patient"},
    "roles-of-numbers": {**GOOD, "roles": [1, 2]},
    "roles-not-role-names": {**GOOD, "roles": ["Patient Admin"]},
    "roles-too-many": {**GOOD, "roles": [f"r{i}" for i in range(21)]},
    "roles-an-object": {**GOOD, "roles": {"admin": True}},
}


def sign(claims: dict) -> str:
    return jwt.encode(claims, TOKEN_SECRET, algorithm="HS256")


async def rest(node, token: str) -> tuple[int, dict]:
    req = HTTPRequest(
        node.url + "/v1/users/p-1/unread-count", headers={"Authorization": f"Bearer {token}"}
    )
    resp = await AsyncHTTPClient().fetch(req, raise_error=False)
    return resp.code, json.loads(resp.body)


def ws_url(node, **query) -> str:
    from urllib.parse import urlencode

    return node.url.replace("http", "ws", 1) + "/v1/ws/notifications?" + urlencode(query)


async def query_token_status(node, token: str) -> int:
    """101 when the socket opened (closed again at once), else the refusal's status."""
    try:
        conn = await websocket_connect(ws_url(node, token=token))
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    return 101


async def auth_frame_outcome(node, token: str) -> str | int:
    """``"welcome"`` or the close code after sending ``token`` in the auth frame."""
    sock = Socket(await websocket_connect(ws_url(node)))
    sock.send({"type": "auth", "token": token})
    frame = await sock.recv(timeout=10)
    if frame is not None:
        assert frame["type"] == "welcome", frame
        sock.close()
        return "welcome"
    return sock.conn.close_code


@pytest.mark.parametrize("claims", BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
async def test_a_bad_claim_is_refused_on_every_path(node, claims):
    token = sign(claims)
    status, envelope = await rest(node, token)
    assert status == 401, envelope
    assert envelope["success"] is False and envelope["error"]["code"] == "unauthorized"
    assert await query_token_status(node, token) == 401
    assert await auth_frame_outcome(node, token) == 1008


async def test_the_good_claims_still_work_everywhere(node):
    token = sign(GOOD)
    assert (await rest(node, token))[0] == 200
    assert await query_token_status(node, token) == 101
    assert await auth_frame_outcome(node, token) == "welcome"
    # A fractional NumericDate is allowed by RFC 7519.
    assert (await rest(node, sign({**GOOD, "exp": NOW + 3600.5, "iat": NOW - 0.5})))[0] == 200


async def test_a_millisecond_exp_says_why(node):
    _, envelope = await rest(node, sign(BAD_CLAIMS["exp-in-milliseconds"]))
    assert "milliseconds" in envelope["error"]["message"]


# ---- random claims -----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities too: PyJWT writes them, Python's parser reads them
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
times = st.one_of(
    st.integers(NOW - 10, NOW + 10**6),
    st.integers(NOW * 1000, NOW * 1000 + 10**9),  # milliseconds
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.integers(NOW, NOW + 10**6).map(str),
    json_values,
)
# Mostly plausible subjects and roles, so that most examples reach the time claims.
claims = st.fixed_dictionaries(
    {
        "sub": st.sampled_from(["p-1", "p-1", "p-2"]) | st.text(max_size=140) | json_values,
        "exp": times,
    },
    optional={
        "roles": st.lists(st.sampled_from(["patient", "staff", "Bad Role", ""])) | json_values,
        "iat": times,
        "nbf": times,
        "aud": json_values,
        "jti": json_values,
    },
)
RANDOM = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@RANDOM
@given(claims=claims)
async def test_random_claims_never_give_a_500_on_rest(node, claims):
    status, envelope = await rest(node, sign(claims))
    assert status in (200, 401, 403), (status, envelope)
    assert envelope["success"] is (status == 200)


@RANDOM
@given(claims=claims)
async def test_random_claims_never_give_a_500_before_the_upgrade(node, claims):
    assert await query_token_status(node, sign(claims)) in (101, 401)


@settings(RANDOM, max_examples=25)
@given(claims=claims)
async def test_random_claims_in_the_auth_frame_get_a_welcome_or_1008(node, claims):
    assert await auth_frame_outcome(node, sign(claims)) in ("welcome", 1008)
