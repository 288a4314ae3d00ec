"""The embedded MongoDB-wire server (nx-27017, SQLite underneath) as a child process.

``python run.py`` with no ``MONGODB_URI`` starts one on a free loopback port with its data
under ``--data-dir``, and records the port in ``<data-dir>/embedded.json`` so that the
command line (``create-api-key``) reaches the running one instead of opening the files twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

STATE_FILE = "embedded.json"
ROOT = Path(__file__).resolve().parents[2]
# MongoDB's TTL monitor deletes expired documents once a minute; the embedded server does it
# on every read of a collection with a TTL index (see ``serve``), so it is told to do the same.
TTL_EVERY = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class EmbeddedMongo:
    """Start, find and stop the embedded server for one data folder."""

    def __init__(self, data_dir: str | Path, port: int = 0):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The MongoDB URI of this server."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def running(self) -> int | None:
        """The port of a server already serving this folder, if there is one."""
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if _alive(state.get("pid", -1)) and _answers(state.get("port", 0)):
            return int(state["port"])
        return None

    def start(self, timeout: float = 30.0) -> str:
        """Start the server (unless one serves this folder already); returns its URI."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        existing = self.running()
        if existing:
            self.port = existing
            return self.uri
        self.port = self.port or free_port()
        db_dir = self.data_dir / "db"
        db_dir.mkdir(exist_ok=True)
        log_file = self.data_dir / "embedded-db.log"
        command = [
            sys.executable, "-m", "server.ops.embedded",
            "--data-dir", str(db_dir),
            "--host", "127.0.0.1",
            "-p", str(self.port),
            "--log-file", str(log_file),
            "--pid-file", str(self.data_dir / f"embedded-{self.port}.pid"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,  # where ``-m server.ops.embedded`` is found, whatever the caller's folder
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log_file, "ab"),  # noqa: SIM115 - the child keeps it
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"the embedded database exited; see {log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded database did not start; see {log_file}")
            time.sleep(0.05)
        state = {"port": self.port, "pid": self.process.pid}
        (self.data_dir / STATE_FILE).write_text(json.dumps(state))
        return self.uri

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server this object started (a server found running is left alone)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            if state.get("port") == self.port:
                (self.data_dir / STATE_FILE).unlink()
        except (OSError, ValueError):
            pass


def serve() -> None:
    """Run nx-27017 (the child process: ``python -m server.ops.embedded <nx arguments>``).

    Its storage layer, neosqlite, purges expired documents before *every* find, count or
    aggregate on a collection with a TTL index, and that purge compares dates through
    SQLite's ``datetime()``, which no index serves: a full scan per read (about 20 ms at
    10,000 notifications, growing with the collection). Purging at most once a minute per
    collection, as MongoDB's TTL monitor does, keeps reads on their indexes; expired
    documents still go, as on MongoDB, within about a minute.
    """
    from neosqlite.collection import Collection
    from nx_27017.nx_27017 import main

    purge = Collection._auto_purge_ttl

    def purge_once_a_minute(self: Collection) -> None:
        now = time.monotonic()
        if now < self.__dict__.get("_ttl_due", 0.0):
            return
        self._ttl_due = now + TTL_EVERY
        purge(self)

    Collection._auto_purge_ttl = purge_once_a_minute
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv[0] = "nx-27017"
    main()


def _exit_with_parent(parent: int) -> None:
    """End the server when the process that started it is gone (killed, not stopped).

    The child runs in its own session so that a terminal's Ctrl-C reaches the service first
    (which then stops it cleanly); a parent killed outright would otherwise leave it behind.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


if __name__ == "__main__":
    serve()
