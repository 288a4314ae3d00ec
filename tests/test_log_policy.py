"""The log policy (docs/security.md): no cookie or credential of any header in any line, also
in Tornado's own lines about malformed requests; user ids in paths as keyed pseudonyms."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.app import logs
from tests.support import Api, serve_node
from tests.test_dashboard import FAST_HASHER, NURSE_PASSWORD, Browser
from tests.test_observability import log_lines  # noqa: F401 - a fixture

USER = "mrn-004711@clinic.example"  # ids may be record numbers or emails: personal data


async def raw_request(port: int, head: bytes) -> bytes:
    """Send bytes as a request head; the answer's first line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line


@pytest.mark.asyncio
async def test_malformed_requests_leave_no_cookie_or_credential_in_the_log(
    node,
    api_key,
    log_lines,  # noqa: F811
):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    nurse = Browser(node.url)
    await nurse.login("nurse", NURSE_PASSWORD)
    session, xsrf = nurse.jar["notify_session"], nurse.jar["_xsrf"]
    secrets = {
        "session cookie": session,
        "xsrf cookie": xsrf,
        "api key": api_key,
        "basic": "dXNlcjpzZWNyZXQtcGFzc3dvcmQ",
        "x-api-key": "sk-live-abcdef0123456789",
        "proxy": "cHJveHk6c2VjcmV0",
    }
    bad = "\x01"  # a control character: Tornado refuses the header and logs its value
    heads = [
        f"Cookie: notify_session={session}{bad}; _xsrf={xsrf}",
        f"Cookie: _xsrf={xsrf}; notify_session={session}; x={bad}",
        f"Authorization: Bearer {api_key}{bad}",
        f"Authorization: Basic {secrets['basic']}{bad}",
        f"X-Api-Key: {secrets['x-api-key']}{bad}",
        f"Proxy-Authorization: Basic {secrets['proxy']}{bad}",
    ]
    for header in heads:
        request = f"GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n\r\n"
        assert (await raw_request(node.port, request.encode("latin-1"))).startswith(b"HTTP/1.1 400")
    # And a well-formed request whose credentials Tornado itself would never log: they
    # must not reach a line through an error either.
    text = log_lines.getvalue()
    malformed = [json.loads(line) for line in text.splitlines() if "Malformed HTTP" in line]
    assert len(malformed) == len(heads), text[-2000:]
    for name, secret in secrets.items():
        assert secret not in text, name
        assert secret.replace("|", "\\x7c") not in text, name
    assert all("[redacted]" in line["message"] for line in malformed)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('Cookie: notify_session="2|1:0|10:1796|14:notify_session|8:YWJj|ab12"; theme=dark', None),
        ("cookie: _xsrf=2|91b1a3f2|5e0f|1796", None),
        ("Set-Cookie: notify_session=2|1:0|10:1796|14:notify_session|8:YWJj|ab12; HttpOnly", None),
        ("authorization: Digest username=x, response=abcdef", None),
        ("X-Auth-Token: abc123", None),
        ("form _xsrf=2|abcd|ef01|1796&username=nurse", "username=nurse"),
        ("GET /v1/users/p-1/notifications 200", "GET /v1/users/p-1/notifications 200"),
    ],
)
def test_redaction_covers_cookies_and_any_credential_header(text, kept):
    scrubbed = logs.redact(text)
    if kept is None:
        assert "[redacted]" in scrubbed
        for part in ("YWJj", "91b1a3f2", "abcdef", "abc123"):
            assert part not in scrubbed
    else:
        assert kept in scrubbed


@pytest.mark.asyncio
async def test_user_ids_in_logged_paths_are_keyed_pseudonyms(
    node,
    api,
    log_lines,  # noqa: F811
):
    await api.get(f"/v1/users/{USER}/unread-count")
    await api.get(f"/v1/users/{USER}/notifications")
    await api.get("/v1/users/p-2/unread-count")
    text = log_lines.getvalue()
    access = [json.loads(line)["message"] for line in text.splitlines() if "notify.access" in line]
    assert USER not in text and "p-2/" not in text
    mine = logs.pseudonym(USER, node.node.log_key)
    assert f"GET /v1/users/{mine}/unread-count" in " ".join(access)
    assert f"GET /v1/users/{mine}/notifications" in " ".join(access)  # the same user, the same
    other = logs.pseudonym("p-2", node.node.log_key)
    assert other != mine and f"/v1/users/{other}/unread-count" in " ".join(access)
    # Keyed: the plain hash of the id is not what is written.
    assert logs.pseudonym(USER, logs.pseudonym_key("another-secret-0123456789")) != mine


@pytest.mark.asyncio
async def test_a_setting_writes_user_ids_as_they_are(
    settings,
    mongo_uri,
    log_lines,  # noqa: F811
):
    running = await serve_node(settings.with_(log_user_ids=True), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("k", ["read"])
        await Api(running.url, key).get(f"/v1/users/{USER}/unread-count")
        assert f"/v1/users/{USER}/unread-count" in log_lines.getvalue()
    finally:
        await running.stop()
