"""The staff socket ``/dashboard/ws``: the overview and the connection list, live.

Only a signed-in staff member's browser may open it: the session cookie is checked before
the upgrade (401 without one), the Origin must be this very host (a page elsewhere cannot
ride the cookie; server/auth/origins.py, the same check as the patients' socket), and the session
is checked again every ``NOTIFY_STAFF_RECHECK_SECONDS``, so a logout, or an account disabled,
deleted or given another role, closes it. The socket only passes things on:
``server.dashboard.activity.LiveFeed`` decides what to send.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from marshmallow import ValidationError
from tornado import websocket
from tornado.ioloop import PeriodicCallback

from handlers.dashboard.base import SESSION_COOKIE
from server.app.errors import envelope
from server.app.node import Node
from server.auth import origins
from server.dashboard import forms

log = logging.getLogger("notify.dashboard")

POLICY = 1008


class DashboardSocket(websocket.WebSocketHandler):
    """One staff browser tab watching the overview or the connection list."""

    user_filter = ""
    staff: dict | None = None
    _recheck: PeriodicCallback | None = None

    @property
    def services(self) -> Node:
        return self.settings["services"]

    def check_origin(self, origin: str | None) -> bool:
        """Only pages of this host: the session cookie must not work from anywhere else."""
        request = self.request
        return origins.socket_allowed(
            origin, request.host, request.protocol, frozenset(), cookies=True
        )

    def _token(self) -> str | None:
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=31)
        return raw.decode() if raw else None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse a missing or ended session (401) and other Origins (403) before upgrading."""
        if not self.check_origin(self.request.headers.get("Origin")):
            return self._refuse(403, "this Origin is not allowed")
        self.staff = await self.services.dashboard.staff.session(self._token())
        if self.staff is None:
            return self._refuse(401, "log in to the dashboard first")
        await super().get(*args, **kwargs)

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        code = "forbidden" if status == 403 else "unauthorized"
        self.finish(json.dumps(envelope(code, message)))

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start receiving the live feed; re-check the session every minute."""
        self.services.dashboard.live.add(self)
        every = self.services.settings.staff_recheck_seconds * 1000
        self._recheck = PeriodicCallback(self._check_session, every)
        self._recheck.start()

    async def _check_session(self) -> None:
        if await self.services.dashboard.staff.session(self._token()) is None:
            self.close(POLICY, "the session has ended")

    def on_message(self, message: str | bytes) -> None:
        """The one client frame: a filter for the connection list."""
        try:
            frame = forms.load_dashboard_frame(message)
        except ValidationError as err:
            return self.send_json(
                {
                    "type": "error",
                    "code": "bad_frame",
                    "message": "not valid",
                    "fields": err.messages,
                }
            )
        self.user_filter = frame["user"].strip()
        self.services.dashboard.live.refresh(self)

    def send_json(self, message: dict) -> None:
        """Send a message unless the socket is gone; a slow tab misses updates, never grows."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        pending = getattr(self, "_pending", None)
        if pending is not None and not pending.done() and message.get("type") == "overview":
            return  # the next overview supersedes this one
        self._pending = self.write_message(json.dumps(message, ensure_ascii=False))
        self._pending.add_done_callback(_quiet)

    def on_close(self) -> None:
        """Stop the feed and the session check; drop references."""
        self.services.dashboard.live.remove(self)
        if self._recheck is not None:
            self._recheck.stop()
            self._recheck = None


def _quiet(fut: Any) -> None:
    fut.exception()  # a write to a tab that closed meanwhile is not an error


default_handlers = [(r"/dashboard/ws", DashboardSocket)]
