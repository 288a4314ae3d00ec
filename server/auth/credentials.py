"""Credentials: connection tokens (JWT, HS256), API keys (random, stored as a hash)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import jwt
from bson import ObjectId

from server.app.audit import Audit
from server.app.errors import Conflict, Forbidden, NotFound, Unauthorized
from server.app.schemas import ID_RE, LATEST, ROLE_PATTERN, SCOPES
from server.app.store import Store
from server.app.timeutil import as_datetime, utcnow

KEY_PREFIX = "nk_"
ALGORITHM = "HS256"
MAX_TOKEN = 8192  # far above any real token (a few hundred bytes); more is not worth parsing
MAX_ROLES = 20
MAX_KEY_RATE = 100_000.0
SEEN_SECONDS = 3600.0  # how long a key found valid counts as its caller's (see ApiKeys)
SEEN_MAX = 10_000
ROLE_RE = re.compile(ROLE_PATTERN)
LATEST_SECONDS = LATEST.timestamp()


# Slots: a socket keeps its token's principal for as long as it is open.
@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key (with scopes) or a connection token's user."""

    kind: str  # "api_key" or "token"
    id: str  # key id, or the token's sub
    scopes: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()
    name: str = ""
    expires_at: datetime | None = None
    rate: float | None = None  # an API key's own requests per second (None: the default)

    def require_scope(self, scope: str) -> None:
        """Raise Forbidden unless this is an API key with ``scope`` (``admin`` has every one)."""
        if self.kind != "api_key" or not (scope in self.scopes or "admin" in self.scopes):
            raise Forbidden(f"this needs an API key with the '{scope}' scope")

    def require_user(self, user_id: str, scope: str = "read") -> None:
        """Allow the user's own token, or an API key with ``scope``."""
        if self.kind == "token":
            if self.id != user_id:
                raise Forbidden("a token may only reach its own user's notifications")
            return
        self.require_scope(scope)


class Tokens:
    """Mints and checks connection tokens."""

    def __init__(self, secret: str, default_ttl: int, max_ttl: int):
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 characters")
        self._secret = secret
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    def mint(self, user_id: str, roles: list[str], ttl: int | None = None) -> tuple[str, datetime]:
        """A signed token for a user, and when it expires."""
        ttl = min(ttl or self.default_ttl, self.max_ttl)
        now = int(time.time())
        claims = {"sub": user_id, "roles": list(roles), "iat": now, "exp": now + ttl}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, datetime.fromtimestamp(now + ttl, UTC)

    def check(self, token: str) -> Principal:
        """The token's user; raises Unauthorized for a bad, expired or unsigned token.

        Every claim is checked here, whoever signed the token (this service, or a platform
        holding the shared secret): a claim of the wrong type or out of range is a 401, never
        an error further on (``exp`` in milliseconds, as ``Date.now()`` gives, is the usual).
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            raise Unauthorized("the token is not valid")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        # PyJWT lets some odd values escape as Python errors (an exp of Infinity overflows
        # its int()): a token that cannot be read is a bad token, whatever broke on it.
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthorized("the token is not valid") from None
        return principal_of(claims)


def principal_of(claims: dict) -> Principal:
    """The principal of verified claims; Unauthorized naming the first claim that is wrong."""
    sub, roles = claims.get("sub"), claims.get("roles", [])
    if not isinstance(sub, str) or not ID_RE.match(sub):
        raise Unauthorized("the token's sub is not a valid user id")
    if (
        not isinstance(roles, list)
        or len(roles) > MAX_ROLES
        or not all(isinstance(r, str) and ROLE_RE.match(r) for r in roles)
    ):
        raise Unauthorized(f"the token's roles are not a list of up to {MAX_ROLES} role names")
    for name in ("iat", "nbf"):
        if name in claims and _seconds(claims[name]) is None:
            raise Unauthorized(f"the token's {name} is not a time in seconds")
    exp = _seconds(claims["exp"])
    if exp is None:
        raise Unauthorized("the token's exp is not a time in seconds since 1970 (milliseconds?)")
    # Role names interned: thousands of sockets share a handful, one string each.
    roles = tuple(sys.intern(r) for r in roles)
    return Principal("token", sub, roles=roles, expires_at=datetime.fromtimestamp(exp, UTC))


def _seconds(value: object) -> float | None:
    """A NumericDate (RFC 7519: seconds, possibly fractional) this service can hold, or None.

    A bool is not a number here, nor a string of digits; the year 3000 bounds it (a time in
    milliseconds is tens of thousands of years ahead, past what a datetime holds).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (0 <= value <= LATEST_SECONDS):  # also false for NaN
        return None
    return float(value)


def hash_key(key: str) -> str:
    """The stored form of an API key: keys are 256 random bits, so SHA-256 is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_token(credential: str) -> bool:
    """A JWT has three dot-separated parts; an API key starts with the key prefix."""
    return credential.count(".") == 2 and not credential.startswith(KEY_PREFIX)


@dataclass
class ApiKeys:
    """Creates, lists, revokes and checks API keys; a node caches lookups briefly."""

    store: Store
    cache_seconds: float = 5.0
    _cache: dict[str, tuple[float, dict | None]] = field(default_factory=dict)
    # Digests of keys found valid, and when: an address past its failure limit still gets
    # these looked up (its integrator keeps working), and no key never seen valid.
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    async def create(
        self,
        name: str,
        scopes: list[str],
        rotated_from: str | None = None,
        rate: float | None = None,
    ) -> tuple[str, dict]:
        """A new key (returned once, never stored) and its stored record.

        ``rate``: this key's own REST requests per second, in place of the node's default
        (``NOTIFY_RATE_REST_KEY``); 0 exempts it.
        """
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
        if rate is not None and not (0 <= rate <= MAX_KEY_RATE):
            raise ValueError(f"the rate must be between 0 and {MAX_KEY_RATE:g} per second")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {
            "_id": str(ObjectId()),
            "name": name,
            "prefix": key[:10],
            "hash": hash_key(key),
            "scopes": sorted(set(scopes)),
            "created_at": utcnow(),
            "revoked_at": None,
        }
        if rotated_from is not None:
            record["rotated_from"] = rotated_from
        if rate is not None:
            record["rate"] = float(rate)
        await self.store.insert_api_key(record)
        record.pop("hash")
        return key, record

    async def check(self, key: str) -> Principal:
        """The key's principal; raises Unauthorized for an unknown or revoked key."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] < now:
            record = await self.store.api_key_by_hash(digest)
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, record)
        else:
            record = hit[1]
        if record is None or not hmac.compare_digest(record["hash"], digest):
            raise Unauthorized("unknown API key")
        if record.get("revoked_at") is not None:
            raise Unauthorized("this API key has been revoked")
        expires = as_datetime(record.get("expires_at"))
        if expires is not None and expires <= utcnow():
            raise Unauthorized("this API key has expired (it was rotated)")
        self._seen[digest] = now
        self._seen.move_to_end(digest)
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return Principal(
            "api_key",
            record["_id"],
            scopes=frozenset(record["scopes"]),
            name=record["name"],
            rate=record.get("rate"),
        )

    def known_good(self, key: str) -> bool:
        """True when this node found the key valid within the last hour (no lookup now)."""
        seen = self._seen.get(hash_key(key))
        return seen is not None and time.monotonic() - seen < SEEN_SECONDS

    async def listing(self) -> list[dict]:
        """Every key's record (never the key itself: only its hash is stored)."""
        return await self.store.list_api_keys()

    async def rotate(self, key_id: str, grace_seconds: float | None = None) -> tuple[str, dict]:
        """A new key with the old one's name and scopes, for a rotation without downtime.

        The old key keeps working until it is revoked, or for ``grace_seconds`` more when
        given: deploy the new key, then let the old one lapse (other nodes notice within
        ``api_key_cache_seconds``).
        """
        old = await self.store.api_key_by_id(key_id)
        if old is None:
            raise NotFound("no such API key")
        expires = as_datetime(old.get("expires_at"))
        if old.get("revoked_at") is not None or (expires is not None and expires <= utcnow()):
            raise Conflict("this API key is no longer valid; create a new one")
        key, record = await self.create(
            old["name"], old["scopes"], rotated_from=key_id, rate=old.get("rate")
        )
        if grace_seconds is not None:
            until = utcnow() + timedelta(seconds=max(grace_seconds, 0))
            await self.store.expire_api_key(key_id, until)
        self.forget()
        return key, record

    async def revoke(self, key_id: str, actor: str, audit: Audit) -> dict | None:
        """Revoke a key (the one path of the dashboard and the command line): stored, this
        node's cache dropped, audited. None for an unknown key.

        Other nodes stop honouring it within ``api_key_cache_seconds`` (their caches)."""
        record = await self.store.revoke_api_key(key_id, utcnow())
        if record is None:
            return None
        self.forget()
        await audit.record(actor, "api_key.revoke", key_id, name=record.get("name"))
        return record

    def forget(self) -> None:
        """Drop cached lookups (after a revocation on this node)."""
        self._cache.clear()
