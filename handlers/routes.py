"""The Tornado application: every handler module's ``default_handlers``, then the 404s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers import api, base, escalation, health, openapi, push, sse, webhooks
from handlers import socket as ws
from handlers.dashboard import admin as dashboard_admin
from handlers.dashboard import base as dashboard_base
from handlers.dashboard import pages as dashboard
from handlers.dashboard import socket as dashboard_ws
from handlers.dashboard import webhooks as dashboard_webhooks
from handlers.static import StaticFiles
from server.app import logs
from server.app.node import Node

access_log = logging.getLogger("notify.access")
ROOT = Path(__file__).resolve().parent.parent


def log_request(handler: web.RequestHandler) -> None:
    """One access line per request: method, path without its query (tokens!) and with a
    pseudonym for a user id, status, time."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):  # nothing below to build for a line not written
        return
    millis = 1000.0 * handler.request.request_time()
    access_log.log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        logs.loggable_path(handler.request.path, handler.settings["services"].log_key),
        millis,
        extra={"request_id": getattr(handler, "request_id", None)},
    )


def make_app(node: Node, **extra) -> web.Application:
    """The application serving one node's REST API, sockets and pages."""
    s = node.settings
    handlers = [*health.default_handlers, *api.default_handlers, *ws.default_handlers]
    handlers += sse.default_handlers + escalation.default_handlers
    handlers += openapi.default_handlers + webhooks.default_handlers
    handlers += push.default_handlers
    handlers += dashboard.default_handlers + dashboard_admin.default_handlers
    handlers += dashboard_webhooks.default_handlers
    handlers += dashboard_ws.default_handlers + dashboard.not_found_handlers
    handlers.append((r".*", base.NotFoundHandler))
    return web.Application(
        handlers,
        services=node,
        log_function=log_request,
        static_path=str(ROOT / "static"),
        static_handler_class=StaticFiles,
        template_path=str(ROOT / "templates"),
        websocket_ping_interval=s.ping_interval,
        websocket_ping_timeout=s.ping_timeout,
        websocket_max_message_size=s.max_frame_bytes,
        debug=s.debug,
        started=time.time(),
        **dashboard_base.app_settings(node),
        **extra,
    )


class Running:
    """A node serving HTTP on a port: what ``start_node`` returns and ``stop`` undoes."""

    def __init__(self, node: Node, server, port: int):
        self.node = node
        self.server = server
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, close sockets with 1001, then stop the node and MongoDB."""
        self.server.stop()
        self.node.hub.close_all(1001, "server shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.node.hub.emptied(), grace)
        await self.server.close_all_connections()
        await self.node.stop()


async def start_node(settings, uri: str, watch: bool = True, sockets=None) -> Running:
    """Build, start and serve one node; ``sockets`` (pre-bound) or ``settings.port``."""
    node = Node.build(settings, uri, watch=watch)
    await node.start()
    app = make_app(node)
    server = HTTPServer(
        app,
        max_body_size=settings.max_body_bytes * 4 + 65536,
        xheaders=settings.trust_proxy_headers,  # the client address for per-IP rate limits
    )
    sockets = sockets or bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    return Running(node, server, sockets[0].getsockname()[1])
