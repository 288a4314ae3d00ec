"""Staff accounts of the dashboard: Argon2 password hashes, sessions, login throttling.

Passwords are hashed with argon2-cffi (Argon2id, its RFC 9106 defaults) in a worker thread so
that a login never stalls the event loop. A session is a random value in a signed cookie;
MongoDB keeps only its SHA-256, so a leaked database cannot be replayed as a login, and
disabling an account or changing its password ends its sessions at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from server.app import schemas
from server.app.audit import Audit
from server.app.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from server.app.secret_files import local_secret
from server.app.timeutil import utcnow
from server.auth.ratelimit import RateLimits
from server.dashboard import forms
from server.dashboard.staff_store import StaffStore
from settings import Settings

USERNAME_RE = re.compile(forms.USERNAME_PATTERN)
FIRST_ADMIN = "admin"
PATIENT_ROLE = "patient"
FORM_INVALID = "the form is not valid"

HASHER = PasswordHasher()


def test_client_roles(staff_role: str) -> frozenset[str]:
    """Roles the test client may put in a token: a patient's and the staff member's own.

    Never ``admin``: the test client watches what a user sees, and a staff member must not
    be able to mint a token for a role (and its broadcasts) they do not hold themselves.
    """
    return frozenset({PATIENT_ROLE, staff_role}) - {"admin"}


def cookie_secret(settings: Settings) -> str:
    """The secret that signs dashboard cookies."""
    return local_secret(settings, settings.cookie_secret, "cookie_secret")


def session_digest(token: str) -> str:
    """What MongoDB keeps of a session cookie's value."""
    return hashlib.sha256(token.encode()).hexdigest()


class StaffAccounts:
    """Creates and changes staff accounts, checks passwords, and keeps sessions."""

    def __init__(
        self, store: StaffStore, audit: Audit, limits: RateLimits, session_hours: float = 12.0
    ):
        self.store = store
        self.audit = audit
        self.limits = limits
        self.session_ttl = timedelta(hours=session_hours)
        self.hasher = HASHER
        self._dummy_hash: str | None = None

    # ---- accounts ----------------------------------------------------------------------

    async def create(self, username: str, password: str, role: str, actor: str) -> dict:
        """A new enabled account; a taken username is a Conflict."""
        new = {"username": username, "password": password, "role": role}
        loaded = schemas.load(forms.StaffIn(), new, FORM_INVALID)
        username, password, role = loaded["username"], loaded["password"], loaded["role"]
        digest = await asyncio.to_thread(self.hasher.hash, password)
        doc = {
            "_id": username,
            "role": role,
            "password_hash": digest,
            "disabled": False,
            "created_at": utcnow(),
            "created_by": actor,
            "last_login": None,
        }
        await self.store.insert_account(doc)
        await self.audit.record(actor, "staff.create", username, role=role)
        doc.pop("password_hash")
        return doc

    async def ensure_first_admin(self) -> str | None:
        """With no account at all, create ``admin`` with a random password and return it."""
        if await self.store.any_account():
            return None
        password = secrets.token_urlsafe(12)
        try:
            await self.create(FIRST_ADMIN, password, "admin", "system")
        except Conflict:  # another node created it at the same moment
            return None
        return password

    async def accounts(self) -> list[dict]:
        """Every account, without hashes."""
        return await self.store.accounts()

    async def set_role(self, actor: str, username: str, role: str) -> dict:
        """Change an account's role; the last enabled admin stays an admin."""
        schemas.load(forms.StaffChangeIn(), {"action": "role", "role": role}, FORM_INVALID)
        username = normalize(username)
        account = await self._existing(username)
        if account["role"] == "admin" and role != "admin":
            await self._keep_an_admin(username)
        updated = await self.store.update_account(username, {"role": role})
        if account["role"] == "admin" and role != "admin":
            # Demoted: whatever an admin's session holds open (pages, a staff socket) ends
            # with it; the next login starts with the new role. A promotion keeps it.
            await self.store.delete_sessions_of(username)
        await self.audit.record(actor, "staff.role", username, role=role)
        return updated

    async def set_disabled(self, actor: str, username: str, disabled: bool) -> dict:
        """Disable (ending its sessions) or enable an account; nobody disables themselves."""
        username = normalize(username)
        account = await self._existing(username)
        if disabled and actor == f"staff:{username}":
            raise Forbidden("you cannot disable your own account")
        if disabled and account["role"] == "admin":
            await self._keep_an_admin(username)
        updated = await self.store.update_account(username, {"disabled": disabled})
        if disabled:
            await self.store.delete_sessions_of(username)
        await self.audit.record(actor, "staff.disable" if disabled else "staff.enable", username)
        return updated

    async def change_password(self, username: str, current: str, new: str) -> None:
        """A staff member changes their own password (knowing the current one)."""
        account = await self._existing(username)
        if not await self._verify(account.get("password_hash"), current):
            raise ValidationFailed(
                "the current password is wrong", {"current": ["not your current password"]}
            )
        await self.set_password(f"staff:{username}", username, new)

    async def set_password(self, actor: str, username: str, password: str) -> None:
        """Set a password (own change, or a reset from the command line); ends sessions."""
        change = {"current": "-", "new": password, "confirm": password}
        schemas.load(forms.PasswordChangeIn(), change, FORM_INVALID)
        username = normalize(username)
        await self._existing(username)
        digest = await asyncio.to_thread(self.hasher.hash, password)
        await self.store.update_account(username, {"password_hash": digest})
        await self.store.delete_sessions_of(username)
        await self.audit.record(actor, "staff.password", username)

    async def _existing(self, username: str) -> dict:
        account = await self.store.account(normalize(username))
        if account is None:
            raise NotFound("no such staff account")
        return account

    async def _keep_an_admin(self, username: str) -> None:
        if [a for a in await self.store.active_admins() if a != username] == []:
            raise Conflict("the last enabled admin must stay an enabled admin")

    # ---- logging in --------------------------------------------------------------------

    async def login(self, username: str, password: str, ip: str, user_agent: str) -> str:
        """Check a password and start a session; returns the session's cookie value.

        Refusals say only "wrong username or password" (no hint which). Failures slow down
        that account from that address, and that address on every account
        (server/auth/login_guard.py); never the account from elsewhere. Each lockout is audited.
        """
        username = normalize(username)
        guard = self.limits.login
        guard.check(username, ip)
        account = await self.store.account(username) if USERNAME_RE.match(username) else None
        ok = await self._verify(account.get("password_hash") if account else None, password)
        if not ok or account is None or account.get("disabled"):
            reason = "disabled" if ok and account else "bad_password"
            await self.audit.record(f"ip:{ip}", "staff.login_failed", username, reason=reason)
            for lockout in guard.failed(username, ip):
                await self.audit.record(f"ip:{ip}", "staff.login_locked", username, **lockout)
            raise Unauthorized("wrong username or password, or the account is disabled")
        guard.succeeded(username, ip)
        if self.hasher.check_needs_rehash(account["password_hash"]):
            digest = await asyncio.to_thread(self.hasher.hash, password)
            await self.store.update_account(username, {"password_hash": digest})
        token = secrets.token_urlsafe(32)
        now = utcnow()
        await self.store.insert_session(
            {
                "_id": session_digest(token),
                "username": username,
                "created_at": now,
                "expires_at": now + self.session_ttl,
                "ip": ip,
                "user_agent": user_agent[:200],
            }
        )
        await self.store.update_account(username, {"last_login": now})
        await self.audit.record(f"staff:{username}", "staff.login", username, ip=ip)
        return token

    async def _verify(self, digest: str | None, password: str) -> bool:
        # An unknown user costs one hash too, so timing does not tell which usernames exist.
        if digest is None:
            if self._dummy_hash is None:
                self._dummy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
            digest = self._dummy_hash
            password = password + "\x00never"
        if len(password) > forms.PASSWORD_MAX:
            return False
        try:
            return await asyncio.to_thread(self.hasher.verify, digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def session(self, token: str | None) -> dict | None:
        """The enabled account behind a session cookie's value, or None."""
        if not token:
            return None
        found = await self.store.session(session_digest(token))
        # TTL deletion is lazy, so an expired session is refused here too.
        if found is None or found["expires_at"] <= utcnow():
            return None
        account = await self.store.account(found["username"])
        if account is None or account.get("disabled"):
            return None
        account.pop("password_hash", None)
        return account

    async def logout(self, token: str, username: str) -> None:
        """End one session."""
        await self.store.delete_session(session_digest(token))
        await self.audit.record(f"staff:{username}", "staff.logout", username)


def normalize(username: str) -> str:
    """Usernames are case-insensitive: kept in lower case."""
    return username.strip().lower()
