"""Log lines: one JSON object each, with the request id, and credentials scrubbed.

The request id of the request being handled travels in a context variable, so every line
logged while handling it (the access line, a storage warning, a socket's close) carries
it. As a last line of defence, anything shaped like a token, an API key or a bearer
credential is replaced by ``[redacted]`` in every line, whatever logged it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import IO, Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# What an incoming X-Request-Id may look like; anything else is replaced by a fresh id.
_GOOD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # a JWT
    r"|nk_[A-Za-z0-9_-]{8,}"  # an API key
    r"|(?<=token=)[^&\s\"']+"  # a token in a query string
    r"|(?i:(?<=bearer )[^\s\"']+)"  # an Authorization header's credential
)
# Literal text that every match of ``_SECRETS`` contains (the bearer one in any case):
# most lines hold none of it, and looking for it is much cheaper than the regex scan.
_SECRET_MARKERS = ("eyJ", "nk_", "token=")
# LogRecord's own attributes; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Built once: json.dumps with arguments builds a new encoder on every call.
_to_json = json.JSONEncoder(default=str, ensure_ascii=False).encode


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-Id if it is a sane one, else a fresh random id."""
    if incoming and _GOOD_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)  # 32 hex digits, like a uuid4's, without building one


def redact(text: str) -> str:
    """``text`` with tokens, API keys and bearer credentials replaced."""
    if not any(marker in text for marker in _SECRET_MARKERS) and "bearer " not in text.lower():
        return text
    return _SECRETS.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "request_id" and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(_to_json(out))


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, also with the request id and scrubbed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        return redact(f"{line} [{rid}]" if rid else line)


def setup(level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) in ``fmt``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_notify", False):
            root.removeHandler(old)
    handler._notify = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The driver's command and connection logs quote whole documents (notification bodies)
    # at DEBUG: never below INFO, whatever the service's level.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, root.level))
    return handler
