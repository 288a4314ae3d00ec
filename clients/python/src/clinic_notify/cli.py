"""The ``clinic-notify`` command: send, token, listen, stats.

Reads ``NOTIFY_URL``, ``NOTIFY_API_KEY`` and ``NOTIFY_TOKEN``. Human-readable output by
default; ``--json`` prints JSON lines. Exit status: 0 done, 1 failed (unreachable, timed out),
2 refused by the service (its message on standard error) or a bad command line, 130 Ctrl-C.
Tokens and keys are never printed, except the token ``token`` was asked to mint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from clinic_notify.client import AsyncNotifyClient, NotifyClient
from clinic_notify.errors import NotifyError

DEFAULT_URL = "http://127.0.0.1:7556"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; common options go before or after the command."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--url", help=f"the service's base URL ($NOTIFY_URL, {DEFAULT_URL})")
    common.add_argument("--api-key", help="an API key ($NOTIFY_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON lines")
    parser = argparse.ArgumentParser(
        prog="clinic-notify",
        description="Send notifications, mint tokens, listen and read stats of a clinic "
        "notification service.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    send = sub.add_parser("send", parents=[common], help="send a notification (scope notify)")
    send.add_argument("user_ids", nargs="+", metavar="USER_ID", help="one or more recipients")
    send.add_argument("--type", default="custom", help="appointment, lab_result, ... (custom)")
    send.add_argument("--title", help="the title (required for custom)")
    send.add_argument("--message", help="the message")
    send.add_argument("--data", default="{}", help="the type's data, a JSON object")
    send.add_argument("--priority", choices=["low", "normal", "high", "critical"])
    send.add_argument("--deliver-at", help="ISO time with an offset: schedule it")

    token = sub.add_parser("token", parents=[common], help="mint a connection token (tokens)")
    token.add_argument("user_id", metavar="USER_ID")
    token.add_argument("--role", action="append", dest="roles", help="a role (repeatable)")
    token.add_argument("--ttl", type=int, help="lifetime in seconds")

    listen = sub.add_parser("listen", parents=[common], help="print a user's notifications")
    listen.add_argument("--token", help="a connection token ($NOTIFY_TOKEN)")
    listen.add_argument("--user-id", help="the user (default: the token's)")
    listen.add_argument("--since", help="resume after this cursor")
    listen.add_argument("--count", type=int, help="exit 0 after this many notifications")
    listen.add_argument("--timeout", type=float, help="exit 1 after this many seconds")
    listen.add_argument("--no-ack", action="store_true", help="send no delivery receipts")
    listen.add_argument("--min-delay", type=float, default=0.5, help="first reconnect delay")
    listen.add_argument("--max-delay", type=float, default=30.0, help="longest reconnect delay")

    sub.add_parser("stats", parents=[common], help="connection statistics (scope read)")

    args = parser.parse_args(argv)
    args.url = getattr(args, "url", None) or os.environ.get("NOTIFY_URL") or DEFAULT_URL
    args.api_key = getattr(args, "api_key", None) or os.environ.get("NOTIFY_API_KEY")
    args.json = getattr(args, "json", False)
    if args.command == "listen":
        args.token = args.token or os.environ.get("NOTIFY_TOKEN")
        if not args.token:
            parser.error("listen needs --token (or NOTIFY_TOKEN)")
        if args.since is not None and not args.since.isdigit():
            parser.error("--since must be a cursor (digits)")
    elif not args.api_key:
        parser.error(f"{args.command} needs --api-key (or NOTIFY_API_KEY)")
    if args.command == "send":
        try:
            args.data = json.loads(args.data)
        except ValueError:
            parser.error("--data must be a JSON object")
        if not isinstance(args.data, dict):
            parser.error("--data must be a JSON object")
    return args


def out(args: argparse.Namespace, value: Any, human: str) -> None:
    """One result: a JSON line with --json, else the human line."""
    print(json.dumps(value, ensure_ascii=False) if args.json else human, flush=True)


def news(line: str) -> None:
    """Connection news, on standard error."""
    print(line, file=sys.stderr, flush=True)


def run_send(args: argparse.Namespace, client: NotifyClient) -> int:
    recipients = args.user_ids[0] if len(args.user_ids) == 1 else args.user_ids
    made = client.send(
        recipients,
        args.type,
        args.data,
        title=args.title,
        message=args.message,
        priority=args.priority,
        deliver_at=args.deliver_at,
    )
    for n in made if isinstance(made, list) else [made]:
        when = f", at {n['deliver_at']}" if n.get("deliver_at") else ""
        human = f"sent {n['id']} to {n['user_id']}: {n['type']}, {n['priority']}{when}"
        out(args, n, f"{human} (cursor {n['cursor']})")
    return 0


def run_token(args: argparse.Namespace, client: NotifyClient) -> int:
    minted = client.mint_token(args.user_id, args.roles, args.ttl)
    out(args, minted, minted["token"])
    if not args.json:
        news(f"expires {minted['expires_at']}")
    return 0


def run_stats(args: argparse.Namespace, client: NotifyClient) -> int:
    stats = client.stats()
    out(args, stats, "\n".join(f"{k}: {v}" for k, v in stats.items()))
    return 0


def describe(n: dict[str, Any]) -> str:
    """A notification on one line."""
    text = f"{n.get('created_at', '')} [{n.get('priority')}] {n.get('type')}: {n.get('title')}"
    if n.get("message"):
        text += f" - {n['message']}"
    return f"{text} ({n.get('id')}, cursor {n.get('cursor')})"


async def run_listen(args: argparse.Namespace) -> int:
    received = 0
    async with AsyncNotifyClient(args.url, args.api_key) as client:
        frames = client.listen(
            args.user_id,
            args.token,
            since=args.since,
            frames=True,
            ack=not args.no_ack,
            min_delay=args.min_delay,
            max_delay=args.max_delay,
            on_status=news,
        )
        async for frame in frames:
            if args.json:
                out(args, frame, "")
            elif frame.get("type") == "welcome":
                news(f"listening as {frame['user_id']}: {frame['unread_count']} unread")
            elif frame.get("type") == "notification":
                print(describe(frame["notification"]), flush=True)
            if frame.get("type") == "notification":
                received += 1
                if args.count is not None and received >= args.count:
                    return 0
    return 0  # pragma: no cover - listen() never ends by itself


async def listen_within(args: argparse.Namespace) -> int:
    """Listen, bounded by --timeout."""
    try:
        return await asyncio.wait_for(run_listen(args), args.timeout)
    except asyncio.TimeoutError:
        news(f"timed out after {args.timeout}s")
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``clinic-notify`` command."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "listen":
            return asyncio.run(listen_within(args))
        with NotifyClient(args.url, args.api_key) as client:
            return {"send": run_send, "token": run_token, "stats": run_stats}[args.command](
                args, client
            )
    except NotifyError as exc:
        if exc.code == "unreachable":
            news(f"clinic-notify: cannot reach the service: {exc.message}")
            return 1
        news(f"clinic-notify: the service refused: {exc}")
        return 2 if exc.refused else 1
    except KeyboardInterrupt:
        return 130
