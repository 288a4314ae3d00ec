"""Where the service may send: push endpoints (and webhook URLs) on public addresses only.

A literal address in a URL is checked when it is given; a host name is checked when it is
resolved for sending, by the resolver the HTTP client connects with, so the address checked
is the address used (a name that resolves to a public address at subscribe time and to
127.0.0.1 later gains nothing) and subscribing does not wait on DNS.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from tornado.netutil import DefaultLoopResolver, Resolver

MAX_URL = 2048


class AddressRefused(OSError):
    """A host resolved to a loopback, private or otherwise non-public address."""


def is_public(address: str) -> bool:
    """True for a globally routable unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be sent to, or None if it may (literal addresses only)."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        return "not a URL"
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        return "must be an https URL"
    if not host or parts.username is not None or parts.password is not None:
        return "must be an https URL with a host and no user name"
    if allow_private:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return "must be on a public address"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: checked when it is resolved for sending
    return None if is_public(host) else "must be on a public address"


class PublicResolver(Resolver):
    """The loop's resolver, refusing names that resolve to non-public addresses."""

    def initialize(self, allow_private: bool = False) -> None:  # type: ignore[override]
        self.inner = DefaultLoopResolver()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, object]]:
        """Resolve ``host``; raise AddressRefused if any address is not public."""
        found = await self.inner.resolve(host, port, family)
        if not self.allow_private and not all(is_public(addr[0]) for _, addr in found):
            raise AddressRefused(f"{host} resolves to a non-public address")
        return found
