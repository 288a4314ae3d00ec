"""Node processes (``run.py``) on one database, for the tests that kill and restart them.

Each node is a real process with its own event loop, started with the settings of its
test (``env``, on top of a clean environment), ready once ``/readyz`` answers 200.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from server.app.store import Store, connect
from server.auth.credentials import ApiKeys
from server.ops.embedded import free_port
from tests.conftest import ALL_SCOPES
from tests.support import TOKEN_SECRET

ROOT = Path(__file__).resolve().parent.parent


class Nodes:
    """``count`` node processes named ``node-0`` … on database ``db`` at ``uri``."""

    def __init__(self, uri: str, db: str, folder: Path, count: int, env: dict | None = None):
        self.uri, self.db, self.folder = uri, db, folder
        self.env = env or {}
        self.program: tuple[str, ...] = ("run.py",)  # or ("-m", "tests.stall_step")
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen | None] = [None] * count

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start_node(self, i: int) -> None:
        """Start node ``i`` (not waiting for it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        env |= {
            "MONGODB_URI": self.uri,
            "NOTIFY_MONGODB_DB": self.db,
            "NOTIFY_TOKEN_SECRET": TOKEN_SECRET,
            "NOTIFY_NODE_ID": f"node-{i}",
            "NOTIFY_DATA_DIR": str(self.folder),
            "NOTIFY_LOG_LEVEL": "WARNING",
            **self.env,
        }
        log = open(self.folder / f"node-{i}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[i] = subprocess.Popen(
            [sys.executable, *self.program, "--port", str(self.ports[i])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def start(self) -> None:
        """Start every node at once (index creation races, as in production); wait for all."""
        for i in range(len(self.ports)):
            self.start_node(i)
        for i in range(len(self.ports)):
            self.wait_ready(i)

    def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        """Until node ``i`` answers ``/readyz`` with 200; fails with its log if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[i]
            assert proc is not None and proc.poll() is None, self.log(i)
            with contextlib.suppress(OSError):
                if http_get(self.url(i) + "/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"node {i} not ready:\n{self.log(i)}")

    def log(self, i: int) -> str:
        return (self.folder / f"node-{i}.log").read_text()[-3000:]

    def kill(self, node: int | str) -> None:
        """kill -9 (no cleanup of any kind) of node ``i`` or ``"node-i"``."""
        proc = self.procs[node if isinstance(node, int) else int(node.rsplit("-", 1)[1])]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """SIGTERM to every node still running; SIGKILL to any that takes over 15 s."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def metric(self, i: int, name: str, labels: str = "") -> float:
        """A counter's value on node ``i`` (its /metrics page)."""
        text = http_get(self.url(i) + "/metrics")[1]
        pattern = rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? ([0-9.e+]+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def http_get(url: str) -> tuple[int, str]:
    """A blocking GET of a local http:// URL (readiness and metrics)."""
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - http only, above
        return resp.status, resp.read().decode()


async def make_key(uri: str, db: str, name: str = "cluster") -> str:
    """An API key with every scope, stored straight into the nodes' database."""
    client = connect(uri, 3000)
    try:
        key, _ = await ApiKeys(Store(client, db)).create(name, ALL_SCOPES)
        return key
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running(nodes: Nodes) -> AsyncIterator[tuple[Nodes, str, object]]:
    """Start the nodes; yield them, an API key with every scope and the database; stop them."""
    nodes.start()
    client = connect(nodes.uri, 3000)
    try:
        yield nodes, await make_key(nodes.uri, nodes.db), client[nodes.db]
    finally:
        nodes.stop()
        await client.close()
