"""One load-client process: ``python -m bench.loadproc``, driven over its standard streams.

It reads JSON commands, one a line, on standard input and answers each with one JSON line on
standard output. It holds a few thousand sockets (``bench.wsclient``) and keeps, per socket,
only what the scenarios check: how many notifications arrived since the last reset, the last
cursor, and on a reconnect the replayed items, to verify none was lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import sys
import time
from collections import Counter
from typing import Any

from bench.wsclient import WsConn


class Peer(WsConn):
    """A socket and what the scenarios need to know about it."""

    def __init__(self, fleet: Fleet, path: str, host: str, welcome: bool):
        super().__init__(path, host, fleet.on_text)
        self.fleet = fleet
        self.wait_welcome = welcome
        self.count = 0
        self.cursor: str | None = None
        self.replayed: list[tuple[int, str, Any]] | None = None
        self.replay_done: float | None = None
        self.stalled = False


class Fleet:
    """Every socket of this process, and the counters the commands read."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.target = 1
        self.expect = 0
        self.arrivals: list[float] = []
        self.latencies: list[float] = []
        self.stamps: list[float] = []  # the sender's stamp of each latency sample
        self.reached = asyncio.Event()
        self.caught_up: list[float] = []
        self.all_caught = asyncio.Event()

    def on_text(self, peer: Peer, now: float, payload: bytes) -> None:
        msg = json.loads(payload)
        kind = msg.get("type")
        if kind == "notification":
            note = msg["notification"]
            data = note.get("data") or {}
            if note.get("cursor"):
                peer.cursor = note["cursor"]
            if peer.replayed is not None:
                peer.replayed.append((int(note["cursor"]), note["id"], data.get("i")))
            if "bench_t" in data:
                self.latencies.append(now - data["bench_t"])
                self.stamps.append(data["bench_t"])
            peer.count += 1
            if peer.count == self.target:
                self.arrivals.append(now)
                if len(self.arrivals) >= self.expect:
                    self.reached.set()
        elif kind == "welcome":
            if peer.cursor is None:
                peer.cursor = msg.get("cursor")
            if not peer.ready.done():
                peer.ready.set_result(101)
        elif kind == "replay_done":
            peer.replay_done = now
            self.caught_up.append(now)
            if len(self.caught_up) >= self.expect:
                self.all_caught.set()

    def _live(self) -> int:
        return sum(1 for p in self.peers if p.open and not p.stalled)

    async def open_one(self, host: str, port: int, path: str, opts: dict) -> Peer | str:
        """Open one socket and wait for its welcome (or upgrade); an error's name on failure."""
        loop = asyncio.get_running_loop()
        peer = Peer(self, path, f"{host}:{port}", opts.get("welcome", True))
        if opts.get("collect"):
            peer.replayed = []
        try:
            sock = socket.socket()
            sock.setblocking(False)
            if opts.get("rcvbuf"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts["rcvbuf"])
            await loop.sock_connect(sock, (host, port))
            await loop.create_connection(lambda: peer, sock=sock)
            status = await asyncio.wait_for(asyncio.shield(peer.ready), opts.get("timeout", 30))
        except (OSError, TimeoutError) as exc:
            if peer.transport is not None:
                peer.transport.abort()  # it owns the socket now
            else:
                sock.close()
            return type(exc).__name__
        if status != 101 or not peer.open:
            if peer.transport is not None:
                peer.transport.close()
            return f"status {status}" if status != 101 else f"closed {peer.close_code}"
        return peer

    async def connect(self, cmd: dict) -> dict:
        """Open ``paths`` with at most ``concurrency`` handshakes in flight."""
        sem = asyncio.Semaphore(cmd.get("concurrency", 50))
        failed: Counter[str] = Counter()
        started = time.monotonic()

        async def one(path: str) -> None:
            async with sem:
                got = await self.open_one(cmd["host"], cmd["port"], path, cmd)
            if isinstance(got, Peer):
                self.peers.append(got)
            else:
                failed[got] += 1

        await asyncio.gather(*(one(p) for p in cmd["paths"]))
        return {
            "connected": len(cmd["paths"]) - sum(failed.values()),
            "failed": dict(failed),
            "started": started,
            "finished": time.monotonic(),
        }

    def reset(self, target: int) -> dict:
        """Count notifications from zero; ``wait`` then waits for ``target`` on each socket."""
        for p in self.peers:
            p.count = 0
        self.target = target
        self.expect = self._live()
        self.arrivals = []
        self.latencies, self.stamps = [], []
        self.reached.clear()
        return {"live": self.expect}

    async def wait(self, timeout: float) -> dict:
        """Wait until every live socket has ``target`` notifications; their arrival times."""
        if self.expect:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reached.wait(), timeout)
        return {"arrivals": self.arrivals, "live": self._live(), "latencies": self.latencies}

    def take_latencies(self) -> dict:
        """The latency samples (receive time minus the sender's stamp) since the last call."""
        out, self.latencies = self.latencies, []
        stamps, self.stamps = self.stamps, []
        return {"latencies": out, "stamps": stamps}

    def stall(self, count: int) -> dict:
        """Stop reading on the first ``count`` sockets (they still hold their connection)."""
        for p in self.peers[:count]:
            p.stalled = True
            p.transport.pause_reading()
        return {"stalled": min(count, len(self.peers))}

    def status(self) -> dict:
        """Open sockets and the close codes seen."""
        codes = Counter(str(p.close_code) for p in self.peers if p.lost)
        counts = Counter(p.count for p in self.peers if p.open and not p.stalled)
        return {"open": sum(p.open for p in self.peers), "closed": dict(codes), "counts": counts}

    async def drop(self) -> dict:
        """Close every socket cleanly, keeping each one's path and last cursor."""
        for p in self.peers:
            p.close()
        await asyncio.sleep(0.2)
        return {"dropped": len(self.peers)}

    async def reconnect(self, cmd: dict) -> dict:
        """Reconnect every socket with ``since=<last cursor>`` and verify what it replays."""
        old, self.peers = self.peers, []
        self.caught_up, self.expect = [], len(old)
        self.all_caught.clear()
        sem = asyncio.Semaphore(cmd.get("concurrency", 50))
        failed: Counter[str] = Counter()
        opts = {**cmd, "collect": True}
        started = time.monotonic()

        ports = cmd.get("ports") or [cmd["port"]]  # dealt out: a killed node's clients move

        async def one(index: int, prev: Peer) -> None:
            path = f"{prev.path.split('&since=')[0]}&since={prev.cursor}"
            async with sem:
                got = await self.open_one(cmd["host"], ports[index % len(ports)], path, opts)
            if isinstance(got, Peer):
                self.peers.append(got)
                return
            failed[got] += 1
            self.expect -= 1
            if len(self.caught_up) >= self.expect:
                self.all_caught.set()

        await asyncio.gather(*(one(i, p) for i, p in enumerate(old)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_caught.wait(), cmd.get("timeout", 60))
        return {"started": started, "failed": dict(failed), **self._verify(cmd["expect"])}

    def _verify(self, expected: int) -> dict:
        lost = dup = disorder = 0
        for p in self.peers:
            got = p.replayed or []
            ids = [i for _, i, _ in got]
            dup += len(ids) - len(set(ids))
            marks = {m for _, _, m in got if m is not None}
            lost += max(0, expected - len(marks))
            seqs = [s for s, _, _ in got]
            disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        return {
            "caught_up": len(self.caught_up),
            "last": max(self.caught_up, default=None),
            "lost": lost,
            "duplicated": dup,
            "out_of_order": disorder,
            "reconnected": len(self.peers),
        }

    def close_all(self) -> dict:
        """Close every socket at once (no close handshake)."""
        for p in self.peers:
            if p.transport is not None:
                p.transport.abort()
        self.peers = []
        return {"closed": True}


async def serve() -> None:
    """Read commands until ``quit`` or the end of standard input."""
    fleet = Fleet()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "connect":
            out = await fleet.connect(cmd)
        elif op == "reset":
            out = fleet.reset(cmd.get("target", 1))
        elif op == "wait":
            out = await fleet.wait(cmd.get("timeout", 30))
        elif op == "latencies":
            out = fleet.take_latencies()
        elif op == "stall":
            out = fleet.stall(cmd["count"])
        elif op == "status":
            out = fleet.status()
        elif op == "drop":
            out = await fleet.drop()
        elif op == "reconnect":
            out = await fleet.reconnect(cmd)
        elif op == "close":
            out = fleet.close_all()
        else:
            out = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    fleet.close_all()


if __name__ == "__main__":
    asyncio.run(serve())
