"""``--profile``: py-spy samples the service during a scenario's measured phase.

py-spy (``pip install py-spy``) attaches to the running process from outside and samples
its stacks (only while the thread is on a core, not while it waits in ``epoll``), so the
service runs its production code unchanged. The lines printed are the functions with the
most samples, by self time (the frame on top) and by total time (anywhere on the stack),
each as a share of the samples; the collapsed stacks are kept in the workdir.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from bench.report import Options, Report

TOP = 12
RATE = 250  # samples a second


@contextlib.asynccontextmanager
async def profiled(opts: Options, out: Report, pid: int | None, what: str) -> AsyncIterator[None]:
    """Sample ``pid`` while the block runs, if ``--profile`` was given; then print the top."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not opts.profile or pid is None or spy is None:
        if opts.profile and spy is None:
            out.line("profile: py-spy is not installed (pip install py-spy)")
        yield
        return
    path = opts.workdir / f"profile-{what}.txt"
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
         "--output", str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # attached before the phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 30)
        if proc.poll() is None:
            proc.kill()
    for line in summary(path):
        out.line(f"profile {what}: {line}")


def summary(path: Path) -> list[str]:
    """The top functions of a collapsed-stack file, by self and by total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    try:
        text = path.read_text()
    except OSError:
        return ["no samples (py-spy could not attach?)"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    if not samples:
        return ["no samples"]
    lines = [f"{samples} samples"]
    lines += [f"self {n * 100 / samples:4.1f}% {name}" for name, n in own.most_common(TOP)]
    lines += [f"total {n * 100 / samples:4.1f}% {name}" for name, n in total.most_common(TOP * 2)]
    return lines


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` as ``module.py:func``."""
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{module}:{name}"
