"""Per-key rate limits: token buckets, exact across gateway replicas.

How it works
    One central token bucket per key lives in one place (a Ray actor, holding a
    :class:`CentralBuckets`). Each gateway replica holds a small local *lease* of tokens
    per key, taken from the central bucket (:class:`RateLimiter`), and admits requests from
    it without a remote call. A lease holds at most :func:`lease_size` tokens (about 1/20
    of the rate, at most a quarter of the burst), so the central actor sees about 20 calls
    per key per second at full load, whatever the number of replicas.

How exact it is
    Tokens are only ever created by the central bucket, and a token admits at most one
    request. So, counted from the moment a key's bucket is created (or from any moment no
    lease of it is outstanding), all replicas together admit at most ``rate * t + burst``
    requests in ``t`` seconds, exactly. A window that starts while replicas hold leases
    may in addition see those leased tokens: at most ``lease_size * replicas`` more.

    Unused leased tokens expire ``LEASE_TTL_S`` after the lease was asked for and are lost,
    never given back; so the other error is on the strict side: requests refused early,
    at most ``lease_size * replicas`` per expiry period, and only when traffic on a
    replica is too sparse to use its lease within a second. Under load leases are used
    up long before they expire. Lease size trades exactness for remote calls.

    After the central bucket grants nothing, a replica refuses that key's requests
    locally until the Retry-After the central bucket gave, so a flood of refused requests
    does not become a flood of remote calls.

When the central bucket is unreachable
    The lease call raising makes the replica fall back to a local token bucket per key
    with the key's full rate and burst (fail open, but still limited): each replica then
    enforces the whole limit alone, so the key may get up to ``replicas`` times its
    limit until the central bucket answers again. The replica retries the central bucket
    after ``CENTRAL_RETRY_S``, logs a warning at most once per key per minute and counts
    every failed call (:attr:`RateLimiter.central_failures`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.serving.errors import TooManyRequests

logger = logging.getLogger("modellane.ratelimit")

LEASE_TTL_S = 1.0  # a leased token unused this long after the lease was asked for is lost
CENTRAL_RETRY_S = 1.0  # after a failed lease call, use local buckets this long before retrying
WARN_EVERY_S = 60.0  # at most one "central limiter unreachable" warning per key this often
DEFAULT_MAX_KEYS = 10_000
# Float noise in elapsed time must not turn a whole token into 0.99999...; a millionth of
# a token is lent at most, and paid back by the next refill.
_EPS = 1e-6

#: ``(key, rate_per_s, burst, want) -> (granted, retry_after_s)``; in production a call to
#: the central actor, which reads its own clock.
LeaseFn = Callable[[str, float, int, int], Awaitable[tuple[int, float]]]


def _check_limit(rate_per_s: float, burst: int) -> None:
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")


class TokenBucket:
    """A classic token bucket: ``rate_per_s`` tokens a second, at most ``burst``; starts full."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        _check_limit(rate_per_s, burst)
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        # A clock that went backwards refills nothing, and `updated` stays put so the same
        # stretch of time is not counted twice once the clock is past it again.
        if now > self.updated:
            self.tokens = min(
                float(self.burst), self.tokens + (now - self.updated) * self.rate_per_s
            )
            self.updated = now

    def grant(self, want: int, now: float) -> tuple[int, float]:
        """Take up to ``want`` whole tokens.

        Returns:
            ``(granted, retry_after_s)``: retry_after_s is 0 when something was granted,
            else the seconds until one token is there.
        """
        if want < 1:
            raise ValueError(f"want must be >= 1, got {want}")
        self._refill(now)
        granted = min(want, math.floor(self.tokens + _EPS))
        if granted > 0:
            self.tokens -= granted
            return granted, 0.0
        return 0, max(0.0, (1.0 - self.tokens) / self.rate_per_s)

    def reconfigure(self, rate_per_s: float, burst: int, now: float) -> None:
        """A new limit: the tokens so far (refilled at the old rate) stay, capped at the burst."""
        _check_limit(rate_per_s, burst)
        self._refill(now)
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.tokens = min(self.tokens, float(burst))


class CentralBuckets:
    """The one bucket per key that every replica leases from; the central actor's state.

    Thread-safe: Ray Serve runs a sync method of a deployment in a thread pool, so lease
    calls may come in on several threads at once. Beyond ``max_keys`` the least
    recently used key's bucket is dropped; it starts full when the key comes back, which
    loosens nothing unless more than ``max_keys`` keys are busy within one ``burst/rate``
    (an idle bucket is full anyway).
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def bucket(self, key: str) -> TokenBucket | None:
        """The bucket of ``key``, if it has one (for inspection; does not count as use)."""
        return self._buckets.get(key)

    def lease(
        self, key: str, rate_per_s: float, burst: int, want: int, now: float
    ) -> tuple[int, float]:
        """Take up to ``want`` tokens of ``key``'s bucket: ``(granted, retry_after_s)``."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate_per_s, burst, now)
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                if bucket.rate_per_s != rate_per_s or bucket.burst != burst:
                    bucket.reconfigure(rate_per_s, burst, now)
            return bucket.grant(want, now)


def lease_size(rate_per_s: float, burst: int) -> int:
    """Tokens a replica asks for at once: ``max(1, min(burst // 4, ceil(rate / 20)))``."""
    return max(1, min(burst // 4, math.ceil(rate_per_s / 20)))


@dataclass
class _KeyState:
    """One replica's view of one key."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tokens: int = 0  # left in the local lease
    leased_at: float = -math.inf  # when the lease was asked for (it expires from then)
    refused_until: float = -math.inf  # the central bucket's Retry-After, after a 0 grant
    fallback: TokenBucket | None = None  # used while the central bucket is unreachable
    warned_at: float = -math.inf


class RateLimiter:
    """One gateway replica's side: leases from the central bucket, admits or refuses."""

    def __init__(self, lease_fn: LeaseFn, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_fn = lease_fn
        self._clock = clock
        # Keyed by key name; bounded by the number of configured keys.
        self._states: dict[str, _KeyState] = {}
        self._central_down_until = -math.inf
        #: Lease calls that raised, each a fall back to local buckets (the warning is
        #: throttled; this counts every one, and the gateway exports it as a metric).
        self.central_failures = 0

    def local_tokens(self, key: str) -> int:
        """Tokens left in the local lease of ``key`` (expired or not)."""
        state = self._states.get(key)
        return state.tokens if state is not None else 0

    async def admit(self, key: str, rate_per_s: float, burst: int) -> None:
        """Let one request of ``key`` (the key's name, never the secret) through, or refuse.

        Raises:
            TooManyRequests: over the limit; ``retry_after_s`` says when one would pass.
        """
        _check_limit(rate_per_s, burst)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _KeyState()
        if self._take_local(state, self._clock()):
            return
        # One lease call per key at a time: concurrent requests wait for it, then share it.
        async with state.lock:
            now = self._clock()
            if self._take_local(state, now):
                return
            if now < state.refused_until:
                raise _refusal(key, rate_per_s, burst, state.refused_until - now)
            if now < self._central_down_until:
                self._admit_fallback(state, key, rate_per_s, burst, now)
                return
            try:
                granted, retry_after_s = await self._lease_fn(
                    key, rate_per_s, burst, lease_size(rate_per_s, burst)
                )
            except Exception as exc:  # the central bucket is down: fail open, still limited
                self.central_failures += 1
                now = self._clock()
                self._central_down_until = now + CENTRAL_RETRY_S
                if now - state.warned_at >= WARN_EVERY_S:
                    state.warned_at = now
                    logger.warning(
                        "central rate limiter unreachable (%s: %s); key %s is limited by "
                        "each gateway replica alone until it answers",
                        type(exc).__name__,
                        exc,
                        key,
                    )
                self._admit_fallback(state, key, rate_per_s, burst, now)
                return
            if granted > 0:
                state.tokens = granted - 1  # one of them is this request's
                state.leased_at = now  # asked-for time: expires no later than the grant + TTL
                state.refused_until = -math.inf
                return
            state.refused_until = self._clock() + retry_after_s
            raise _refusal(key, rate_per_s, burst, retry_after_s)

    @staticmethod
    def _take_local(state: _KeyState, now: float) -> bool:
        if state.tokens > 0 and now - state.leased_at < LEASE_TTL_S:
            state.tokens -= 1
            return True
        state.tokens = 0  # expired tokens are lost, never given back
        return False

    @staticmethod
    def _admit_fallback(
        state: _KeyState, key: str, rate_per_s: float, burst: int, now: float
    ) -> None:
        if state.fallback is None:
            state.fallback = TokenBucket(rate_per_s, burst, now)
        elif state.fallback.rate_per_s != rate_per_s or state.fallback.burst != burst:
            state.fallback.reconfigure(rate_per_s, burst, now)
        granted, retry_after_s = state.fallback.grant(1, now)
        if not granted:
            raise _refusal(key, rate_per_s, burst, retry_after_s)


def _refusal(key: str, rate_per_s: float, burst: int, retry_after_s: float) -> TooManyRequests:
    return TooManyRequests(
        f"rate limit of {rate_per_s:g}/s (burst {burst}) exceeded for key {key}; "
        f"retry after {retry_after_s:.2f} s",
        retry_after_s=retry_after_s,
    )
