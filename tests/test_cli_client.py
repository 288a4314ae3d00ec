"""``python -m tools.notify_client`` as a real process against real nodes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from tests.support import WAIT, Api, serve_node

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]  # each test starts the client process

ROOT = Path(__file__).resolve().parent.parent


class Cli:
    """The command-line client running as a child process; stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.frames: list[dict] = []
        self.err: list[str] = []  # standard error lines read so far (``said``)

    @classmethod
    async def start(cls, *args: str, token: str | None = None, key: str | None = None) -> Cli:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        if token:
            env["NOTIFY_TOKEN"] = token
        if key:
            env["NOTIFY_API_KEY"] = key
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.notify_client", *args,
            cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        return cls(proc)

    async def said(self, text: str, times: int = 1, timeout: float = WAIT) -> None:
        """Read standard error until a line with ``text`` came ``times`` times."""

        async def read() -> None:
            while sum(text in line for line in self.err) < times:
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"exited before {text!r}: {''.join(self.err)}")
                self.err.append(line.decode())

        await asyncio.wait_for(read(), timeout)

    async def frame(self, kind: str, timeout: float = WAIT) -> dict:
        """Read printed frames until one of this type."""
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError(f"exited before a {kind!r} frame: {await self.stderr()}")
            self.frames.append(json.loads(line))
            if self.frames[-1]["type"] == kind:
                return self.frames[-1]

    async def finish(self, timeout: float = WAIT) -> tuple[int, str, str]:
        """Wait for the exit; returns (status, the rest of stdout, all of stderr)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        for line in out.decode().splitlines():
            self.frames.append(json.loads(line))
        return self.proc.returncode, out.decode(), "".join(self.err) + err.decode()

    async def stderr(self) -> str:
        return (await self.proc.stderr.read()).decode()

    def notifications(self) -> list[dict]:
        return [f["notification"] for f in self.frames if f["type"] == "notification"]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_prints_frames_acks_and_exits_after_count(node, api):
    token = await api.token("p-1")
    cli = await Cli.start("--url", node.url, "--count", "2", token=token)
    try:
        welcome = await cli.frame("welcome")
        assert welcome["user_id"] == "p-1"
        made = [await api.notify("p-1", f"n{i}") for i in range(2)]
        status, _, err = await cli.finish()
        assert status == 0
        assert [n["id"] for n in cli.notifications()] == [m["id"] for m in made]
        feed = await api.get("/v1/users/p-1/notifications")
        assert all(item["delivered_at"] for item in feed["items"])  # acked
        assert token not in err and "connecting to" in err
    finally:
        cli.kill()


async def test_resumes_with_since_across_a_restart(settings, mongo_uri):
    first = await serve_node(settings, mongo_uri)
    port = first.port
    key, _ = await first.node.api_keys.create("tests", ["notify", "tokens"])
    api = Api(first.url, key)
    token = await api.token("p-1")
    args = ("--url", first.url, "--count", "5", "--min-delay", "0.1", "--max-delay", "0.4")
    cli = await Cli.start(*args, token=token)
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
        await cli.said("could not connect", times=2)  # a few refused reconnects
        again = await serve_node(settings.with_(port=port, node_id="again"), mongo_uri)
        await cli.frame("replay_done")
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


async def test_send_test_notification_to_itself(node, api, api_key):
    token = await api.token("p-7")
    cli = await Cli.start(
        "--url", node.url, "--send-test", "--title", "Smoke", "--count", "1", token=token,
        key=api_key,
    )  # fmt: skip
    status, out, err = await cli.finish()
    assert status == 0, err
    [note] = cli.notifications()
    assert (note["user_id"], note["title"], note["data"]) == ("p-7", "Smoke", {"test": True})
    assert token not in out + err and api_key not in out + err


async def test_send_test_alone_prints_the_stored_notification(node, api_key):
    cli = await Cli.start("--url", node.url, "--send-test", "--user-id", "p-8", key=api_key)
    status, out, err = await cli.finish()
    assert status == 0, err
    stored = json.loads(out)
    assert stored["user_id"] == "p-8" and stored["cursor"]


@pytest.mark.parametrize(
    "args, token, key, message",
    [
        ((), "not-a-token", None, "HTTP 401"),
        (("--since", "abc"), "x.y.z", None, "--since"),
        ((), None, None, "--token"),
        (("--send-test",), None, None, "--api-key"),
        (("--send-test", "--user-id", "p-1"), None, "nk_wrong", "unauthorized"),
    ],
)
async def test_refusals_exit_2_without_printing_secrets(node, args, token, key, message):
    cli = await Cli.start("--url", node.url, *args, token=token, key=key)
    status, out, err = await cli.finish()
    assert status == 2 and message in err
    for secret in (token, key):
        if secret:
            assert secret not in out + err


async def test_timeout_exits_1(node, api):
    cli = await Cli.start(
        "--url", node.url, "--count", "1", "--timeout", "1", token=await api.token("p-1")
    )
    status, _, err = await cli.finish()
    assert status == 1 and "timed out" in err
