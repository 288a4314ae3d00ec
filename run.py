"""Start the notification service, or run one of its commands.

python run.py                      serve on port 7556 (embedded database without MONGODB_URI)
python run.py create-api-key --name NAME --scopes notify,read
python run.py create-staff --username U --role staff   (password from the terminal or stdin)
python run.py --nodes 3            three local nodes on ports 7556-7558, one database
python run.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from handlers.routes import start_node
from server.app import logs
from server.ops import cli
from server.ops.embedded import EmbeddedMongo
from server.ops.local_cluster import run_local_cluster
from settings import Settings

log = logging.getLogger("notify")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    # SUPPRESS: an option given before the command is not reset by the command's parser.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--port", type=int, help="port (default 7556, or NOTIFY_PORT)")
    common.add_argument("--host", help="address (default 127.0.0.1, or NOTIFY_HOST)")
    common.add_argument("--data-dir", help="embedded database folder (default ./data)")
    parser = argparse.ArgumentParser(description="Clinic notification service", parents=[common])
    parser.add_argument(
        "--nodes", type=int, default=1, help="start N local nodes on consecutive ports"
    )
    sub = parser.add_subparsers(dest="command")
    # The common options may also follow the command: `run.py create-api-key --data-dir D`.
    cli.add_commands(sub, common)
    return parser.parse_args(argv)


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    embedded = None
    uri = settings.mongodb_uri
    if not uri:
        embedded = EmbeddedMongo(settings.data_dir)
        uri = embedded.start()
        log.info("embedded database serving %s on port %d", embedded.data_dir, embedded.port)
    try:
        running = await start_node(settings, uri)
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announce(settings, running.port)
        # First start with no dashboard account: create "admin" and show its password once.
        password = await running.node.dashboard.staff.ensure_first_admin()
        if password is not None:
            announce_first_admin(password)
        await stop.wait()
        log.info("shutting down")
        await running.stop()
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def tune_gc() -> None:
    """Set the garbage collector for thousands of long-lived sockets (bench/RESULTS.md).

    With CPython's defaults a full collection runs whenever objects that survived two
    young collections grew by a quarter, and every connect storm or batch of 1,000
    notifications does that; at 5,000 sockets each full pass stops the loop for 0.2 to
    1 s. So full passes are made rare (about every ten million allocations) and what
    exists at start-up (modules, classes) is never scanned again. The young generations
    stay small: every socket's keep-alive (Tornado's ping task) parks a sleep, a future
    and a timer for a whole ping interval, and requests in flight hold their coroutines
    across a MongoDB round trip, so thousands of objects a second survive the first pass.
    A middle pass costs about a microsecond per young object and stops the loop while it
    runs: at 5,000 sockets, over the survivors of 10 first passes of 2,000 it took 20 to
    60 ms (p99 delivery 39 to 67 ms), over 3 of them a third of that (p99 25 to 31 ms).
    """
    gc.freeze()
    gc.set_threshold(2_000, 3, 1_700)


def announce(settings: Settings, port: int) -> None:
    """Tell a newcomer where things are and how to take the first steps."""
    base = f"http://{settings.host}:{port}"
    print(
        f"\nClinic notification service is up.\n"
        f"  REST API     {base}/v1/   (OpenAPI: {base}/v1/openapi.json)\n"
        f"  WebSocket    ws://{settings.host}:{port}/v1/ws/notifications?token=...\n"
        f"  Health       {base}/healthz  {base}/readyz  {base}/metrics\n"
        f"  Dashboard    {base}/dashboard\n"
        f"First steps:\n"
        f"  python run.py create-api-key --name integrator --scopes notify,broadcast,tokens,read\n"
        f"  curl -X POST {base}/v1/tokens -H 'Authorization: Bearer <key>' "
        f'-d \'{{"user_id": "p-1001", "roles": ["patient"]}}\'\n',
        flush=True,
    )


def announce_first_admin(password: str) -> None:
    """Print the first dashboard account's password, this once (it is stored only hashed)."""
    print(
        f"First start: created the dashboard account (shown only this once)\n"
        f"  username     admin\n"
        f"  password     {password}\n"
        f"  Change it after logging in (Your account), or set a new one with\n"
        f"  python run.py create-staff --username admin --role admin --reset\n",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env(
        port=getattr(args, "port", None),
        host=getattr(args, "host", None),
        data_dir=getattr(args, "data_dir", None),
    )
    logs.setup(settings.log_level, settings.log_format)
    if args.command:
        return cli.run_command(args, settings)
    if args.nodes > 1:
        return run_local_cluster(settings, args.nodes)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
