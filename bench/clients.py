"""The controller's side of the load clients: several ``bench.loadproc`` processes at once."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.service import HOST, ROOT, Proc

PER_PROCESS = 4000  # sockets per client process: well under the 20,000 open-file limit


class LoadClients:
    """A group of load-client processes, each holding a share of the sockets."""

    def __init__(self, procs: list[asyncio.subprocess.Process]):
        self.procs = procs

    @classmethod
    async def start(cls, sockets: int, processes: int | None = None) -> LoadClients:
        """Enough processes for ``sockets`` (at least one, at most 8)."""
        count = processes or max(1, min(8, -(-sockets // PER_PROCESS)))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadproc",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
                limit=1 << 26,
            )
            for _ in range(count)
        ]
        return cls(procs)

    async def _call(self, proc: asyncio.subprocess.Process, cmd: dict) -> dict:
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load client exited during {cmd['op']}")
        return json.loads(line)

    async def each(self, op: str, **args: Any) -> list[dict]:
        """Send the same command to every process; their answers."""
        return list(await asyncio.gather(*(self._call(p, {"op": op, **args}) for p in self.procs)))

    async def split(self, op: str, key: str, items: list, **args: Any) -> list[dict]:
        """Send ``items`` dealt out over the processes as ``key``, with the same other args."""
        n = len(self.procs)
        return list(
            await asyncio.gather(
                *(
                    self._call(p, {"op": op, key: items[i::n], **args})
                    for i, p in enumerate(self.procs)
                )
            )
        )

    async def connect(self, server: Proc, paths: list[str], **opts: Any) -> dict:
        """Open every path; connected count, failures, and the connect rate."""
        opts.setdefault("welcome", server.welcomes)
        answers = await self.split("connect", "paths", paths, host=HOST, port=server.port, **opts)
        started = min(a["started"] for a in answers)
        finished = max(a["finished"] for a in answers)
        failed: dict[str, int] = {}
        for a in answers:
            for why, n in a["failed"].items():
                failed[why] = failed.get(why, 0) + n
        connected = sum(a["connected"] for a in answers)
        seconds = max(finished - started, 1e-9)
        return {"connected": connected, "failed": failed, "seconds": seconds,
                "rate": connected / seconds}  # fmt: skip

    async def stop(self) -> None:
        """Ask every process to quit, then make sure it did."""
        for p in self.procs:
            if p.returncode is None:
                try:
                    p.stdin.write(b'{"op": "quit"}\n')
                    await p.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
