"""The ``clinic-notify`` command (clients/python) as a real process against real nodes.

Run as ``python -m clinic_notify`` from the package's source folder; CI also runs the
installed console script from a wheel in a fresh virtual environment (.ci/packages.sh).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from tests.support import Api, serve_node, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]  # each test starts the client process

SOURCE = Path(__file__).resolve().parent.parent / "clients" / "python" / "src"


class Cli:
    """The command running as a child process; stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, as_json: bool):
        self.proc = proc
        self.as_json = as_json
        self.lines: list = []

    @classmethod
    async def start(
        cls, *args: str, token: str | None = None, key: str | None = None, url: str | None = None
    ) -> Cli:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        env["PYTHONPATH"] = str(SOURCE)
        for name, value in (("NOTIFY_TOKEN", token), ("NOTIFY_API_KEY", key), ("NOTIFY_URL", url)):
            if value:
                env[name] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clinic_notify", *args, env=env, stdout=PIPE, stderr=PIPE
        )
        return cls(proc, "--json" in args)

    def _keep(self, line: bytes) -> None:
        text = line.decode().rstrip("\n")
        self.lines.append(json.loads(text) if self.as_json else text)

    async def frame(self, kind: str, timeout: float = 10.0) -> dict:
        """Read printed frames (--json) until one of this type."""
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = (await self.proc.stderr.read()).decode()
                raise AssertionError(f"exited before a {kind!r} frame: {err}")
            self._keep(line)
            if self.lines[-1]["type"] == kind:
                return self.lines[-1]

    async def finish(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """Wait for the exit; returns (status, the rest of stdout, stderr)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        for line in out.splitlines():
            self._keep(line)
        return self.proc.returncode, out.decode(), err.decode()

    def notifications(self) -> list[dict]:
        return [f["notification"] for f in self.lines if f["type"] == "notification"]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_listen_prints_frames_acks_and_exits_after_count(node, api):
    token = await api.token("p-1")
    cli = await Cli.start("listen", "--json", "--url", node.url, "--count", "2", token=token)
    try:
        welcome = await cli.frame("welcome")
        assert welcome["user_id"] == "p-1"
        made = [await api.notify("p-1", f"n{i}") for i in range(2)]
        status, _, err = await cli.finish()
        assert status == 0, err
        assert [n["id"] for n in cli.notifications()] == [m["id"] for m in made]

        async def all_delivered() -> bool:  # acked: the service records the delivery
            feed = await api.get("/v1/users/p-1/notifications")
            return all(item["delivered_at"] for item in feed["items"])

        await wait_for(all_delivered, what="every delivery recorded")
        assert token not in err and "connecting to" in err
    finally:
        cli.kill()


async def test_listen_prints_one_readable_line_per_notification(node, api):
    cli = await Cli.start("listen", "--count", "1", token=await api.token("p-1"), url=node.url)
    try:
        line = await asyncio.wait_for(cli.proc.stderr.readline(), 10)
        assert b"connecting to" in line

        async def online() -> bool:
            return (await api.get("/v1/presence", query={"user_ids": "p-1"}))["p-1"]["online"]

        await wait_for(online, what="the listener connected")
        made = await api.notify("p-1", "Lab ready", priority="high")
        status, out, err = await cli.finish()
        assert status == 0, err
        assert out.startswith(made["created_at"]) and "[high] custom: Lab ready - m" in out
        assert f"({made['id']}, cursor {made['cursor']})" in out
        assert "listening as p-1" in err
    finally:
        cli.kill()


async def test_listen_resumes_with_since_across_a_restart(settings, mongo_uri):
    first = await serve_node(settings, mongo_uri)
    port = first.port
    key, _ = await first.node.api_keys.create("tests", ["notify", "tokens"])
    api = Api(first.url, key)
    token = await api.token("p-1")
    args = ("listen", "--json", "--count", "5", "--min-delay", "0.1", "--max-delay", "0.4")
    cli = await Cli.start(*args, "--url", first.url, token=token)
    again = None
    try:
        await cli.frame("welcome")
        made = [await api.notify("p-1", "before")]
        await cli.frame("notification")
        await first.stop()
        other = await serve_node(settings.with_(node_id="other"), mongo_uri)
        try:
            made += [await Api(other.url, key).notify("p-1", f"during {i}") for i in range(3)]
        finally:
            await other.stop()
        again = await serve_node(settings.with_(port=port, node_id="again"), mongo_uri)
        await cli.frame("replay_done", timeout=20)
        made.append(await Api(again.url, key).notify("p-1", "after"))
        status, out, err = await cli.finish()
        assert status == 0, err
        assert [n["id"] for n in cli.notifications()] == [m["id"] for m in made]
        assert f"since={made[0]['cursor']}" in err  # resumed from the last cursor seen
        assert "closed: 1001" in err and "reconnecting in" in err
        assert token not in out + err
    finally:
        cli.kill()
        if again is not None:
            await again.stop()


async def test_send_token_and_stats_human_and_json(node, api, api_key):
    cli = await Cli.start("send", "p-7", "--title", "Smoke", "--message", "hi", url=node.url,
                          key=api_key)  # fmt: skip
    status, out, err = await cli.finish()
    assert status == 0, err
    [stored] = (await api.get("/v1/users/p-7/notifications"))["items"]
    assert out == f"sent {stored['id']} to p-7: custom, normal (cursor {stored['cursor']})\n"

    cli = await Cli.start(
        "send", "p-7", "p-8", "--type", "lab_result", "--data", '{"lab_result_id": "l-1"}',
        "--priority", "high", "--json", "--url", node.url, key=api_key,
    )  # fmt: skip
    status, _, err = await cli.finish()
    assert status == 0, err
    assert [(n["user_id"], n["title"], n["priority"]) for n in cli.lines] == [
        ("p-7", "Lab results ready", "high"),
        ("p-8", "Lab results ready", "high"),
    ]

    cli = await Cli.start("token", "p-7", "--role", "patient", "--ttl", "120", url=node.url,
                          key=api_key)  # fmt: skip
    status, out, err = await cli.finish()
    assert status == 0, err and "expires" in err
    sock_token = out.strip()
    assert (await api.get("/v1/users/p-7/unread-count", key=sock_token))["count"] == 2

    cli = await Cli.start("stats", "--json", url=node.url, key=api_key)
    status, _, err = await cli.finish()
    assert status == 0, err
    assert cli.lines[0]["status"] == "active" and "connected_clients" in cli.lines[0]
    cli = await Cli.start("stats", url=node.url, key=api_key)
    status, out, _ = await cli.finish()
    assert status == 0 and "status: active" in out.splitlines()
    assert api_key not in out


@pytest.mark.parametrize(
    "args, token, key, status, message",
    [
        (("listen",), "not-a-token", None, 2, "the token is not valid"),
        (("listen", "--since", "abc"), "x.y.z", None, 2, "--since"),
        (("listen",), None, None, 2, "--token"),
        (("send", "p-1", "--title", "t"), None, None, 2, "--api-key"),
        (("send", "p-1", "--title", "t"), None, "nk_wrong", 2, "unauthorized"),
        (("send", "p 1", "--title", "t"), None, "KEY", 2, "user_id"),
        (("send", "p-1", "--data", "[1]"), None, "KEY", 2, "--data must be a JSON object"),
        (("stats",), None, "READ_ONLY_NOT", 2, "forbidden"),
    ],
)
async def test_refusals_show_the_services_message_without_secrets(
    node, api_key, args, token, key, status, message
):
    if key == "KEY":
        key = api_key
    elif key == "READ_ONLY_NOT":
        key, _ = await node.node.api_keys.create("notifier", ["notify"])
    cli = await Cli.start(*args, "--url", node.url, token=token, key=key)
    code, out, err = await cli.finish()
    assert code == status and message in err, err
    for secret in (token, key):
        if secret:
            assert secret not in out + err


async def test_listen_timeout_exits_1_and_unreachable_exits_1(node, api):
    cli = await Cli.start(
        "listen", "--url", node.url, "--count", "1", "--timeout", "1", token=await api.token("p-1")
    )
    status, _, err = await cli.finish()
    assert status == 1 and "timed out" in err
    from server.ops.embedded import free_port

    cli = await Cli.start("stats", "--url", f"http://127.0.0.1:{free_port()}", key="nk_x")
    status, _, err = await cli.finish(timeout=30)
    assert status == 1 and "cannot reach the service" in err
