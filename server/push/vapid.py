"""The VAPID key pair (RFC 8292): one per deployment, shared by every node.

Given with ``NOTIFY_VAPID_PRIVATE_KEY``, or made on the first start and kept in MongoDB:
the first node to insert it wins and every other node reads the winner's, so all nodes sign
with the same key and browsers' subscriptions (bound to the public key) keep working.
"""

from __future__ import annotations

import base64
import contextlib
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

JWT_LIFETIME = 12 * 3600  # RFC 8292: at most 24 hours
JWT_REUSE = 3600  # a cached JWT is made again this long before it expires
DEV_SUBJECT = "mailto:notify@localhost"


def b64url(raw: bytes) -> str:
    """Unpadded base64url, as Web Push writes keys."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError if it is not base64url."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    text = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def private_key_from(raw: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from its 32-byte scalar."""
    if len(raw) != 32:
        raise ValueError("a VAPID private key is 32 bytes")
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def raw_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 32-byte scalar of a P-256 private key."""
    return key.private_numbers().private_value.to_bytes(32, "big")


class Vapid:
    """Signs the ``Authorization: vapid`` header of push requests."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str):
        self.key = key
        self.subject = subject
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public_key = b64url(point)
        self._jwts: dict[str, tuple[str, float]] = {}  # audience -> (jwt, expires)

    @classmethod
    async def load(cls, db: AsyncDatabase, configured: str, subject: str) -> Vapid:
        """The configured key, else the deployment's key in MongoDB (made if absent)."""
        if configured:
            return cls(private_key_from(unb64url(configured)), subject)
        found = await db.push_keys.find_one({"_id": "vapid"})
        if found is None:
            fresh = raw_private(ec.generate_private_key(ec.SECP256R1()))
            with contextlib.suppress(DuplicateKeyError):  # another node's came first: use it
                await db.push_keys.insert_one({"_id": "vapid", "private_key": b64url(fresh)})
            found = await db.push_keys.find_one({"_id": "vapid"})
        return cls(private_key_from(unb64url(found["private_key"])), subject)

    def header(self, audience: str) -> str:
        """``vapid t=<JWT>, k=<public key>`` for a push service origin (cached a while)."""
        now = time.time()
        cached = self._jwts.get(audience)
        if cached is None or cached[1] - JWT_REUSE < now:
            exp = int(now) + JWT_LIFETIME
            claims = {"aud": audience, "exp": exp, "sub": self.subject}
            cached = (jwt.encode(claims, self.key, algorithm="ES256"), exp)
            if len(self._jwts) > 1000:  # a handful of push services in practice
                self._jwts.clear()
            self._jwts[audience] = cached
        return f"vapid t={cached[0]}, k={self.public_key}"
