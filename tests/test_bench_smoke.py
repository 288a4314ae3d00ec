"""Every benchmark scenario runs end to end at a tiny size, so the suite cannot rot.

Each runs as ``python -m bench <scenario> --size 4`` against the session's database server,
with its real service, baseline and client processes. Speed is not judged here (the figures
at this size mean nothing); what is checked is that each scenario completes and that what
its clients verify holds: every frame delivered, nothing lost or duplicated on reconnect,
everything accepted also stored.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "connections": ["service held=4/4", "baseline held=4/4", "ratio rss_per_conn"],
    "fanout": ["service connected=4 failed={}", "baseline connected=4 failed={}", "(4 clients)"],
    "latency": ["service at 200/s", "service at 1000/s", "baseline at 1000/s"],
    "ingest": [
        "single:",
        "batched: 1000 stored",
        "raw insert_many: 1000",
        "ceiling",
        "critical with ack_required and a 2-step ladder",
        "target timeline_writes_on_ingest: 0 (target <= 0) met",
    ],
    "reconnect": ["service: 4/4 caught up", "lost=0 duplicated=0 out_of_order=0 failed={}"],
    "stalled": ["service: rss", "baseline: rss", "normal readers with all"],
    "cluster": [
        "connected=4 failed={}",
        "across nodes at 200/s",
        "storm: 4/4 moved clients caught up",
        "lost=0 duplicated=0 out_of_order=0 failed={}",
    ],
    "webhooks": ["webhooks: 4/4 delivered", "duplicates=0 bad_signatures=0 succeeded=4/4"],
    # The service's own counter is read while its last attempts may still be finishing: the
    # local push service's count (4/4, each decrypted and verified) is the check.
    "push": ["push: 4/4 pushed", "duplicates=0 errors=0", "counted by the service: sent="],
}


def run_bench(scenario: str, mongo_uri: str, workdir: Path) -> str:
    """Run one scenario at a tiny size; its output (the run must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--size", "4", "--seconds", "0.2",
         "--mongodb-uri", mongo_uri, "--workdir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_scenario_runs_at_a_tiny_size(scenario, mongo_uri, tmp_path):
    out = run_bench(scenario, mongo_uri, tmp_path)
    assert re.search(rf"^{scenario}: date=\S+ .*nproc=\d+ .*commit=\S+", out, re.M), out
    for expected in EXPECTED[scenario]:
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert "target " in out
    if scenario == "latency":  # every accepted notification reached its socket
        frames = re.findall(r"frames=(\d+)/(\d+)", out)
        assert len(frames) == 4 and all(a == b and int(a) > 0 for a, b in frames), out
    if scenario == "ingest":
        assert "accepted_but_not_stored: 0 " in out
    if scenario in ("fanout", "stalled"):
        assert re.search(r"normal readers with all \d+ broadcasts=4/4|\(4 clients\)", out)


def test_an_unknown_scenario_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr
