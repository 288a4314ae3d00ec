"""Plain output lines, the machine they were measured on, and small statistics."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.service import ROOT


def machine() -> str:
    """CPUs, memory, Python and load: what every figure is measured on."""
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    load = os.getloadavg()[0]
    return (
        f"nproc={os.cpu_count()} mem={mem_kb / 1048576:.1f}GiB "
        f"python={platform.python_version()} load1={load:.2f}"
    )


def commit() -> str:
    """The short commit, with ``+changes`` when the working tree differs from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty else "")


class Report:
    """Prints ``<scenario>: <text>`` lines as they are measured."""

    def __init__(self, scenario: str):
        self.scenario = scenario
        self.failures: list[str] = []

    def line(self, text: str) -> None:
        """One figure line."""
        print(f"{self.scenario}: {text}", flush=True)

    def header(self) -> None:
        """When, where and which commit."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.line(f"date={now} {machine()} commit={commit()}")

    def target(self, name: str, value: float, limit: float, below: bool = True) -> None:
        """A figure against its target: ``met`` or ``MISSED``."""
        ok = value <= limit if below else value >= limit
        sign = "<=" if below else ">="
        verdict = "met" if ok else "MISSED"
        if not ok:
            self.failures.append(name)
        self.line(f"target {name}: {value:.3g} (target {sign} {limit:g}) {verdict}")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for a line."""
    return f"{seconds * 1000:.1f}ms"


@dataclass
class Options:
    """What one invocation was asked for (``python -m bench --help``)."""

    workdir: Path
    size: int | None = None
    seconds: float | None = None
    processes: int | None = None
    mongodb_uri: str = ""
    profile: bool = False

    def sized(self, default: int) -> int:
        """The scenario's main count: ``--size`` or its default."""
        return self.size if self.size is not None else default

    def timed(self, default: float) -> float:
        """The scenario's duration: ``--seconds`` or its default."""
        return self.seconds if self.seconds is not None else default


def cpu_line(before: dict[str, float], after: dict[str, float], per: int, unit: str) -> str:
    """CPU time spent by each process between two ``cpu()`` readings, per ``unit``."""
    parts = [f"{name} {(after[name] - before[name]) * 1000 / max(per, 1):.2f}ms" for name in after]
    return f"cpu per {unit}: " + " ".join(parts)
