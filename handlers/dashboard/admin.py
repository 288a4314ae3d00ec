"""Admin pages of the dashboard: API keys, staff accounts and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from tornado import web

from handlers.base import ID
from handlers.dashboard.base import PageHandler, admin_only
from server.app import schemas
from server.app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from server.dashboard import forms
from server.feed.render import api_key

USERNAME = r"([A-Za-z0-9][A-Za-z0-9._\-]{1,31})"


class ListPage(PageHandler):
    """An admin page listing records above a form that creates one (``_page`` renders it)."""

    async def _page(self, status: int = 200, **values) -> None:
        raise NotImplementedError

    @web.authenticated
    @admin_only
    async def get(self) -> None:
        """The records, and the empty form."""
        await self._page()


class ApiKeysHandler(ListPage):
    async def _page(self, status: int = 200, **values) -> None:
        keys = [api_key(r) for r in await self.services.api_keys.listing()]
        values.setdefault("errors", {})
        values.setdefault("values", {})
        self.render_page("api_keys.html", status, keys=keys, scopes=schemas.SCOPES, **values)

    @web.authenticated
    @admin_only
    async def post(self) -> None:
        """Create a key and show it this once."""
        try:
            form = self.form(schemas.ApiKeyIn(), lists=("scopes",))
        except ValidationFailed as exc:
            return await self._page(400, errors=exc.fields, values=self.raw_form())
        key, record = await self.services.api_keys.create(
            form["name"], form["scopes"], rate=form.get("rate")
        )
        await self.services.audit.record(
            self.actor,
            "api_key.create",
            record["_id"],
            name=form["name"],
            scopes=record["scopes"],
            rate=form.get("rate"),
        )
        await self._page(201, created={"key": key, **api_key(record)})


class ApiKeyRevokeHandler(PageHandler):
    @web.authenticated
    @admin_only
    async def post(self, key_id: str) -> None:
        """Revoke a key: it stops working on every node within the key cache's seconds."""
        record = await self.services.api_keys.revoke(key_id, self.actor, self.services.audit)
        if record is None:
            raise NotFound("no such API key")
        self.flash(f"The key {record.get('name')} was revoked.")
        self.redirect("/dashboard/api-keys")


class StaffHandler(ListPage):
    async def _page(self, status: int = 200, **values) -> None:
        accounts = await self.dashboard.staff.accounts()
        values.setdefault("errors", {})
        values.setdefault("values", {"role": "staff"})
        self.render_page("staff.html", status, accounts=accounts, roles=forms.STAFF_ROLES, **values)

    @web.authenticated
    @admin_only
    async def post(self) -> None:
        """Create a staff account."""
        values = self.raw_form()
        values.pop("password", None)
        try:
            form = self.form(forms.StaffIn())
            await self.dashboard.staff.create(
                form["username"], form["password"], form["role"], self.actor
            )
        except (ValidationFailed, Conflict) as exc:
            return await self._page(
                400, errors=exc.fields or {"_schema": [exc.message]}, values=values
            )
        self.flash(f"The account {form['username']} was created.")
        self.redirect("/dashboard/staff")


class StaffChangeHandler(PageHandler):
    @web.authenticated
    @admin_only
    async def post(self, username: str) -> None:
        """Change an account's role, or disable or enable it."""
        staff = self.dashboard.staff
        try:
            change = self.form(forms.StaffChangeIn())
            if change["action"] == "role":
                await staff.set_role(self.actor, username, change["role"])
            else:
                await staff.set_disabled(self.actor, username, change["action"] == "disable")
        except (ValidationFailed, Conflict, Forbidden) as exc:
            self.flash(f"Not changed: {exc.message}.")
        else:
            self.flash(f"The account {username.lower()} was changed.")
        self.redirect("/dashboard/staff")


class AuditHandler(PageHandler):
    @web.authenticated
    @admin_only
    async def get(self) -> None:
        """The audit log: who did what, newest first, with filters and paging."""
        values = self.raw_form()
        try:
            query = self.form(forms.AuditQuery())
        except ValidationFailed as exc:
            page = {"items": [], "next": None}
            return self.render_page("audit.html", 400, values=values, errors=exc.fields, page=page)
        page = await self.dashboard.audit_page(query)
        self.render_page("audit.html", values=values, errors={}, page=page)


class AuditExportHandler(PageHandler):
    @web.authenticated
    @admin_only
    async def get(self) -> None:
        """The audit entries matching the filters, as CSV."""
        query = self.form(forms.AuditQuery())
        body = await self.dashboard.audit_csv(query)
        await self.services.audit.record(self.actor, "audit.export", "", filters=_text(query))
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="audit-{stamp}.csv"')
        self.finish(body)


def _text(query: dict) -> dict:
    return {k: str(v) for k, v in query.items()}


default_handlers = [
    (r"/dashboard/api-keys", ApiKeysHandler),
    (rf"/dashboard/api-keys/{ID}/revoke", ApiKeyRevokeHandler),
    (r"/dashboard/staff", StaffHandler),
    (rf"/dashboard/staff/{USERNAME}", StaffChangeHandler),
    (r"/dashboard/audit", AuditHandler),
    (r"/dashboard/audit\.csv", AuditExportHandler),
]
