"""Secrets: signed tokens only (HS256, the service's secret), constant-time key checks,
and API keys rotated without downtime."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from server.app.errors import Conflict, NotFound, Unauthorized
from server.app.timeutil import as_datetime, utcnow
from server.auth import credentials as auth
from tests.support import TOKEN_SECRET, Api, ApiError, wait_for

pytestmark = [
    pytest.mark.asyncio,
    # Forging tokens with other algorithms makes PyJWT warn about the key length: wanted here.
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
FUTURE = 4102444800
FEED = "/v1/users/p-1/unread-count"


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(claims)}.{b64(signature) if signature else ''}"


CLAIMS = {"sub": "p-1", "roles": ["patient"], "exp": FUTURE}


def hs256(claims: dict) -> str:
    return jwt.encode(claims, TOKEN_SECRET, algorithm="HS256")


BAD_TOKENS = {
    "alg-none": lambda: forged({"alg": "none", "typ": "JWT"}, CLAIMS),
    "alg-None-cased": lambda: forged({"alg": "None", "typ": "JWT"}, CLAIMS),
    "alg-none-with-signature": lambda: forged(
        {"alg": "none"}, CLAIMS, hmac.digest(TOKEN_SECRET.encode(), b"x", "sha256")
    ),
    "hs512-same-secret": lambda: jwt.encode(CLAIMS, TOKEN_SECRET, algorithm="HS512"),
    "hs384-same-secret": lambda: jwt.encode(CLAIMS, TOKEN_SECRET, algorithm="HS384"),
    "rs256-header-hmac-signed": lambda: _resigned({"alg": "RS256", "typ": "JWT"}),
    "wrong-secret": lambda: jwt.encode(CLAIMS, "another-secret-0123456789abcdef", "HS256"),
    "payload-tampered": lambda: _tampered(),
    "signature-stripped": lambda: hs256(CLAIMS).rsplit(".", 1)[0] + ".",
    "expired": lambda: hs256({**CLAIMS, "exp": 1}),
    "no-exp": lambda: hs256({"sub": "p-1"}),
    "no-sub": lambda: hs256({"exp": FUTURE}),
    "sub-not-a-string": lambda: hs256({"sub": 5, "exp": FUTURE}),
}


def _resigned(header: dict) -> str:
    signing_input = f"{b64(header)}.{b64(CLAIMS)}".encode()
    sig = hmac.digest(TOKEN_SECRET.encode(), signing_input, "sha256")
    return f"{signing_input.decode()}.{b64(sig)}"


def _tampered() -> str:
    header, _, sig = hs256(CLAIMS).split(".")
    return f"{header}.{b64({**CLAIMS, 'sub': 'p-2'})}.{sig}"


async def test_tokens_not_signed_hs256_with_the_secret_are_refused(node):
    for name, make in BAD_TOKENS.items():  # one node for the whole table: quicker
        token = make()
        error = await Api(node.url, token).get(FEED, expect=401)
        assert error["code"] == "unauthorized", name
        with pytest.raises(Unauthorized):
            node.node.tokens.check(token)
        url = node.url.replace("http", "ws") + f"/v1/ws/notifications?token={token}"
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(url)
        assert info.value.code == 401, name


async def test_a_good_token_passes(node):
    assert await Api(node.url, hs256(CLAIMS)).get(FEED) == {"count": 0}


async def test_token_and_key_checks_compare_in_constant_time(node, api_key, monkeypatch):
    """Both the token signature and the API key hash go through hmac.compare_digest."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    node.node.tokens.check(hs256(CLAIMS))
    assert calls, "the token's signature was not compared with compare_digest"
    calls.clear()
    await node.node.api_keys.check(api_key)
    assert calls == [64], "the API key's hash was not compared with compare_digest"


async def test_a_short_token_secret_is_refused():
    with pytest.raises(ValueError):
        auth.Tokens("short", 60, 60)


# ---- rotation ----------------------------------------------------------------------------


async def test_rotation_keeps_both_keys_working_until_the_grace_period_ends(node):
    keys = node.node.api_keys
    old_key, old = await keys.create("billing", ["notify", "read"])
    new_key, new = await keys.rotate(old["_id"], grace_seconds=3)
    assert new["name"] == "billing" and new["scopes"] == ["notify", "read"]
    assert new["rotated_from"] == old["_id"] and new_key != old_key
    for key in (old_key, new_key):  # the overlap: deploy the new key while the old works
        await Api(node.url, key).get(FEED)
        await Api(node.url, key).notify("p-1")
    listed = {r["_id"]: r for r in await node.node.store.list_api_keys()}
    lapses = as_datetime(listed[old["_id"]]["expires_at"])
    assert utcnow() < lapses, "the overlap checks took longer than the grace period"
    error = await wait_for(lambda: _refused(node.url, old_key), what="the end of the grace")
    assert utcnow() >= lapses - timedelta(seconds=1)  # not early (to the database's second)
    assert "expired" in error["message"]
    await Api(node.url, new_key).get(FEED)
    with pytest.raises(Conflict):  # a lapsed key cannot be rotated again
        await keys.rotate(old["_id"])


async def _refused(url: str, key: str) -> dict | None:
    try:
        return await Api(url, key).get(FEED, expect=401)
    except ApiError:
        return None


async def test_rotation_without_grace_keeps_the_old_key_until_revoked(node):
    keys = node.node.api_keys
    old_key, old = await keys.create("portal", ["read"])
    new_key, _ = await keys.rotate(old["_id"])
    await Api(node.url, old_key).get(FEED)
    await node.node.store.revoke_api_key(old["_id"], utcnow())
    keys.forget()
    await Api(node.url, old_key).get(FEED, expect=401)
    await Api(node.url, new_key).get(FEED)
    with pytest.raises(Conflict):
        await keys.rotate(old["_id"])
    with pytest.raises(NotFound):
        await keys.rotate("no-such-key")


@pytest.mark.slow
async def test_rotate_api_key_command_prints_a_working_key(node, settings, mongo_uri):
    old_key, old = await node.node.api_keys.create("lab-system", ["notify", "read"])
    env = {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "NOTIFY_MONGODB_DB": settings.mongodb_db,
        "NOTIFY_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "run.py", "rotate-api-key", old["_id"], "--grace-seconds", "60"]
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    new_key = done.stdout.strip().splitlines()[-1]
    assert new_key.startswith(auth.KEY_PREFIX) and new_key != old_key
    assert old_key not in done.stdout + done.stderr
    await Api(node.url, new_key).get(FEED)
    await Api(node.url, old_key).get(FEED)  # still inside its 60 s of grace
    record = next(r for r in await node.node.store.list_api_keys() if r["_id"] == old["_id"])
    lapses = as_datetime(record["expires_at"])
    # Rotated at some moment of the command's run: 60 s from then, to a second of clocks.
    elapsed = time.monotonic() - started
    assert 60 - elapsed - 1 <= (lapses - utcnow()).total_seconds() <= 60 + 1
    trail = await node.node.audit.recent(action="api_key.rotate")
    assert [(e["actor"], e["target"]) for e in trail] == [("cli", old["_id"])]
    missing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "run.py", "rotate-api-key", "nope"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no such API key" in missing.stdout
