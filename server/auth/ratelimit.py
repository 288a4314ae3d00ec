"""Rate limits: token buckets per API key, client IP, socket, account; bounded memory.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each
request, frame or login attempt takes one. A limit with rate 0 is off. Buckets live in
this node's memory (a cluster of N nodes lets through up to N times a limit), keyed in a
least-recently-used order so that idle ones (refilled to full, so no different from a new
one) are evicted, and past ``max_keys`` the oldest are dropped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from math import ceil

from server.app.errors import RateLimited
from server.app.metrics import METRICS

# A socket past its frame limit gets an error frame per refused frame, up to this many
# (refilling at one a second); past that it is closed with 1008.
STRIKES_BURST = 10
STRIKES_RATE = 1.0


class Limiter:
    """Token buckets of one kind (say, REST per client IP), one bucket per key."""

    def __init__(self, kind: str, rate: float, burst: int, max_keys: int = 50000):
        self.kind = kind
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.max_keys = max(max_keys, 1)
        # After this long untouched, a bucket is full again: forgetting it changes nothing.
        self.idle = self.burst / self.rate if self.rate > 0 else 0.0
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when the limit is turned off (rate 0)."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float | None = None) -> float:
        """Take a token from ``key``'s bucket: 0.0 if allowed, else seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            self._buckets.move_to_end(key)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - bucket[0]) / self.rate
        self._evict(now)
        return wait

    def check(self, key: str) -> None:
        """Take a token or raise RateLimited (a 429 with Retry-After)."""
        wait = self.take(key)
        if wait:
            METRICS.rate_limited.labels(self.kind).inc()
            raise RateLimited(f"too many requests; retry in {ceil(wait)} s", wait)

    def forget(self, key: str) -> None:
        """Drop a key's bucket (it starts full again)."""
        self._buckets.pop(key, None)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest[1] < self.idle and len(buckets) <= self.max_keys:
                return
            buckets.popitem(last=False)


class Bucket:
    """One token bucket (a socket's own, so it needs no key and no dictionary)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> bool:
        """Take a token if there is one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FrameGate:
    """A socket's frame limit: allow, refuse with an error frame, or close if it persists."""

    __slots__ = ("frames", "strikes")

    def __init__(self, rate: float, burst: int):
        self.frames = Bucket(rate, float(max(burst, 1)))
        self.strikes = Bucket(STRIKES_RATE, float(STRIKES_BURST))

    def admit(self) -> str:
        """``"ok"``, ``"refuse"`` (send an error frame) or ``"close"`` (close with 1008)."""
        if self.frames.take():
            return "ok"
        METRICS.rate_limited.labels("socket_frames").inc()
        return "refuse" if self.strikes.take() else "close"


class OpenGate:
    """The frame limit of a socket when frames are not limited."""

    __slots__ = ()

    def admit(self) -> str:
        """Always ``"ok"``."""
        return "ok"


OPEN_GATE = OpenGate()


class RateLimits:
    """Every rate limit of one node, built from its settings."""

    def __init__(self, settings) -> None:
        s, keys = settings, settings.rate_limit_max_keys
        self.rest_key = Limiter("rest_key", s.rate_rest_key, s.rate_rest_key_burst, keys)
        self.rest_ip = Limiter("rest_ip", s.rate_rest_ip, s.rate_rest_ip_burst, keys)
        self.connect_ip = Limiter("connect_ip", s.rate_connect_ip, s.rate_connect_ip_burst, keys)
        self.login_account = Limiter(
            "login_account", s.rate_login_account, s.rate_login_account_burst, keys
        )
        self.login_ip = Limiter("login_ip", s.rate_login_ip, s.rate_login_ip_burst, keys)
        self.frame_rate, self.frame_burst = s.rate_socket_frames, s.rate_socket_frames_burst

    def frame_gate(self) -> FrameGate | OpenGate:
        """A socket's frame limit (made at its first frame: idle sockets cost nothing)."""
        if self.frame_rate <= 0:
            return OPEN_GATE
        return FrameGate(self.frame_rate, self.frame_burst)

    def check_login(self, username: str, ip: str) -> None:
        """Before checking a password: RateLimited if this address or account tried too often.

        The dashboard calls this ahead of every login attempt, and ``login_succeeded`` after
        a good one. The address is checked first, so a flood from one address cannot use up
        an account's attempts.
        """
        self.login_ip.check(ip)
        self.login_account.check(_account(username))

    def login_succeeded(self, username: str) -> None:
        """A good password: the account's failed attempts are forgiven (not the address's)."""
        self.login_account.forget(_account(username))


def _account(username: str) -> str:
    return username.strip().lower()[:200]
