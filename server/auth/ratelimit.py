"""Rate limits: token buckets per API key, token, address, socket; bounded memory.

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
from server.auth.login_guard import LoginGuard

# A socket past its frame limit gets an error frame per refused frame, up to this many
# (refilling at one a second); past that it is closed with 1008.
STRIKES_BURST = 10
STRIKES_RATE = 1.0


class Limiter:
    """Token buckets of one kind (say, REST per API key), one bucket per key."""

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

    def take(
        self,
        key: str,
        now: float | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> float:
        """Take a token from ``key``'s bucket: 0.0 if allowed, else seconds until one is there.

        ``rate`` and ``burst`` override the limit's own for this key (an API key's own rate).
        """
        rate = self.rate if rate is None else rate
        if rate <= 0:
            return 0.0
        burst = self.burst if burst is None else max(burst, 1.0)
        now = time.monotonic() if now is None else now
        bucket = self._refilled(key, now, rate, burst)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - bucket[0]) / rate
        self._evict(now)
        return wait

    def peek(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` could take a token (0.0: it can now), taking none."""
        bucket = self._buckets.get(key)
        if self.rate <= 0 or bucket is None:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def give(self, key: str) -> None:
        """Put back a token taken for something that turned out to be fine."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + 1.0)

    def check(self, key: str, rate: float | None = None, burst: float | None = None) -> None:
        """Take a token or raise RateLimited (a 429 with Retry-After)."""
        wait = self.take(key, rate=rate, burst=burst)
        if wait:
            raise self.refusal(wait)

    def refusal(self, wait: float) -> RateLimited:
        """The error for a request refused by this limit (counted in the metrics)."""
        METRICS.rate_limited.labels(self.kind).inc()
        return RateLimited(f"too many requests; retry in {ceil(wait)} s", wait)

    def forget(self, key: str) -> None:
        """Drop a key's bucket (it starts full again)."""
        self._buckets.pop(key, None)

    def _refilled(self, key: str, now: float, rate: float, burst: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [burst, now]
        else:
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            self._buckets.move_to_end(key)
        return bucket

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
    """Every rate limit of one node, built from its settings (docs/security.md says why each
    default is what it is).

    Per credential first: a request with a valid API key or token is limited by that
    credential alone, never by its address, because a whole clinic may sit behind one
    address. The per-address limits count only what carries no valid credential: requests
    without one or with a bad one, socket connects not (yet) authenticated, failed logins.
    """

    def __init__(self, settings) -> None:
        s, keys = settings, settings.rate_limit_max_keys
        self.rest_key = Limiter("rest_key", s.rate_rest_key, s.rate_rest_key_burst, keys)
        self.rest_token = Limiter("rest_token", s.rate_rest_token, s.rate_rest_token_burst, keys)
        self.rest_ip = Limiter("rest_ip", s.rate_rest_ip, s.rate_rest_ip_burst, keys)
        self.connect_user = Limiter(
            "connect_user", s.rate_connect_user, s.rate_connect_user_burst, keys
        )
        self.connect_ip = Limiter("connect_ip", s.rate_connect_ip, s.rate_connect_ip_burst, keys)
        login_ip = Limiter("login_ip", s.rate_login_ip, s.rate_login_ip_burst, keys)
        self.login = LoginGuard(
            login_ip,
            s.login_free_failures,
            s.login_delay_seconds,
            s.login_delay_max_seconds,
            keys,
        )
        self.frame_rate, self.frame_burst = s.rate_socket_frames, s.rate_socket_frames_burst

    def frame_gate(self) -> FrameGate | OpenGate:
        """A socket's frame limit (made at its first frame: idle sockets cost nothing)."""
        if self.frame_rate <= 0:
            return OPEN_GATE
        return FrameGate(self.frame_rate, self.frame_burst)

    def check_credential(self, kind: str, ident: str, rate: float | None = None) -> None:
        """A valid credential's own limit: per API key (``rate``: the key's own, if it has
        one; burst two seconds of it), else per token's user."""
        if kind == "api_key":
            burst = None if rate is None else max(2.0 * rate, 1.0)
            self.rest_key.check(ident, rate, burst)
        else:
            self.rest_token.check(ident)
