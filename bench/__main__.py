"""``python -m bench <scenario> [--size N] [--seconds S]``: run one scenario, or ``all``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

from bench.report import Options, Report

SCENARIOS = {
    "connections": "authenticated sockets held, RSS per connection, connect rate",
    "fanout": "one broadcast to every socket: delivery time and the server's send loop",
    "latency": "POST /v1/notifications to the socket frame, p50/p99/max, at two rates",
    "ingest": "notifications stored per second, single and batched, vs raw insert_many",
    "reconnect": "sockets drop, notifications pile up, all reconnect with since",
    "stalled": "memory while 100 stalled readers sit through a fan-out",
    "cluster": "three nodes: latency across nodes, then one killed and its clients moved",
    "webhooks": "signed webhook deliveries per second to a local receiver",
    "push": "Web Push to 5,000 users with no socket: pushes per second, CPU per push",
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the service against a bare Tornado baseline.",
        epilog="\n".join(f"  {k:12} {v}" for k, v in SCENARIOS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--size", type=int, help="sockets (or items) instead of the default")
    parser.add_argument("--seconds", type=float, help="duration of timed phases")
    parser.add_argument("--processes", type=int, help="load-client processes (default: by size)")
    parser.add_argument("--mongodb-uri", default="", help="use this database, not an embedded one")
    parser.add_argument("--workdir", help="keep logs and data here (default: a temporary folder)")
    parser.add_argument(
        "--profile", action="store_true", help="sample the service with py-spy while measured"
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    """Run the scenarios asked for; a missed target is reported, not an error."""
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-"))
    missed: list[str] = []
    try:
        for name in names:
            out = Report(name)
            out.header()
            opts = Options(
                workdir / name,
                size=args.size,
                seconds=args.seconds,
                processes=args.processes,
                mongodb_uri=args.mongodb_uri,
                profile=args.profile,
            )
            opts.workdir.mkdir(parents=True, exist_ok=True)
            module = importlib.import_module(f"bench.{name}")
            await module.run(opts, out)
            missed += [f"{name}.{f}" for f in out.failures]
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if missed:
        print(f"targets missed: {', '.join(missed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
