"""Command-line operations on the service's data: API keys (and staff accounts)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from server.app.audit import Audit
from server.app.errors import ServiceError
from server.app.store import Store, connect
from server.auth.credentials import ApiKeys
from server.auth.ratelimit import RateLimits
from server.dashboard.staff import StaffAccounts, normalize
from server.dashboard.staff_store import StaffStore
from server.feed.render import api_key
from server.ops.embedded import EmbeddedMongo
from settings import Settings


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The store at ``MONGODB_URI``, else the embedded database of ``--data-dir``.

    A running service's embedded server is reused; otherwise one is started for the
    duration of the command.
    """
    embedded = None
    uri = settings.mongodb_uri
    if not uri:
        embedded = EmbeddedMongo(settings.data_dir)
        uri = embedded.start()
    client = connect(uri, settings.mongodb_timeout_ms)
    try:
        store = Store(client, settings.mongodb_db, settings.retention_days)
        await store.create_indexes()
        yield store
    finally:
        await client.close()
        if embedded is not None:
            embedded.stop()


async def create_api_key(
    settings: Settings, name: str, scopes: list[str], rate: float | None = None
) -> str:
    """Create a key (with its own rate limit, if given); returns it (only its hash is stored)."""
    async with open_store(settings) as store:
        key, record = await ApiKeys(store).create(name, scopes, rate=rate)
        audit = Audit(store.db, settings.audit_retention_days)
        await audit.record(
            "cli", "api_key.create", record["_id"], name=name, scopes=record["scopes"], rate=rate
        )
        return key


def parse_rate(text: str) -> float:
    """``--rate``: requests per second as ``N/s`` (or ``N``); 0 exempts the key."""
    number = text.strip().lower().removesuffix("/s").strip()
    try:
        rate = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate like 200/s: {text!r}") from None
    if not 0 <= rate <= 100_000:  # also false for NaN
        raise argparse.ArgumentTypeError("a rate from 0/s (no limit) to 100000/s")
    return rate


async def list_api_keys(settings: Settings) -> list[dict]:
    """Every API key record, without hashes."""
    async with open_store(settings) as store:
        return [api_key(r) for r in await store.list_api_keys()]


async def revoke_api_key(settings: Settings, key_id: str) -> dict | None:
    """Revoke a key by id."""
    async with open_store(settings) as store:
        audit = Audit(store.db, settings.audit_retention_days)
        record = await ApiKeys(store).revoke(key_id, "cli", audit)
        return api_key(record) if record else None


async def rotate_api_key(
    settings: Settings, key_id: str, grace_seconds: float | None
) -> tuple[str, dict]:
    """A new key with the old one's name and scopes; the old one lapses after the grace."""
    async with open_store(settings) as store:
        key, record = await ApiKeys(store).rotate(key_id, grace_seconds)
        audit = Audit(store.db, settings.audit_retention_days)
        await audit.record(
            "cli", "api_key.rotate", key_id, new_key_id=record["_id"], grace_seconds=grace_seconds
        )
        return key, api_key(record)


async def create_staff(
    settings: Settings, username: str, role: str, password: str, reset: bool = False
) -> str:
    """Create a dashboard account, or with ``reset`` set an existing one's password and role;
    returns what was done."""
    async with open_store(settings) as store:
        audit = Audit(store.db, settings.audit_retention_days)
        staff_store = StaffStore(store.db)
        await staff_store.create_indexes()
        accounts = StaffAccounts(staff_store, audit, RateLimits(settings))
        if reset and await staff_store.account(normalize(username)) is not None:
            await accounts.set_password("cli", username, password)
            await accounts.set_role("cli", normalize(username), role)
            await accounts.set_disabled("cli", normalize(username), False)
            return "reset"
        await accounts.create(username, password, role, "cli")
        return "created"


def read_password(stdin: TextIO | None = None) -> str:
    """The new password: asked twice on a terminal, else the first line of standard input."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password (at least 10 characters): ")
    if getpass.getpass("The same password again: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The key commands of ``run.py``."""
    create = sub.add_parser(
        "create-api-key", help="create an API key and print it", parents=[common]
    )
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: notify,read,...")
    create.add_argument(
        "--rate",
        type=parse_rate,
        help="this key's REST requests per second, e.g. 200/s (default: NOTIFY_RATE_REST_KEY; "
        "0/s: no limit)",
    )
    sub.add_parser(
        "list-api-keys", help="list API keys (never the keys themselves)", parents=[common]
    )
    revoke = sub.add_parser("revoke-api-key", help="revoke an API key by id", parents=[common])
    revoke.add_argument("key_id")
    rotate = sub.add_parser(
        "rotate-api-key",
        help="create a new key with the same name and scopes; print it",
        parents=[common],
    )
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace-seconds",
        type=float,
        help="the old key stops working this long from now (default: when revoked)",
    )
    staff = sub.add_parser(
        "create-staff",
        help="create a dashboard account (password from the terminal or standard input)",
        parents=[common],
    )
    staff.add_argument("--username", required=True)
    staff.add_argument("--role", choices=("admin", "staff"), default="staff")
    staff.add_argument(
        "--reset", action="store_true", help="if it exists: set its password and role, enable it"
    )


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the key commands; returns the exit status."""
    if args.command == "create-api-key":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        try:
            key = asyncio.run(create_api_key(settings, args.name, scopes, args.rate))
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        rate = "" if args.rate is None else f", {args.rate:g} requests/s"
        print(f"Created API key {args.name!r} with scopes {','.join(scopes)}{rate}.")
        print("It is shown only this once; store it now:")
        print(key)
        return 0
    if args.command == "list-api-keys":
        for r in asyncio.run(list_api_keys(settings)):
            state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
            if not r["revoked_at"] and r.get("expires_at"):
                state = f"expires {r['expires_at']}"  # rotated: valid until its grace ends
            rate = "" if r.get("rate") is None else f"  {r['rate']:g}/s"
            print(f"{r['id']}  {r['prefix']}…  {r['name']}  {','.join(r['scopes'])}{rate}  {state}")
        return 0
    if args.command == "revoke-api-key":
        record = asyncio.run(revoke_api_key(settings, args.key_id))
        print(f"revoked {record['name']}" if record else "no such key")
        return 0 if record else 1
    if args.command == "create-staff":
        password = read_password()
        try:
            done = asyncio.run(
                create_staff(settings, args.username, args.role, password, args.reset)
            )
        except ServiceError as exc:
            details = "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.fields.items())
            print(f"error: {exc.message}" + (f" ({details})" if details else ""))
            return 1
        print(
            f"{'Created' if done == 'created' else 'Reset'} the {args.role} account "
            f"{normalize(args.username)!r}. Log in at /dashboard."
        )
        return 0
    if args.command == "rotate-api-key":
        try:
            key, record = asyncio.run(rotate_api_key(settings, args.key_id, args.grace_seconds))
        except ServiceError as exc:
            print(f"error: {exc.message}")
            return 1
        lapse = (
            "until you revoke it"
            if args.grace_seconds is None
            else f"for {args.grace_seconds:g} more seconds"
        )
        print(f"Rotated {record['name']!r}: new key id {record['id']}.")
        print(f"The old key keeps working {lapse}. The new key, shown only this once:")
        print(key)
        return 0
    return 2
