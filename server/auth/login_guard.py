"""Dashboard logins: progressive delays per (account, address), a failure limit per address.

A wrong password slows down only the place it came from: the pair of that account and that
address waits after a few failures (1 s, then 2, 4, ... up to a cap), and an address that
fails on many accounts (password spraying) is refused for a while. Nothing is kept per
account alone, so nobody can lock an account for its owner at another address. Every
lockout is returned to the caller for the audit log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

from server.app.errors import RateLimited
from server.app.metrics import METRICS


class Limit(Protocol):
    """What the guard needs of a token bucket limit (server/auth/ratelimit.py's Limiter)."""

    def take(self, key: str) -> float: ...

    def peek(self, key: str) -> float: ...

    def refusal(self, wait: float) -> RateLimited: ...


class LoginGuard:
    """Decides whether a login attempt may be checked, and learns from its outcome."""

    def __init__(
        self,
        address: Limit,
        free_failures: int,
        delay: float,
        max_delay: float,
        max_keys: int = 50000,
        clock=time.monotonic,
    ):
        self.address = address  # failed logins per address, across accounts
        self.free_failures = max(free_failures, 0)
        self.delay, self.max_delay = delay, max(max_delay, delay)
        self.max_keys = max(max_keys, 1)
        self.clock = clock
        # (account, address) -> [consecutive failures, refused until, last failure]
        self._pairs: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when delays are off (a delay of 0)."""
        return self.delay > 0

    def check(self, username: str, ip: str) -> None:
        """RateLimited if this address, or this account from this address, must wait."""
        now = self.clock()
        pair = self._pairs.get((account(username), ip))
        if pair is not None and pair[1] > now:
            METRICS.rate_limited.labels("login_pair").inc()
            raise RateLimited("too many failed attempts; try again later", pair[1] - now)
        wait = self.address.peek(ip)
        if wait:
            raise self.address.refusal(wait)

    def failed(self, username: str, ip: str) -> list[dict[str, Any]]:
        """Count a wrong password; the lockouts it starts (for the audit log), if any."""
        now, key = self.clock(), (account(username), ip)
        self._forget_idle(now)
        pair = self._pairs.pop(key, None) or [0, 0.0, now]
        self._pairs[key] = pair  # the most recent last
        pair[0] += 1
        pair[2] = now
        lockouts = []
        over = int(pair[0]) - self.free_failures
        if self.enabled and over > 0:
            seconds = min(self.delay * 2 ** min(over - 1, 40), self.max_delay)
            pair[1] = now + seconds
            lockouts.append(
                {"scope": "account_address", "failures": int(pair[0]), "seconds": seconds}
            )
        self.address.take(ip)
        if self.address.peek(ip):  # that failure used up the address's last attempt
            lockouts.append({"scope": "address", "seconds": round(self.address.peek(ip), 1)})
        return lockouts

    def succeeded(self, username: str, ip: str) -> None:
        """The right password: this pair starts afresh (the address's failures stay)."""
        self._pairs.pop((account(username), ip), None)

    def _forget_idle(self, now: float) -> None:
        # Pairs are kept in the order of their last failure. One quiet for the longest delay
        # (and so no longer waiting) starts afresh; past max_keys the oldest go anyway.
        pairs = self._pairs
        while pairs:
            oldest = next(iter(pairs.values()))
            stale = now - oldest[2] >= self.max_delay and oldest[1] <= now
            if not stale and len(pairs) < self.max_keys:
                return
            pairs.popitem(last=False)


def account(username: str) -> str:
    """Usernames compare as the dashboard stores them: trimmed, lower case."""
    return username.strip().lower()[:200]
