"""Command-line operations on the service's data: API keys (and staff accounts)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

from server.auth import ApiKeys
from server.embedded import EmbeddedMongo
from server.render import api_key
from server.store import Store, connect
from server.timeutil import utcnow
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


async def create_api_key(settings: Settings, name: str, scopes: list[str]) -> str:
    """Create a key; returns it (it is not stored, only its hash)."""
    async with open_store(settings) as store:
        key, _ = await ApiKeys(store).create(name, scopes)
        return key


async def list_api_keys(settings: Settings) -> list[dict]:
    """Every API key record, without hashes."""
    async with open_store(settings) as store:
        return [api_key(r) for r in await store.list_api_keys()]


async def revoke_api_key(settings: Settings, key_id: str) -> dict | None:
    """Revoke a key by id."""
    async with open_store(settings) as store:
        record = await store.revoke_api_key(key_id, utcnow())
        return api_key(record) if record else None


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The key commands of ``run.py``."""
    create = sub.add_parser(
        "create-api-key", help="create an API key and print it", parents=[common]
    )
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: notify,read,...")
    sub.add_parser(
        "list-api-keys", help="list API keys (never the keys themselves)", parents=[common]
    )
    revoke = sub.add_parser("revoke-api-key", help="revoke an API key by id", parents=[common])
    revoke.add_argument("key_id")


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the key commands; returns the exit status."""
    if args.command == "create-api-key":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        try:
            key = asyncio.run(create_api_key(settings, args.name, scopes))
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        print(f"Created API key {args.name!r} with scopes {','.join(scopes)}.")
        print("It is shown only this once; store it now:")
        print(key)
        return 0
    if args.command == "list-api-keys":
        for r in asyncio.run(list_api_keys(settings)):
            state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
            print(f"{r['id']}  {r['prefix']}…  {r['name']}  {','.join(r['scopes'])}  {state}")
        return 0
    if args.command == "revoke-api-key":
        record = asyncio.run(revoke_api_key(settings, args.key_id))
        print(f"revoked {record['name']}" if record else "no such key")
        return 0 if record else 1
    return 2
