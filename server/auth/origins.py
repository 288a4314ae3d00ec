"""Which browser Origins may use the service: one rule for the socket and for REST (CORS)."""

from __future__ import annotations

from urllib.parse import urlparse

# Long enough for any real Origin (scheme, host, port); a longer one is not echoed back.
MAX_ORIGIN = 255


def same_host(origin: str, host: str) -> bool:
    """True when the Origin names the host the request was sent to (its Host header)."""
    try:
        netloc = urlparse(origin).netloc
    except ValueError:  # e.g. "http://[::1": not a host at all
        return False
    return bool(netloc) and netloc.lower() == host.lower()


def allowed(origin: str, host: str, allow_list: frozenset[str]) -> bool:
    """An Origin in the allow-list, or any with "*"; with no list, only the same host."""
    if allow_list:
        return origin.rstrip("/") in allow_list or "*" in allow_list
    return same_host(origin, host)


def cross_origin(origin: str | None, host: str, allow_list: frozenset[str]) -> str | None:
    """The Origin to name in ``Access-Control-Allow-Origin``, or None: no CORS headers.

    None for a request without an Origin or from the service's own host (it needs no CORS),
    and for an Origin not allowed. Only a printable ASCII Origin is echoed (with "*", any
    caller's Origin would be): a header value with control characters cannot be sent.
    """
    if not origin or same_host(origin, host):
        return None
    if len(origin) > MAX_ORIGIN or not (origin.isascii() and origin.isprintable()):
        return None
    return origin if allowed(origin, host, allow_list) else None
