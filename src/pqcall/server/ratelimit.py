"""Token-bucket rate limits keyed by a string (a client address or an account), sans-I/O.

Each key owns a bucket holding up to ``burst`` tokens that refills at ``rate_per_s``
tokens per second; a request costs ``cost`` tokens and is allowed only if the bucket
holds that many. A refused request consumes nothing, and its :class:`RateDecision`
says exactly how long until it would be allowed (``retry_after_s``), which
:func:`retry_after_header` turns into an HTTP ``Retry-After`` value (RFC 9110
section 10.2.3) for a 429 reply.

Time is a parameter (``now``, seconds on any monotonic clock); nothing here reads a
clock, so the same limiter runs under a fake clock in tests.

Memory is bounded: a key whose bucket has refilled to full is indistinguishable from
a key never seen, so it is forgotten; and at most ``max_keys`` keys are kept. When
more distinct keys are active at once than that, the least recently used key is
evicted and starts again with a full bucket. That makes the cap a trade (memory
against leniency for a client spreading over very many keys), so size it well above
the expected active set; :func:`client_key` groups IPv6 clients by /64 so one host
cannot mint keys from its own prefix.

Example (one limiter per app; in a route or middleware)::

    per_ip = RateLimiter(PER_IP_LIMIT)
    ...
    decision = per_ip.check(client_key(request.client.host), now=loop.time())
    if not decision.allowed:
        return Response(status_code=429,
                        headers={"Retry-After": retry_after_header(decision.retry_after_s)})
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from pqcall.exceptions import LocalProtocolError

# a little slack for floating-point refill, so waiting exactly retry_after_s is enough
TOKEN_EPSILON = 1e-9
IPV6_CLIENT_PREFIX_BITS = 64  # one IPv6 site or host usually owns a whole /64


@dataclass(frozen=True, slots=True)
class RateLimit:
    """How fast a key may go: a sustained rate and the burst allowed above it."""

    rate_per_s: float
    """Tokens added per second (the sustained request rate)."""
    burst: float
    """Most tokens a bucket holds (the largest burst after an idle period)."""

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or not math.isfinite(self.rate_per_s):
            raise LocalProtocolError(f"rate must be a positive number, not {self.rate_per_s}")
        if not self.burst >= 1 or not math.isfinite(self.burst):
            raise LocalProtocolError(f"burst must be at least 1, not {self.burst}")

    @property
    def refill_s(self) -> float:
        """Seconds for an empty bucket to refill completely."""
        return self.burst / self.rate_per_s


# defaults (sustained rate, burst)
PER_IP_LIMIT = RateLimit(rate_per_s=20.0, burst=40.0)
PER_ACCOUNT_LIMIT = RateLimit(rate_per_s=10.0, burst=20.0)
# failed logins per client address: 5 a minute (a valid signature is never refused by it)
LOGIN_FAILURES_PER_ADDRESS_LIMIT = RateLimit(rate_per_s=5.0 / 60.0, burst=5.0)
MAX_KEYS = 100_000  # about 10 MB of buckets at most
UNKNOWN_CLIENT = "unknown"  # the key of a request without a peer address


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to one :meth:`RateLimiter.check`."""

    allowed: bool
    """Whether the request may go ahead (its cost was taken from the bucket)."""
    retry_after_s: float
    """Seconds until the same request would be allowed; 0.0 when allowed."""


class TokenBucket:
    """One token bucket; starts full. The building block of :class:`RateLimiter`.

    Args:
        limit: the rate and burst.
        now: the time the bucket is created (it is full at that time).
    """

    __slots__ = ("_last_s", "_limit", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit  # rate and capacity
        self._last_s = now  # when tokens was last brought up to date
        self.tokens = limit.burst  # tokens available at _last_s

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill (a clock going backwards adds none)."""
        elapsed = now - self._last_s
        if elapsed > 0:
            self.tokens = min(self._limit.burst, self.tokens + elapsed * self._limit.rate_per_s)
            self._last_s = now

    def wait_s(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are available (0.0 if they are now; inf if never).

        Call :meth:`refill` first.
        """
        missing = cost - self.tokens - TOKEN_EPSILON
        if missing <= 0:
            return 0.0
        if cost > self._limit.burst:
            return math.inf
        return (cost - self.tokens) / self._limit.rate_per_s

    def take(self, cost: float) -> None:
        """Remove ``cost`` tokens; call only after :meth:`wait_s` returned 0.0."""
        self.tokens = max(0.0, self.tokens - cost)

    def is_full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (so it can be forgotten)."""
        deficit = self._limit.burst - self.tokens
        return (now - self._last_s) * self._limit.rate_per_s >= deficit - TOKEN_EPSILON


class RateLimiter:
    """Token buckets keyed by a string, with bounded memory.

    Args:
        limit: the rate and burst every key gets.
        max_keys: most keys remembered at once (least recently used evicted first).
    """

    def __init__(self, limit: RateLimit, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise LocalProtocolError(f"max_keys must be at least 1, not {max_keys}")
        self.limit = limit  # what every key gets
        self._max_keys = max_keys  # cap on len(self)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first
        self.evicted_active = 0  # keys dropped by the cap while their bucket was not full

    def check(self, key: str, now: float, cost: float = 1.0) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them.

        Args:
            key: what is limited, e.g. ``client_key(ip)`` or ``"account:" + username``.
            now: the current time in seconds, from a clock that does not go backwards.
            cost: tokens this request costs (positive, at most the burst).

        Returns:
            Allowed (tokens taken), or refused with the exact wait before a retry
            of the same cost would be allowed. A refusal takes nothing.

        Raises:
            LocalProtocolError: if ``cost`` is not positive or exceeds the burst
                (such a request could never be allowed).
        """
        if not 0 < cost <= self.limit.burst:
            raise LocalProtocolError(f"cost must be in (0, {self.limit.burst}], not {cost}")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.limit, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            bucket.refill(now)
        wait_s = bucket.wait_s(cost)
        if wait_s == 0.0:
            bucket.take(cost)
        self._evict(now)
        return RateDecision(allowed=wait_s == 0.0, retry_after_s=wait_s)

    def peek(self, key: str, now: float, cost: float = 1.0) -> RateDecision:
        """Whether :meth:`check` would allow ``cost`` now, taking nothing.

        For limits that charge only some outcomes (failed logins): peek before the
        request runs, :meth:`check` after it failed. A key never seen is allowed.
        """
        if not 0 < cost <= self.limit.burst:
            raise LocalProtocolError(f"cost must be in (0, {self.limit.burst}], not {cost}")
        bucket = self._buckets.get(key)
        if bucket is None:
            return RateDecision(allowed=True, retry_after_s=0.0)
        bucket.refill(now)
        wait_s = bucket.wait_s(cost)
        return RateDecision(allowed=wait_s == 0.0, retry_after_s=wait_s)

    def sweep(self, now: float) -> int:
        """Forget every key whose bucket has refilled; returns how many. O(number of keys).

        :meth:`check` already forgets idle keys cheaply as it goes; call this from a
        periodic timer to reclaim memory after a burst of distinct keys.
        """
        idle = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)

    def reset(self, key: str) -> None:
        """Forget ``key`` (its next request finds a full bucket), e.g. after a good login."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def _evict(self, now: float) -> None:
        # forget refilled keys from the least recently used end (amortised O(1))
        while self._buckets:
            oldest_key, oldest = next(iter(self._buckets.items()))
            if not oldest.is_full(now):
                break
            del self._buckets[oldest_key]
        # then enforce the cap
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
            self.evicted_active += 1


def retry_after_header(retry_after_s: float) -> str:
    """The ``Retry-After`` header value (whole seconds, rounded up, at least 1) for a 429.

    Rounding up keeps a client that obeys the header from being refused again.
    """
    if math.isnan(retry_after_s) or math.isinf(retry_after_s):
        raise LocalProtocolError(f"no Retry-After for a wait of {retry_after_s}")
    return str(max(1, math.ceil(retry_after_s - TOKEN_EPSILON)))


def client_key(host: str) -> str:
    """The rate-limit key for a client address: IPv4 as is, IPv6 by its /64 prefix.

    A string that is not an IP address (e.g. a Unix socket peer, a test client name)
    is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX_BITS), strict=False)
        return str(network)
    return str(address)
