"""Which browser Origins may use the service: one rule for both sockets and for REST (CORS).

An Origin is compared whole: scheme, host and port. A page served over ``https`` is not the
same origin as one over ``http`` on the same host, so a plain-http page (which anyone on
the path can rewrite) cannot open a socket meant for the https one. A malformed Origin is
never allowed.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

# Long enough for any real Origin (scheme, host, port); a longer one is not an Origin.
MAX_ORIGIN = 255
SCHEMES = ("http", "https")


def parse(origin: str) -> str | None:
    """``scheme://host[:port]`` of a well-formed Origin, lower-cased; None for anything else.

    ``null`` (a sandboxed page, a file), control characters, a path, a query, user info, a
    bad port or an unclosed IPv6 bracket are all malformed.
    """
    if not origin or len(origin) > MAX_ORIGIN or not (origin.isascii() and origin.isprintable()):
        return None
    try:
        parts = urlsplit(origin.rstrip("/"))
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:  # e.g. "http://[::1": not a host at all
        return None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname or parts.path or parts.query:
        return None
    if parts.fragment or "@" in parts.netloc or " " in origin:
        return None
    return f"{scheme}://{parts.netloc.lower()}"


def same_host(origin: str, host: str, scheme: str) -> bool:
    """True when the Origin is the very host and scheme the request was sent to."""
    return parse(origin) == f"{scheme.lower()}://{host.lower()}"


@functools.lru_cache(maxsize=16)
def normalize_list(values: frozenset[str]) -> frozenset[str]:
    """The allow-list as ``parse`` writes Origins ("*" kept; malformed entries dropped)."""
    return frozenset(o if o == "*" else parse(o) for o in values) - {None}


def allowed(origin: str, host: str, scheme: str, allow_list: frozenset[str]) -> bool:
    """A well-formed Origin in the allow-list (any with "*"); with no list, the same host."""
    parsed = parse(origin)
    if parsed is None:
        return False
    if allow_list:
        return "*" in allow_list or parsed in normalize_list(allow_list)
    return parsed == f"{scheme.lower()}://{host.lower()}"


def socket_allowed(
    origin: str | None, host: str, scheme: str, allow_list: frozenset[str], cookies: bool
) -> bool:
    """The check of both sockets, before the upgrade.

    The patients' socket (a token in the URL or the first frame) may come without an Origin
    (an app, a backend) and from the allow-list's pages. The staff socket rides the session
    cookie, which any page the browser shows would send: it needs an Origin, this host's own.
    """
    if origin is None:
        return not cookies
    return allowed(origin, host, scheme, frozenset() if cookies else allow_list)


def cross_origin(
    origin: str | None, host: str, scheme: str, allow_list: frozenset[str]
) -> str | None:
    """The Origin to name in ``Access-Control-Allow-Origin``, or None: no CORS headers.

    None for a request without an Origin or from the service's own host (it needs no CORS),
    and for an Origin not allowed or malformed (with "*", any caller's Origin would be
    echoed: only a well-formed one, which is printable ASCII, can be sent back).
    """
    if not origin or same_host(origin, host, scheme):
        return None
    return origin if allowed(origin, host, scheme, allow_list) else None
