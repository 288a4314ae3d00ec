"""Every setting of the service, declared once: name, type, default and one line of help.

Values come from the environment (``NOTIFY_<NAME>``, plus ``MONGODB_URI``) when
``Settings.from_env()`` is called; nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any


def setting(default: Any, help: str, env: str | None = None) -> Any:
    """Declare one setting with its default, its help line and (optionally) its variable."""
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with ``Settings.from_env()``."""

    env: str = setting("development", "development or production (production demands a secret)")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(7556, "HTTP and WebSocket port")
    node_id: str = setting("", "this node's id, distinct per node (default: host-port)")
    heartbeat_seconds: float = setting(5.0, "seconds between a node's heartbeats in MongoDB")
    node_timeout_seconds: float = setting(
        15.0, "a node silent this long is dead: its users stop counting as online"
    )
    direct_delivery: bool = setting(
        True, "deliver this node's own notifications in-process, not only via the change stream"
    )
    bus_poll_seconds: float = setting(
        0.025, "pause after an empty change-stream poll answered at once (the embedded server)"
    )
    bus_poll_max_seconds: float = setting(
        0.2, "the longest that pause grows to while nothing comes (the embedded server)"
    )
    mongodb_uri: str = setting("", "MongoDB URI; empty starts the embedded server", "MONGODB_URI")
    mongodb_db: str = setting("notify", "database name")
    data_dir: str = setting("./data", "folder of the embedded database and the dev token secret")
    mongodb_timeout_ms: int = setting(3000, "server selection and socket timeout for MongoDB")
    token_secret: str = setting("", "HS256 secret of connection tokens (required in production)")
    token_ttl_seconds: int = setting(3600, "default lifetime of a minted connection token")
    token_max_ttl_seconds: int = setting(86400, "longest lifetime POST /v1/tokens will mint")
    allowed_origins: str = setting(
        "", "comma-separated Origins allowed on sockets and REST (CORS); empty: same host"
    )
    ping_interval: float = setting(20.0, "seconds between WebSocket pings")
    ping_timeout: float = setting(
        20.0, "seconds without a pong before a socket is dropped (at most the ping interval)"
    )
    auth_timeout: float = setting(10.0, "seconds a socket may take to send its auth frame")
    sse_keepalive_seconds: float = setting(
        15.0, "seconds between the comment lines that keep an SSE stream open"
    )
    max_frame_bytes: int = setting(65536, "largest client frame; larger closes with 1009")
    max_body_bytes: int = setting(1048576, "largest REST request body; larger is a 413")
    max_connections: int = setting(18000, "socket cap for this node; past it, close 1013")
    max_connections_per_user: int = setting(20, "socket cap per user on this node")
    send_buffer_bytes: int = setting(
        1048576, "per-socket unsent bytes before a slow reader is dropped"
    )
    replay_limit: int = setting(500, "most notifications replayed on reconnect")
    replay_window_bytes: int = setting(
        67108864, "memory for recent notifications that answer replays without a database read"
    )
    retention_days: int = setting(90, "days a notification is kept (TTL index) after it expires")
    audit_retention_days: int = setting(365, "days audit entries are kept (TTL index)")
    critical_ack_seconds: int = setting(
        300, "seconds before the dashboard lists a notification nobody acknowledged (§8)"
    )
    schedule_poll_seconds: float = setting(
        1.0, "longest a node sleeps before looking for due scheduled notifications"
    )
    schedule_lease_seconds: float = setting(
        30.0, "how long a node's claim on due scheduled notifications lasts if it dies"
    )
    api_key_cache_seconds: float = setting(5.0, "how long a node trusts a looked-up API key")
    outbound_allow_private: bool = setting(
        False, "let webhooks and push use http and loopback or private addresses (dev, tests)"
    )
    webhook_retry_seconds: str = setting(
        "5,300,1800,7200,18000,36000",
        "comma-separated delays before each webhook retry (one attempt plus one per entry)",
    )
    webhook_timeout_seconds: float = setting(
        10.0, "seconds a webhook endpoint has to answer 2xx before the attempt failed"
    )
    webhook_concurrency: int = setting(4, "webhook requests in flight at once per endpoint")
    webhook_cache_seconds: float = setting(
        2.0, "how long a node trusts its list of webhooks (another node's change shows after)"
    )
    webhook_retention_days: int = setting(30, "days a webhook delivery is kept (TTL index)")
    idempotency_in_flight_seconds: float = setting(
        60.0, "an Idempotency-Key's first request unfinished this long may be taken over"
    )
    metrics_public: bool = setting(True, "serve /metrics without credentials")
    # Rate limits: tokens per second and burst per bucket; a rate of 0 turns a limit off.
    # Defaults bite within a second of a flood on one node; docs/security.md gives each
    # one's reason. The benchmarks set their own (bench/service.py).
    rate_rest_key: float = setting(
        25.0, "REST requests per second per API key (a key's own --rate overrides it)"
    )
    rate_rest_key_burst: int = setting(50, "REST requests in a burst per API key")
    rate_rest_token: float = setting(10.0, "REST requests per second per connection token's user")
    rate_rest_token_burst: int = setting(50, "REST requests in a burst per token's user")
    rate_rest_ip: float = setting(
        10.0, "REST requests per second per address without a valid credential (none, or bad)"
    )
    rate_rest_ip_burst: int = setting(50, "such requests in a burst per address")
    rate_connect_user: float = setting(2.0, "socket connects per second per token's user")
    rate_connect_user_burst: int = setting(20, "socket connects in a burst per token's user")
    rate_connect_ip: float = setting(
        20.0, "socket connects per second per address without a valid token at the upgrade"
    )
    rate_connect_ip_burst: int = setting(100, "such socket connects in a burst per address")
    rate_socket_frames: float = setting(100.0, "client frames per second per socket")
    rate_socket_frames_burst: int = setting(1000, "client frames in a burst per socket")
    login_free_failures: int = setting(
        5, "wrong dashboard passwords per account and address before each next one waits"
    )
    login_delay_seconds: float = setting(
        1.0, "first wait after those failures; it doubles with each further one (0: off)"
    )
    login_delay_max_seconds: float = setting(
        900.0, "longest wait per account and address; that long without failure forgives"
    )
    rate_login_ip: float = setting(
        0.05, "failed dashboard logins per second per address, across accounts"
    )
    rate_login_ip_burst: int = setting(20, "failed dashboard logins in a burst per address")
    rate_limit_max_keys: int = setting(50000, "most buckets one limit keeps (idle ones go first)")
    trust_proxy_headers: bool = setting(
        False, "take the client address from X-Forwarded-For / X-Real-Ip (behind a proxy)"
    )
    storage_timeout: float = setting(
        5.0, "seconds a request (or a write) may wait for MongoDB before it answers 503"
    )
    log_format: str = setting("json", "json (one object a line) or text")
    log_user_ids: bool = setting(
        False, "write user ids in logged paths as they are (default: a keyed-hash pseudonym)"
    )
    cookie_secret: str = setting("", "signs dashboard session cookies (required in production)")
    secure_cookies: bool = setting(
        False, "mark dashboard cookies Secure (set it when served over HTTPS behind a proxy)"
    )
    staff_session_hours: float = setting(12.0, "how long a dashboard login lasts")
    staff_recheck_seconds: float = setting(
        60.0, "how often an open staff socket checks that its session still holds"
    )
    # Web Push (CONTRACT §6, docs/push.md). Times are settings so that tests can scale them.
    push_grace_seconds: float = setting(
        10.0, "seconds a notification waits for a socket's ack before it is pushed (0: at once)"
    )
    push_attempts: int = setting(5, "most attempts of one push to one device (429 and 5xx retry)")
    push_retry_seconds: float = setting(
        2.0, "first delay before retrying a push; doubles each time (Retry-After wins if longer)"
    )
    push_ttl_seconds: int = setting(
        86400, "how long a push service keeps a push for an offline device (without expires_at)"
    )
    push_content: str = setting(
        "minimal", "minimal (type's default title only) or full (adds the title and message)"
    )
    push_sweep_seconds: float = setting(
        1.0, "how often a node looks for notifications whose grace period has passed"
    )
    push_timeout_seconds: float = setting(10.0, "seconds one request to a push service may take")
    push_concurrency: int = setting(32, "requests in flight at once to one push service")
    vapid_subject: str = setting(
        "", "mailto: or https: contact in every VAPID JWT (required outside development)"
    )
    vapid_private_key: str = setting(
        "", "VAPID private key (base64url, 32 bytes); empty: made once and kept in MongoDB"
    )
    log_level: str = setting("INFO", "log level")
    debug: bool = setting(False, "Tornado debug mode (never in production)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from the environment, then apply explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env") or f"NOTIFY_{f.name.upper()}"
            if name in environ:
                values[f.name] = _parse(f.type, environ[name], name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def production(self) -> bool:
        """True when running in production mode."""
        return self.env == "production"

    @property
    def origins(self) -> frozenset[str]:
        """The allow-list of socket Origins."""
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @property
    def webhook_retries(self) -> tuple[float, ...]:
        """The delays before each webhook retry, in seconds (a malformed list stops start-up)."""
        parts = [p.strip() for p in self.webhook_retry_seconds.split(",") if p.strip()]
        try:
            delays = tuple(float(p) for p in parts)
        except ValueError:
            delays = (-1.0,)
        if len(delays) > 20 or any(not 0 <= d <= 7 * 86400 for d in delays):
            raise SystemExit(
                f"setting NOTIFY_WEBHOOK_RETRY_SECONDS: cannot read {self.webhook_retry_seconds!r}"
                " as up to 20 comma-separated delays of 0 to 604800 seconds"
            )
        return delays

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def _parse(kind: str, raw: str, name: str) -> Any:
    kind = kind.split("|")[0].strip()
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise SystemExit(f"setting {name}: cannot read {raw!r} as {kind}") from None


def describe() -> list[tuple[str, str, Any, str]]:
    """(variable, type, default, help) of every setting, for the README and --help."""
    rows = []
    for f in dataclasses.fields(Settings):
        name = f.metadata.get("env") or f"NOTIFY_{f.name.upper()}"
        rows.append((name, str(f.type), f.default, f.metadata["help"]))
    return rows


def print_table() -> None:
    """Print the settings as the README's Markdown table."""
    print("| variable | type | default | what it sets |")
    print("|---|---|---|---|")
    for name, kind, default, text in describe():
        print(f"| `{name}` | {kind} | `{default!r}` | {text} |")
