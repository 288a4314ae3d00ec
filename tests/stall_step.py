"""Run a real node (``run.py``) whose FIRST attempt at an escalation step stalls for good
right after storing the step's alerts, before it pushes, records or finishes the step.

The cluster test kills such a node with SIGKILL while it holds the claim: the stall only
makes "after it claimed a step and stored its alerts" a moment the test can wait for, instead
of a race of milliseconds. Every later attempt (another node, after the lease) runs as
shipped. Usage: ``python -m tests.stall_step --port P`` (run.py's arguments).
"""

from __future__ import annotations

import asyncio
import sys

import run
from server.escalation.steps import Steps

_run, _escalate = Steps.run, Steps.escalate


async def _run_marking_first(self: Steps, entries: list[dict]) -> dict[str, int]:
    self.first_attempt = any(e.get("attempts") == 1 for e in entries)
    return await _run(self, entries)


async def _escalate_then_stall(self: Steps, doc: dict, level: int) -> None:
    if not getattr(self, "first_attempt", False):
        return await _escalate(self, doc, level)
    repush = self.repush

    async def stall(_doc: dict, _level: int) -> None:  # the alerts are stored by now
        print(f"STALLED {doc['_id']} {level}", file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    self.repush = stall
    try:
        await _escalate(self, doc, level)
    finally:
        self.repush = repush


Steps.run = _run_marking_first
Steps.escalate = _escalate_then_stall

if __name__ == "__main__":
    sys.exit(run.main())
