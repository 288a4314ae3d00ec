"""``run.py --nodes N``: N local nodes on consecutive ports against one database.

For trying scaling out on one machine. Each node is its own process (``run.py --port P``),
as in production: its own event loop, metrics and failures, and a distinct node id
(``host-port``, or ``NOTIFY_NODE_ID`` with ``-1``, ``-2``... appended). Without
``MONGODB_URI`` this process starts the embedded database and hands its URI to every node;
the nodes share the data folder's token secret. Ctrl-C (SIGINT reaches the whole process
group) or SIGTERM to this process stops every node with SIGTERM, waits for their clean
shutdown (sockets closed with 1001), then stops the database.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.app.node import token_secret
from server.ops.embedded import EmbeddedMongo
from settings import Settings

log = logging.getLogger("notify.cluster")

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"
STOP_GRACE = 20.0


def node_env(settings: Settings, uri: str, index: int) -> dict[str, str]:
    """The environment of node ``index`` (from 1): the shared database, its own id."""
    env = {**os.environ, "MONGODB_URI": uri}
    env["NOTIFY_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env["NOTIFY_HOST"] = settings.host
    if settings.node_id:
        env["NOTIFY_NODE_ID"] = f"{settings.node_id}-{index}"
    else:
        env.pop("NOTIFY_NODE_ID", None)  # each takes the default, host-port
    return env


def run_local_cluster(settings: Settings, count: int) -> int:
    """Run ``count`` nodes until a signal; returns the exit status."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    embedded, uri = None, settings.mongodb_uri
    if not uri:
        embedded = EmbeddedMongo(settings.data_dir)
        uri = embedded.start()
    token_secret(settings)  # created once here, so that the nodes do not race to create it
    nodes: dict[int, subprocess.Popen] = {}
    failed = False
    try:
        for i in range(count):
            port = settings.port + i
            command = [sys.executable, str(RUN_PY), "--port", str(port)]
            nodes[port] = subprocess.Popen(command, env=node_env(settings, uri, i + 1))
        ports = ", ".join(str(p) for p in nodes)
        print(f"{count} nodes on {settings.host} ports {ports}; Ctrl-C stops them all", flush=True)
        failed = _watch(nodes, stopping)
    finally:
        failed = _stop(nodes) or failed
        if embedded is not None:
            embedded.stop()
    return 1 if failed else 0


def _watch(nodes: dict[int, subprocess.Popen], stopping: list[int]) -> bool:
    """Wait for a signal; report nodes that exit on their own. True if any failed."""
    reported: set[int] = set()
    while not stopping:
        for port, proc in nodes.items():
            if proc.poll() is not None and port not in reported:
                reported.add(port)
                log.error("the node on port %d exited with status %s", port, proc.returncode)
        if len(reported) == len(nodes):
            return True
        time.sleep(0.2)
    return bool(reported)


def _stop(nodes: dict[int, subprocess.Popen]) -> bool:
    """SIGTERM every node still running and wait; True if one failed or had to be killed."""
    for proc in nodes.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    killed = False
    for port, proc in nodes.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("the node on port %d did not stop in time; killing it", port)
            proc.kill()
            proc.wait()
            killed = True
    return killed or any(proc.returncode != 0 for proc in nodes.values())
