"""Start the notification service, or run one of its commands.

python run.py                      serve on port 7556 (embedded database without MONGODB_URI)
python run.py create-api-key --name NAME --scopes notify,read
python run.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from handlers.routes import start_node
from server import cli
from server.embedded import EmbeddedMongo
from settings import Settings

log = logging.getLogger("notify")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Clinic notification service")
    parser.add_argument("--port", type=int, help="port (default 7556, or NOTIFY_PORT)")
    parser.add_argument("--host", help="address (default 127.0.0.1, or NOTIFY_HOST)")
    parser.add_argument("--data-dir", help="embedded database folder (default ./data)")
    sub = parser.add_subparsers(dest="command")
    cli.add_commands(sub)
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announce(settings, running.port)
        await stop.wait()
        log.info("shutting down")
        await running.stop()
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def announce(settings: Settings, port: int) -> None:
    """Tell a newcomer where things are and how to take the first steps."""
    base = f"http://{settings.host}:{port}"
    print(
        f"\nClinic notification service is up.\n"
        f"  REST API     {base}/v1/   (OpenAPI: {base}/v1/openapi.json)\n"
        f"  WebSocket    ws://{settings.host}:{port}/v1/ws/notifications?token=...\n"
        f"  Health       {base}/healthz  {base}/readyz  {base}/metrics\n"
        f"First steps:\n"
        f"  python run.py create-api-key --name integrator --scopes notify,broadcast,tokens,read\n"
        f"  curl -X POST {base}/v1/tokens -H 'Authorization: Bearer <key>' "
        f'-d \'{{"user_id": "p-1001", "roles": ["patient"]}}\'\n',
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env(port=args.port, host=args.host, data_dir=args.data_dir)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command:
        return cli.run_command(args, settings)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
