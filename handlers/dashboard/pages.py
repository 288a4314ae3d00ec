"""Dashboard pages for every staff member: login, overview, connections, compose, history,
the test client and one's own account. Admin pages are in ``dashboard_admin.py``."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from tornado import web

from handlers.base import ID
from handlers.dashboard.base import DashboardNotFound, PageHandler, RootRedirect
from server.app.errors import (
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    retry_after,
)
from server.app.timeutil import iso
from server.dashboard import compose, forms
from server.dashboard.staff import test_client_roles

LOCAL_PATH = re.compile(forms.LOCAL_PATH_PATTERN)
TEST_TOKEN_SECONDS = 300
COMPOSE_DEFAULTS = {"target": "user", "type": "custom", "priority": "normal"}


class LoginHandler(PageHandler):
    async def get(self) -> None:
        """The login form (or straight on, when already signed in)."""
        target = self.get_query_argument("next", "/dashboard")
        target = target if LOCAL_PATH.match(target) else "/dashboard"
        if self.staff is not None:
            return self.redirect(target)
        self.render_page("login.html", values={"next": target}, errors={})

    async def post(self) -> None:
        """Check the password; start a session, or say no (slower after repeated failures)."""
        values = self.raw_form()
        values.pop("password", None)
        try:
            form = self.form(forms.LoginIn())
            token = await self.dashboard.staff.login(
                form["username"],
                form["password"],
                self.request.remote_ip,
                self.request.headers.get("User-Agent", ""),
            )
        except ValidationFailed as exc:
            return self.render_page("login.html", 400, values=values, errors=exc.fields)
        except Unauthorized as exc:
            return self.render_page("login.html", 401, values=values, errors={}, error=exc.message)
        except RateLimited as exc:
            wait = retry_after(exc.retry_after)
            self.set_header("Retry-After", wait)
            error = f"Too many failed attempts. Try again in {wait} s."
            return self.render_page("login.html", 429, values=values, errors={}, error=error)
        self.start_session(token)
        self.redirect(form["next"])


class LogoutHandler(PageHandler):
    @web.authenticated
    async def post(self) -> None:
        """End this session."""
        await self.dashboard.staff.logout(self.session_token, self.staff["_id"])
        self.end_session()
        self.redirect("/dashboard/login")


class OverviewHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """Connections, users, sent and delivered, and a chart; kept live by the staff socket."""
        minutes = self.config.critical_ack_seconds / 60
        after = f"{minutes:g} minute{'s' if minutes != 1 else ''}"
        self.render_page(
            "overview.html", overview=await self.dashboard.overview(), ack_minutes=after
        )


class ConnectionsHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """Who is connected to this node; the staff socket keeps the list live."""
        query = self.form(forms.ConnectionsQuery())
        listing = self.dashboard.live.connections(query.get("user", ""))
        self.render_page("connections.html", listing=listing, user=query.get("user", ""))


class ComposeHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """The compose form."""
        self.render_page("compose.html", values=dict(COMPOSE_DEFAULTS), errors={}, outcome=None)

    @web.authenticated
    async def post(self) -> None:
        """Validate with the API's schemas, send, and show the outcome."""
        values = {**COMPOSE_DEFAULTS, **self.raw_form()}
        try:
            form = self.form(forms.ComposeForm())
            outcome = await compose.send(self.dashboard, form, self.actor)
        except ValidationFailed as exc:
            return self.render_page(
                "compose.html", 400, values=values, errors=exc.fields, outcome=None
            )
        kept = {k: values[k] for k in ("target", "type", "priority") if k in values}
        self.render_page("compose.html", values=kept, errors={}, outcome=outcome)


class HistoryHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """Notifications with filters, their delivery and read state, and paging."""
        values = self.raw_form()
        try:
            query = self.form(forms.HistoryQuery())
        except ValidationFailed as exc:
            page = {"items": [], "next": None}
            return self.render_page(
                "history.html", 400, values=values, errors=exc.fields, page=page
            )
        page = await self.dashboard.history(query)
        older = None
        if page["next"]:
            kept = {k: v for k, v in values.items() if k != "before" and v}
            older = "/dashboard/history?" + urlencode({**kept, "before": page["next"]})
        self.render_page("history.html", values=values, errors={}, page=page, older=older)


class NotificationPage(PageHandler):
    @web.authenticated
    async def get(self, notification_id: str) -> None:
        """One notification (or a scheduled one) with its timeline (CONTRACT §8)."""
        detail = await self.dashboard.notification(notification_id)
        self.render_page("notification.html", detail=detail)


class CancelHandler(PageHandler):
    @web.authenticated
    async def post(self, notification_id: str) -> None:
        """Cancel a scheduled notification not yet sent."""
        try:
            await self.services.notifications.cancel(notification_id)
        except (NotFound, Conflict) as exc:
            self.flash(exc.message)
        else:
            await self.services.audit.record(self.actor, "notification.cancel", notification_id)
            self.flash("The scheduled notification was cancelled.")
        self.redirect("/dashboard/history?status=scheduled")


class AcknowledgeHandler(PageHandler):
    @web.authenticated
    async def post(self, notification_id: str) -> None:
        """Acknowledge a notification on its user's behalf, with a note (audited)."""
        try:
            form = self.form(forms.AcknowledgeForm())
            await self.dashboard.acknowledge(notification_id, self.actor, form["note"])
        except ValidationFailed as exc:
            self.flash("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items()))
            form = {"next": "/dashboard"}
        except (NotFound, Conflict) as exc:
            self.flash(exc.message)
        else:
            self.flash("Acknowledged on the user's behalf.")
        self.redirect(form["next"])


class TestClientHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """Watch one user's real socket: frames as they arrive; send ack, read, ping."""
        self.render_page("test_client.html", token_seconds=TEST_TOKEN_SECONDS)


class TestTokenHandler(PageHandler):
    @web.authenticated
    async def post(self) -> None:
        """Mint a short-lived connection token for the test client page (JSON)."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        try:
            req = self.form(forms.TestTokenIn())
            allowed = test_client_roles(self.staff["role"])
            if not set(req["roles"]) <= allowed:
                await self.services.audit.record(
                    self.actor, "test_client.token_refused", req["user_id"], roles=req["roles"]
                )
                message = f"only {', '.join(sorted(allowed))}: a patient's or your own role"
                raise ValidationFailed("the form is not valid", {"roles": [message]})
        except ValidationFailed as exc:
            self.set_status(400)
            return self.finish(json.dumps({"error": exc.message, "fields": exc.fields}))
        token, expires = self.services.tokens.mint(req["user_id"], req["roles"], TEST_TOKEN_SECONDS)
        await self.services.audit.record(
            self.actor, "test_client.token", req["user_id"], roles=req["roles"]
        )
        self.finish(json.dumps({"token": token, "expires_at": iso(expires), **req}))


class AccountHandler(PageHandler):
    @web.authenticated
    async def get(self) -> None:
        """One's own account, and the form to change one's password."""
        self.render_page("account.html", errors={})

    @web.authenticated
    async def post(self) -> None:
        """Change one's own password; every session (this one too) ends."""
        try:
            form = self.form(forms.PasswordChangeIn())
            await self.dashboard.staff.change_password(
                self.staff["_id"], form["current"], form["new"]
            )
        except ValidationFailed as exc:
            return self.render_page("account.html", 400, errors=exc.fields)
        self.end_session()
        self.flash("Your password was changed. Log in with the new one.")
        self.redirect("/dashboard/login")


default_handlers = [
    (r"/", RootRedirect),
    (r"/dashboard/?", OverviewHandler),
    (r"/dashboard/login", LoginHandler),
    (r"/dashboard/logout", LogoutHandler),
    (r"/dashboard/connections", ConnectionsHandler),
    (r"/dashboard/compose", ComposeHandler),
    (r"/dashboard/history", HistoryHandler),
    (rf"/dashboard/history/{ID}", NotificationPage),
    (rf"/dashboard/history/{ID}/cancel", CancelHandler),
    (rf"/dashboard/notifications/{ID}/acknowledge", AcknowledgeHandler),
    (r"/dashboard/test-client", TestClientHandler),
    (r"/dashboard/test-client/token", TestTokenHandler),
    (r"/dashboard/account", AccountHandler),
]

# Appended after the admin pages and the staff socket (see handlers/routes.py).
not_found_handlers = [(r"/dashboard/.*", DashboardNotFound)]
