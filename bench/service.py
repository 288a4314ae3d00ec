"""Start and stop the processes under test: the real service and the baseline server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.http import HttpConn
from server.ops.embedded import EmbeddedMongo, free_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SECRET = "bench-token-secret-0123456789abcdef"
SCOPES = ["notify", "broadcast", "tokens", "read"]


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, in seconds; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """A server process on a port of 127.0.0.1."""

    welcomes = False  # whether its sockets say ``welcome`` once ready

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        """This server's resident set size, KiB."""
        return rss_kb(self.proc.pid)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by this server (and its database, if it has one)."""
        return {"server": cpu_seconds(self.proc.pid)}

    def http(self, key: str | None = None) -> HttpConn:
        """A keep-alive HTTP connection to this server."""
        return HttpConn(HOST, self.port, key)

    async def wait_ready(self, path: str, timeout: float = 60.0, port: int | None = None) -> None:
        """Poll ``path`` (on ``port``, default this server's) until it answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log}")
            conn = HttpConn(HOST, port or self.port)
            try:
                status, _ = await conn.request("GET", path)
                if status == 200:
                    return
            except (OSError, ConnectionError, ValueError):
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout}s; see {self.log}")
            await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    while True:
        first = free_port()
        if all(_port_free(first + i) for i in range(1, count)):
            return first


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _embedded_uri(data_dir: Path) -> str:
    embedded = EmbeddedMongo(data_dir)
    port = embedded.running()
    if port is None:
        raise RuntimeError(f"no embedded database serves {data_dir}")
    embedded.port = port
    return embedded.uri


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        out.close()


# Rate limits set here, explicitly: a benchmark sends thousands of requests with one key and
# opens thousands of sockets from one address and user, which the defaults rightly refuse
# within a second (docs/security.md). Off, but the socket frame limit, which stays at its
# default: the benchmarks measure the service, not its limits.
BENCH_LIMITS = {
    "NOTIFY_RATE_REST_KEY": "0",
    "NOTIFY_RATE_REST_TOKEN": "0",
    "NOTIFY_RATE_REST_IP": "0",
    "NOTIFY_RATE_CONNECT_USER": "0",
    "NOTIFY_RATE_CONNECT_IP": "0",
    "NOTIFY_RATE_SOCKET_FRAMES": "100",
    "NOTIFY_RATE_SOCKET_FRAMES_BURST": "1000",
}


class Service(Proc):
    """The real service (``run.py``), its embedded database, an API key, token minting."""

    welcomes = True
    db_pid: int | None = None
    key: str
    uri: str
    db: str

    @classmethod
    async def start(
        cls,
        workdir: Path,
        settings: dict[str, str] | None = None,
        mongodb_uri: str = "",
        nodes: int = 1,
    ) -> Service:
        """``python run.py --port P --data-dir <workdir>/service`` with the bench's settings
        (``--nodes N``: the local cluster, its nodes on ports P to P + N - 1)."""
        data_dir = workdir / "service"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_ports(nodes)
        db = f"bench_{os.getpid()}_{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        env.pop("MONGODB_URI", None)
        env.update(
            NOTIFY_TOKEN_SECRET=SECRET,
            NOTIFY_LOG_LEVEL="WARNING",
            NOTIFY_MONGODB_DB=db,
            NOTIFY_MAX_CONNECTIONS="19000",
            NOTIFY_MAX_CONNECTIONS_PER_USER="1000",
            **BENCH_LIMITS,
        )
        if mongodb_uri:
            env["MONGODB_URI"] = mongodb_uri
        env.update(settings or {})
        log = workdir / "service.log"
        args = [str(ROOT / "run.py"), "--port", str(port), "--data-dir", str(data_dir)]
        if nodes > 1:
            args += ["--nodes", str(nodes)]
        service = cls(_spawn(args, log, env), port, log)
        try:
            for i in range(nodes):
                await service.wait_ready("/readyz", port=port + i)
            service.db = db
            service.uri = mongodb_uri or _embedded_uri(data_dir)
            state = data_dir / "embedded.json"
            service.db_pid = json.loads(state.read_text())["pid"] if state.exists() else None
            service.key = await service._api_key()
        except BaseException:
            await service.stop()
            raise
        return service

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the service and by its embedded database."""
        return {"server": cpu_seconds(self.proc.pid), "database": cpu_seconds(self.db_pid)}

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the service; and its embedded database, should the service not have."""
        await super().stop(timeout)
        if self.db_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.db_pid, signal.SIGTERM)

    async def _api_key(self) -> str:
        from server.app.store import Store, connect
        from server.auth.credentials import ApiKeys

        client = connect(self.uri, 5000)
        try:
            key, _ = await ApiKeys(Store(client, self.db)).create("bench", SCOPES)
        finally:
            await client.close()
        return key

    def api(self) -> HttpConn:
        """An HTTP connection carrying the bench's API key."""
        return self.http(self.key)

    def token(self, user_id: str, roles: tuple[str, ...] = ("patient",)) -> str:
        """A connection token, signed with the service's secret as the main platform would."""
        from server.auth.credentials import Tokens

        return Tokens(SECRET, 7200, 86400).mint(user_id, list(roles))[0]

    def socket_path(self, user_id: str, roles: tuple[str, ...] = ("patient",)) -> str:
        """The socket URL path of one user, token in the query."""
        return f"/v1/ws/notifications?token={self.token(user_id, roles)}"

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as name (with labels) to value."""
        conn = self.http()
        try:
            status, body = await conn.request("GET", "/metrics")
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"/metrics: {status}")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out


class Baseline(Proc):
    """The bare Tornado server (``bench.baseline``)."""

    @classmethod
    async def start(cls, workdir: Path, by_user: bool = False) -> Baseline:
        """Start it on a free port and wait until it answers."""
        port = free_port()
        log = workdir / "baseline.log"
        args = ["-m", "bench.baseline", "--port", str(port)] + (["--by-user"] if by_user else [])
        proc = cls(_spawn(args, log, dict(os.environ)), port, log)
        try:
            await proc.wait_ready("/ready")
        except BaseException:
            await proc.stop()
            raise
        return proc

    def socket_path(self, user_id: str) -> str:
        """The socket URL path of one user."""
        return f"/ws?user_id={user_id}"

    async def broadcast(self, text: str) -> dict:
        """Loop ``write_message`` over every socket; the loop's time and the socket count."""
        conn = self.http()
        try:
            status, body = await conn.request("POST", "/broadcast", raw=text.encode())
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"baseline /broadcast: {status}")
        return json.loads(body)

    async def send(self, conn: HttpConn, user_id: str, text: str) -> int:
        """Write ``text`` to one user's sockets (``by_user`` only); the HTTP status."""
        status, _ = await conn.request("POST", "/send", {"user_id": user_id, "text": text})
        return status
