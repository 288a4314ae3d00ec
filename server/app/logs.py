"""Log lines: one JSON object each, with the request id, and credentials scrubbed.

The request id of the request being handled travels in a context variable, so every line
logged while handling it (the access line, a storage warning, a socket's close) carries
it. As a last line of defence, anything shaped like a token, an API key, a cookie or a
credential header is replaced by ``[redacted]`` in every line, whatever logged it (Tornado's
own lines about malformed requests included). User ids in logged paths are pseudonyms
(``loggable_path``). docs/security.md states the policy.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# What an incoming X-Request-Id may look like; anything else is replaced by a fresh id.
_GOOD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # a JWT
    r"|nk_[A-Za-z0-9_-]{8,}"  # an API key
    r"|(?<=token=)[^&\s\"']+"  # a token in a query string
    r"|(?i:(?<=bearer )[^\s\"']+)"  # an Authorization header's credential
    # Tornado's signed cookie values (the dashboard session, the flash): "2|1:0|10:...|..."
    r"|2\|1:\d+\|\d+:\d+\|[^\s\"';]*"
    r"|(?<=_xsrf=)[^&;\s\"']+"  # the XSRF token, in a cookie or a form
    # Any header that carries a credential, quoted whole (whatever its scheme: Basic, ...).
    r"|(?i:(?<=cookie: )|(?<=authorization: )|(?<=api-key: )|(?<=token: ))[^\r\n]+"
    # Tornado's "Malformed HTTP message ... Invalid header value '...'": the value of a
    # header it could not read, whichever header that was (a Cookie with a control
    # character, an Authorization with a stray byte): never worth keeping.
    r"|(?:(?<=Invalid header value )|(?<=Invalid header name ))"
    r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)"
)
# Literal text that every match of ``_SECRETS`` contains (some in any case, in
# ``_SECRET_MARKERS_ANY_CASE``): most lines hold none of it, and looking for it is much
# cheaper than the regex scan.
_SECRET_MARKERS = ("eyJ", "nk_", "token=", "2|1:", "_xsrf=", "Invalid header")
_SECRET_MARKERS_ANY_CASE = ("bearer ", "cookie: ", "authorization: ", "api-key: ", "token: ")
# The user id in a path such as /v1/users/p-1001/notifications.
_USER_PATH = re.compile(r"^(/v1/users/)([^/?#]+)")
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
    """``text`` with tokens, API keys, cookies and every credential of a header replaced."""
    if not any(marker in text for marker in _SECRET_MARKERS):
        lower = text.lower()
        if not any(marker in lower for marker in _SECRET_MARKERS_ANY_CASE):
            return text
    return _SECRETS.sub("[redacted]", text)


def pseudonym_key(secret: str) -> bytes:
    """The key of user-id pseudonyms, derived from a secret every node shares."""
    return hmac.new(secret.encode(), b"notify: user ids in log lines", "sha256").digest()


def pseudonym(user_id: str, key: bytes) -> str:
    """A user id as log lines show it: ``~`` and 16 hex digits of a keyed hash.

    Keyed (HMAC-SHA256 with a secret of the service), so that nobody holding the logs can
    hash a list of record numbers or emails and look them up; the same user gives the same
    pseudonym on every node, so an operator can still follow one user's requests.
    """
    return "~" + hmac.new(key, user_id.encode("utf-8", "replace"), "sha256").hexdigest()[:16]


def loggable_path(path: str, key: bytes | None) -> str:
    """A request path for a log line: the user id in it replaced by its pseudonym.

    ``key`` None (``NOTIFY_LOG_USER_IDS=true``) keeps the path as it is.
    """
    if key is None or not path.startswith("/v1/users/"):
        return path
    return _USER_PATH.sub(lambda m: m[1] + pseudonym(unquote(m[2]), key), path, count=1)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "request_id" and not name.startswith("_"):
                out[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        # Each text redacted before it is quoted: a header's value runs to the end of its
        # line, which inside a JSON string would be the end of the whole object.
        return _to_json(out)


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
