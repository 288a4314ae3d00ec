"""The dashboard's base handler: the session, Jinja rendering, security headers, errors.

Pages are rendered by Jinja2 with autoescaping on, through ``render_page`` only; every page
extends ``templates/base.html``. The session cookie is signed, HttpOnly, SameSite=Strict,
and Secure when the request came over HTTPS or ``NOTIFY_SECURE_COOKIES`` says a proxy
terminates TLS in front; every POST carries Tornado's XSRF token.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from marshmallow import Schema
from pymongo.errors import PyMongoError
from tornado import web

from handlers.base import BaseHandler
from server.app import schemas
from server.app.errors import (
    RETRY_AFTER_UNAVAILABLE,
    Forbidden,
    ServiceError,
    ValidationFailed,
    retry_after,
)
from server.app.metrics import METRICS
from server.app.node import Node
from server.app.timeutil import as_datetime, iso
from server.dashboard.service import Dashboard
from server.dashboard.staff import cookie_secret

log = logging.getLogger("notify.dashboard")

ROOT = Path(__file__).resolve().parents[2]
SESSION_COOKIE = "notify_session"
FLASH_COOKIE = "notify_flash"
LOGIN_URL = "/dashboard/login"


def app_settings(node: Node) -> dict[str, Any]:
    """The Application settings the dashboard needs (see handlers/routes.py)."""
    secure = node.settings.secure_cookies
    return {
        "cookie_secret": cookie_secret(node.settings),
        "xsrf_cookies": True,
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict", "secure": secure},
        "login_url": LOGIN_URL,
        "jinja": environment(ROOT / "templates"),
    }


@functools.cache
def environment(path: Path) -> Environment:
    """The Jinja environment: autoescape on for every template.

    One per process: it holds nothing of a node's, and compiling the templates again for
    every node (tests start hundreds) cost more than the rest of a dashboard page.
    """
    env = Environment(
        loader=FileSystemLoader(str(path)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["isotime"] = iso
    return env


def _when(value: Any) -> str:
    """A stored or ISO time as ``2026-11-25 14:03:00 UTC``."""
    if not value:
        return ""
    if isinstance(value, str) and "T" in value:
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    moment = as_datetime(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def admin_only(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A page only admins may open (after ``web.authenticated``)."""

    @functools.wraps(method)
    async def wrapper(self: PageHandler, *args: Any, **kwargs: Any) -> None:
        if self.staff is None or self.staff["role"] != "admin":
            raise Forbidden("this page is for admins")
        await method(self, *args, **kwargs)

    return wrapper


class PageHandler(BaseHandler):
    """A dashboard page: the signed-in staff member is ``self.staff`` (or None)."""

    staff: dict | None = None
    session_token: str | None = None

    @property
    def dashboard(self) -> Dashboard:
        return self.services.dashboard

    @property
    def actor(self) -> str:
        """Who the audit log says did it."""
        return f"staff:{self.staff['_id']}" if self.staff else "anonymous"

    def set_default_headers(self) -> None:
        host = self.request.host
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'",
        )
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        """Find the signed-in staff member (``get_current_user`` cannot await)."""
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=31)
        self.session_token = raw.decode() if raw else None
        if self.session_token:
            self.staff = await self.dashboard.staff.session(self.session_token)

    def get_current_user(self) -> dict | None:
        return self.staff

    @property
    def secure(self) -> bool:
        """Whether cookies get the Secure flag."""
        return self.request.protocol == "https" or self.config.secure_cookies

    def _set_private_cookie(self, name: str, value: str, path: str) -> None:
        """A signed session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS."""
        self.set_signed_cookie(
            name,
            value,
            expires_days=None,
            httponly=True,
            samesite="Strict",
            secure=self.secure,
            path=path,
        )

    def start_session(self, token: str) -> None:
        """Set the session cookie."""
        self._set_private_cookie(SESSION_COOKIE, token, "/")

    def end_session(self) -> None:
        """Clear the session cookie."""
        self.clear_cookie(SESSION_COOKIE, path="/", samesite="Strict", secure=self.secure)

    # ---- forms -------------------------------------------------------------------------

    def form(self, schema: Schema, lists: tuple[str, ...] = ()) -> dict:
        """The POSTed form (or the query of a GET), validated; ValidationFailed per field.

        Blank values count as not given; ``lists`` name fields that repeat (checkboxes).
        """
        source = self.request.body_arguments if self.request.method == "POST" else None
        source = source if source is not None else self.request.query_arguments
        data: dict[str, Any] = {}
        for name, values in source.items():
            if name == "_xsrf":
                continue
            texts = [v.decode("utf-8", "replace") for v in values]
            if name in lists:
                data[name] = [t for t in texts if t]
            elif len(texts) != 1:
                raise ValidationFailed("the form is not valid", {name: ["give it once"]})
            elif texts[0].strip():
                data[name] = texts[0]
        try:
            return schemas.load(schema, data, "the form is not valid")
        except ValidationFailed as err:
            raise ValidationFailed(err.message, _flatten(err.fields)) from None

    def raw_form(self) -> dict[str, str]:
        """The submitted values as typed (to show them again beside their errors)."""
        source = self.request.body_arguments or self.request.query_arguments
        return {k: v[-1].decode("utf-8", "replace") for k, v in source.items() if k != "_xsrf"}

    # ---- output ------------------------------------------------------------------------

    def flash(self, message: str) -> None:
        """A one-line notice shown on the next page (after a redirect)."""
        self._set_private_cookie(FLASH_COOKIE, message, "/dashboard")

    def _take_flash(self) -> str | None:
        raw = self.get_signed_cookie(FLASH_COOKIE, max_age_days=1)
        if raw is None:
            return None
        self.clear_cookie(FLASH_COOKIE, path="/dashboard")
        return raw.decode("utf-8", "replace")

    def render_page(self, template: str, status: int = 200, **values: Any) -> None:
        """Render a template with the shared variables and finish."""
        env: Environment = self.settings["jinja"]
        shared = {
            "staff": self.staff,
            "is_admin": bool(self.staff and self.staff["role"] == "admin"),
            "xsrf_token": self.xsrf_token.decode(),
            # Tornado builds this input itself with the token escaped: safe to mark as HTML.
            "xsrf_form_html": lambda: Markup(self.xsrf_form_html()),  # noqa: S704
            "static_url": self.static_url,
            "path": self.request.path,
            "flash": self._take_flash() if status < 400 else None,
        }
        html = env.get_template(template).render(**shared, **values)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = None
        if isinstance(exc, ServiceError):
            status_code = exc.status
            message = exc.message
            if getattr(exc, "retry_after", None) is not None:
                self.set_header("Retry-After", retry_after(exc.retry_after))
        elif isinstance(exc, PyMongoError):
            status_code, message = 503, "The database is unavailable. Try again in a moment."
            self.set_header("Retry-After", retry_after(RETRY_AFTER_UNAVAILABLE))
        elif isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.clear_header("Content-Type")
        try:
            self.render_page("error.html", status_code, code=status_code, message=message)
        except Exception:  # the error page itself failed: plain text, never a traceback
            log.exception("the error page failed")
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(f"{status_code} {self._reason}")

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, PyMongoError):
            METRICS.storage_errors.inc()
            log.warning("storage unavailable on %s %s", self.request.method, self.log_path)
        elif not isinstance(value, ServiceError | web.HTTPError):
            super().log_exception(typ, value, tb)


def _flatten(messages: dict) -> dict[str, list[str]]:
    """marshmallow's nested messages as one list of sentences per form field."""
    out: dict[str, list[str]] = {}
    for key, value in messages.items():
        if isinstance(value, dict):
            out[str(key)] = [f"{k}: {m}" for k, v in value.items() for m in _as_list(v)]
        else:
            out[str(key)] = _as_list(value)
    return out


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


class RootRedirect(web.RequestHandler):
    """``/``: the dashboard."""

    def get(self) -> None:
        self.redirect("/dashboard")


class DashboardNotFound(PageHandler):
    """An unknown page under /dashboard: the error page, not the API's JSON."""

    async def prepare(self) -> None:
        await super().prepare()
        raise web.HTTPError(404)
