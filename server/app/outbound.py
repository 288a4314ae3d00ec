"""Outbound URLs (webhooks, push endpoints): https on a public address, checked twice.

A URL is checked when it is registered (scheme, form, a literal address) and the addresses
its host name resolves to are checked again when a request is sent, by the resolver the
HTTP client connects through: a name that resolved to a public address at registration and
to 10.0.0.5 later (DNS rebinding) still cannot reach the clinic's network.
``NOTIFY_OUTBOUND_ALLOW_PRIVATE=true`` (local development, tests) also allows ``http`` and
loopback or private addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from tornado.netutil import DefaultLoopResolver, Resolver

MAX_URL = 2048
# Names that never mean a public host, whatever a resolver says.
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")


class BlockedAddress(OSError):
    """A host that resolves to no address this service may call."""


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable unicast (not loopback, private, link-local)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why this URL may not be called, or None when it may (its name is checked at send time)."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number in range
    except ValueError:
        return "not a valid URL"
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        return "must be an https URL"
    host = parts.hostname
    if not host:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a fragment"
    if port == 0:
        return "not a valid port"
    if allow_private:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(LOCAL_SUFFIXES) or "." not in host:
            return "must be a public address"
        return None
    return None if is_public(host) else "must be a public address"


class PublicResolver(Resolver):
    """Resolves like the default resolver, then keeps only public addresses (unless allowed)."""

    def initialize(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self.inner = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, object]]:
        """The host's addresses that may be called; BlockedAddress if none may."""
        found = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return found
        allowed = [(fam, addr) for fam, addr in found if is_public(addr[0])]
        if not allowed:
            raise BlockedAddress(f"{host} resolves to no public address")
        return allowed
