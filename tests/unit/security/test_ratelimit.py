"""app/security/ratelimit.py: token buckets, the central buckets, and replicas leasing from them
(fake clock; async code driven by asyncio.run)."""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from app.security.ratelimit import (
    CENTRAL_RETRY_S,
    LEASE_TTL_S,
    WARN_EVERY_S,
    CentralBuckets,
    RateLimiter,
    TokenBucket,
    lease_size,
)
from app.serving.errors import TooManyRequests

T0 = 1_000.0  # the fake clock's start
T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Central:
    """A central bucket reached through an async lease function, counting calls."""

    def __init__(self, clock: FakeClock, max_keys: int = 10_000) -> None:
        self.clock = clock
        self.buckets = CentralBuckets(max_keys)
        self.calls: list[tuple[str, float, int, int]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None  # when set, calls wait for it

    async def lease(self, key: str, rate_per_s: float, burst: int, want: int) -> tuple[int, float]:
        self.calls.append((key, rate_per_s, burst, want))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.buckets.lease(key, rate_per_s, burst, want, self.clock.now)


def run(coro: Awaitable[T]) -> T:
    async def _main() -> T:
        return await coro

    return asyncio.run(_main())


async def admitted(limiter: RateLimiter, key: str, rate: float, burst: int) -> bool:
    try:
        await limiter.admit(key, rate, burst)
    except TooManyRequests:
        return False
    return True


async def refusal(limiter: RateLimiter, key: str, rate: float, burst: int) -> TooManyRequests:
    with pytest.raises(TooManyRequests) as info:
        await limiter.admit(key, rate, burst)
    return info.value


# -- TokenBucket -----------------------------------------------------------------------


def test_bucket_starts_full_and_grants_up_to_burst() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=5, now=T0)
    assert bucket.grant(3, T0) == (3, 0.0)
    assert bucket.grant(3, T0) == (2, 0.0)  # partial: only 2 left
    granted, retry = bucket.grant(1, T0)
    assert granted == 0
    assert retry == pytest.approx(0.5)  # one token at 2/s


def test_bucket_refills_by_elapsed_time() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=8, now=T0)
    assert bucket.grant(8, T0) == (8, 0.0)
    assert bucket.grant(8, T0 + 0.5) == (2, 0.0)
    assert bucket.grant(8, T0 + 1.25) == (3, 0.0)
    # 0.2 s after: 0.8 tokens; a whole one 0.05 s later.
    granted, retry = bucket.grant(1, T0 + 1.45)
    assert granted == 0
    assert retry == pytest.approx(0.05)
    assert bucket.grant(1, T0 + 1.5) == (1, 0.0)


def test_bucket_caps_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=3, now=T0)
    assert bucket.grant(3, T0) == (3, 0.0)
    assert bucket.grant(100, T0 + 3600) == (3, 0.0)  # an hour idle still means 3


def test_bucket_retry_after_exact_values() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=1, now=T0)
    assert bucket.grant(1, T0) == (1, 0.0)
    assert bucket.grant(1, T0) == (0, pytest.approx(2.0))
    assert bucket.grant(1, T0 + 0.5) == (0, pytest.approx(1.5))
    assert bucket.grant(1, T0 + 1.9) == (0, pytest.approx(0.1))
    assert bucket.grant(1, T0 + 2.0) == (1, 0.0)


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=10, now=T0)
    assert bucket.grant(10, T0 + 5) == (10, 0.0)
    # Back 5 s: no negative refill (no debt), nothing granted.
    granted, retry = bucket.grant(1, T0)
    assert granted == 0 and retry == pytest.approx(1.0)
    assert bucket.tokens == 0
    # Forward again past T0 + 5: only the time after T0 + 5 refills.
    assert bucket.grant(10, T0 + 5.5) == (0, pytest.approx(0.5))
    assert bucket.grant(10, T0 + 7) == (2, 0.0)


@pytest.mark.parametrize("start", [0.0, 1e6, 1e8])  # time.monotonic: up to years of uptime
def test_bucket_float_noise_does_not_lose_a_token(start: float) -> None:
    bucket = TokenBucket(rate_per_s=10, burst=1, now=start)
    assert bucket.grant(1, start) == (1, 0.0)
    # 0.1 s between large floats is not exactly 0.1; the token must still be there.
    assert bucket.grant(1, start + 0.1) == (1, 0.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_rejects_bad_limits(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, T0)


def test_bucket_rejects_wanting_nothing() -> None:
    with pytest.raises(ValueError):
        TokenBucket(1, 1, T0).grant(0, T0)


# -- CentralBuckets --------------------------------------------------------------------


def test_central_buckets_are_per_key() -> None:
    central = CentralBuckets()
    assert central.lease("a", 1, 2, 5, T0) == (2, 0.0)
    assert central.lease("b", 1, 2, 5, T0) == (2, 0.0)
    assert central.lease("a", 1, 2, 1, T0) == (0, pytest.approx(1.0))
    assert len(central) == 2


def test_central_buckets_evict_the_least_recently_used_key() -> None:
    central = CentralBuckets(max_keys=2)
    central.lease("a", 1, 5, 5, T0)
    central.lease("b", 1, 5, 5, T0)
    central.lease("a", 1, 5, 1, T0)  # a is now the most recently used
    central.lease("c", 1, 5, 5, T0)
    assert "b" not in central
    assert "a" in central and "c" in central
    assert len(central) == 2
    # An evicted key starts over with a full bucket.
    assert central.lease("b", 1, 5, 5, T0) == (5, 0.0)
    assert "a" not in central


def test_central_limit_change_keeps_tokens_capped_at_the_new_burst() -> None:
    central = CentralBuckets()
    assert central.lease("k", 1, 10, 4, T0) == (4, 0.0)  # 6 left
    # A smaller burst caps what is left.
    assert central.lease("k", 1, 3, 10, T0) == (3, 0.0)
    bucket = central.bucket("k")
    assert bucket is not None and (bucket.rate_per_s, bucket.burst) == (1, 3)
    # A larger burst does not fill the bucket: tokens accrue at the new rate.
    assert central.lease("k", 5, 20, 20, T0) == (0, pytest.approx(0.2))
    assert central.lease("k", 5, 20, 20, T0 + 1) == (5, 0.0)


def test_central_limit_change_refills_the_time_before_it_at_the_old_rate() -> None:
    central = CentralBuckets()
    central.lease("k", 1, 10, 10, T0)
    assert central.lease("k", 100, 10, 10, T0 + 2) == (2, 0.0)


def test_central_rejects_a_bad_max_keys() -> None:
    with pytest.raises(ValueError):
        CentralBuckets(max_keys=0)


# -- lease_size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "size"),
    [
        (1, 1, 1),
        (1, 100, 1),
        (0.1, 1, 1),
        (20, 100, 1),
        (21, 100, 2),
        (100, 100, 5),
        (100, 8, 2),
        (1000, 1000, 50),
        (1000, 8, 2),
        (1000, 3, 1),  # burst // 4 == 0: still 1
        (10_000, 100_000, 500),
    ],
)
def test_lease_size(rate: float, burst: int, size: int) -> None:
    assert lease_size(rate, burst) == size


# -- RateLimiter -----------------------------------------------------------------------


def test_limiter_takes_a_lease_and_admits_from_it_locally() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        for _ in range(5):
            await limiter.admit("k", 100, 100)  # lease size 5
        assert len(central.calls) == 1
        assert central.calls[0] == ("k", 100, 100, 5)
        assert limiter.local_tokens("k") == 0
        await limiter.admit("k", 100, 100)
        assert len(central.calls) == 2
        assert limiter.local_tokens("k") == 4

    run(go())


def test_leased_tokens_expire_and_are_not_given_back() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        await limiter.admit("k", 100, 100)
        clock.advance(LEASE_TTL_S * 0.9)
        await limiter.admit("k", 100, 100)  # still fresh
        assert len(central.calls) == 1
        clock.advance(LEASE_TTL_S * 0.2)  # the lease is now older than the TTL
        await limiter.admit("k", 100, 100)
        assert len(central.calls) == 2
        assert limiter.local_tokens("k") == 4

    run(go())
    bucket = central.buckets.bucket("k")
    assert bucket is not None
    # The 3 expired tokens were dropped, not given back; the bucket refilled on its own.
    assert bucket.tokens == pytest.approx(95.0)


def test_refusal_remembers_retry_after_and_does_not_call_the_central_bucket() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        await limiter.admit("k", 1, 1)
        assert len(central.calls) == 1
        exc = await refusal(limiter, "k", 1, 1)
        assert exc.retry_after_s == pytest.approx(1.0)
        assert len(central.calls) == 2
        for _ in range(128):  # a flood of refused requests: no remote calls
            clock.advance(1 / 256)  # exact in binary: 0.5 s after 128 steps
            exc = await refusal(limiter, "k", 1, 1)
        assert len(central.calls) == 2
        assert exc.retry_after_s == pytest.approx(0.5)
        clock.advance(0.5)
        await limiter.admit("k", 1, 1)
        assert len(central.calls) == 3

    run(go())


def test_refusal_message_names_the_key_and_nothing_secret() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> TooManyRequests:
        await limiter.admit("team-a", 0.5, 1)
        return await refusal(limiter, "team-a", 0.5, 1)

    exc = run(go())
    assert exc.status == 429
    assert exc.code == "rate_limited"
    assert exc.retry_after_s == pytest.approx(2.0)
    assert exc.message == (
        "rate limit of 0.5/s (burst 1) exceeded for key team-a; retry after 2.00 s"
    )
    assert exc.body()["error"]["message"] == exc.message


def test_concurrent_admits_share_one_lease_call() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> list[bool]:
        central.gate = asyncio.Event()
        tasks = [asyncio.create_task(admitted(limiter, "k", 200, 100)) for _ in range(8)]
        for _ in range(10):
            await asyncio.sleep(0)  # let every task start and reach the limiter
        assert len(central.calls) == 1  # the others wait for the call in flight
        central.gate.set()
        return await asyncio.gather(*tasks)

    results = run(go())
    assert results == [True] * 8
    assert len(central.calls) == 1  # lease size 10 covered all eight
    assert limiter.local_tokens("k") == 2


def test_concurrent_admits_refused_by_one_call_make_no_more_calls() -> None:
    clock = FakeClock()
    central = Central(clock)
    central.buckets.lease("k", 1, 1, 1, clock.now)  # empty the bucket
    limiter = RateLimiter(central.lease, clock)

    async def go() -> list[bool]:
        central.gate = asyncio.Event()
        tasks = [asyncio.create_task(admitted(limiter, "k", 1, 1)) for _ in range(8)]
        for _ in range(10):
            await asyncio.sleep(0)
        central.gate.set()
        return await asyncio.gather(*tasks)

    assert run(go()) == [False] * 8
    assert len(central.calls) == 1


def test_keys_do_not_share_leases_or_locks() -> None:
    clock = FakeClock()
    central = Central(clock)
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        await limiter.admit("a", 1, 1)
        await refusal(limiter, "a", 1, 1)
        await limiter.admit("b", 1, 1)  # a's refusal does not touch b

    run(go())
    assert [call[0] for call in central.calls] == ["a", "a", "b"]


def test_fallback_to_a_local_bucket_when_the_central_bucket_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    central = Central(clock)
    central.fail = ConnectionError("actor died")
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        # Fail open, but still limited: the full burst, then the rate.
        for _ in range(3):
            await limiter.admit("k", 2, 3)
        exc = await refusal(limiter, "k", 2, 3)
        assert exc.retry_after_s == pytest.approx(0.5)
        assert "exceeded for key k" in exc.message
        clock.advance(0.5)
        await limiter.admit("k", 2, 3)

    with caplog.at_level(logging.WARNING, logger="modellane.ratelimit"):
        run(go())
    # One failed call; the rest used the local bucket without retrying within the pause.
    assert len(central.calls) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert "ConnectionError" in warnings[0].getMessage()
    assert limiter.central_failures == 1


def test_fallback_retries_the_central_bucket_and_warns_once_per_key_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    central = Central(clock)
    central.fail = RuntimeError("down")
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        for _ in range(20):  # 20 s of outage, a request every second
            await limiter.admit("k", 1, 1)
            clock.advance(CENTRAL_RETRY_S)
        # A call after each pause (each finding the local lease empty), one warning; every
        # failed call counted all the same.
        assert len(central.calls) == 20
        assert len(caplog.records) == 1
        assert limiter.central_failures == 20
        clock.advance(WARN_EVERY_S)
        await limiter.admit("k", 1, 1)
        assert len(caplog.records) == 2
        assert limiter.central_failures == 21
        # Back: leases come from the central bucket again.
        central.fail = None
        clock.advance(CENTRAL_RETRY_S)
        await limiter.admit("k", 1, 1)
        assert limiter.local_tokens("k") == 0
        assert len(central.calls) == 22
        assert "k" in central.buckets
        assert limiter.central_failures == 21  # the call that answered is no failure

    with caplog.at_level(logging.WARNING, logger="modellane.ratelimit"):
        run(go())


def test_fallback_applies_a_changed_limit() -> None:
    clock = FakeClock()
    central = Central(clock)
    central.fail = RuntimeError("down")
    limiter = RateLimiter(central.lease, clock)

    async def go() -> None:
        await limiter.admit("k", 1, 5)  # 4 tokens left
        await limiter.admit("k", 1, 2)  # burst now 2: capped to 2, one taken
        await limiter.admit("k", 1, 2)
        await refusal(limiter, "k", 1, 2)

    run(go())


def test_cancellation_is_not_taken_for_an_unreachable_central_bucket() -> None:
    clock = FakeClock()

    async def never(key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    limiter = RateLimiter(never, clock)

    async def go() -> None:
        task = asyncio.create_task(limiter.admit("k", 1, 1))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert limiter.central_failures == 0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0)])
def test_limiter_rejects_bad_limits(rate: float, burst: int) -> None:
    limiter = RateLimiter(Central(FakeClock()).lease, FakeClock())
    with pytest.raises(ValueError):
        run(limiter.admit("k", rate, burst))


# -- replicas sharing one central bucket -----------------------------------------------


def simulate(
    pick: Callable[[int], int],
    gaps: Callable[[], float],
    *,
    rate: float,
    burst: int,
    replicas: int = 3,
    seconds: float = 10.0,
) -> list[float]:
    """Requests of one key spread over ``replicas`` limiters for ``seconds``; admit times."""
    clock = FakeClock(0.0)
    central = Central(clock)
    limiters = [RateLimiter(central.lease, clock) for _ in range(replicas)]
    times: list[float] = []

    async def go() -> None:
        i = 0
        while clock.now <= seconds:
            if await admitted(limiters[pick(i)], "k", rate, burst):
                times.append(clock.now)
            i += 1
            clock.advance(gaps())

    run(go())
    return times


def check_bounds(times: list[float], rate: float, burst: int, replicas: int) -> None:
    size = lease_size(rate, burst)
    total = len(times)
    # From the bucket's creation: never more than rate * t + burst, exactly.
    assert total <= rate * 10 + burst
    for t in (0.0, 0.5, 1.0, 2.5, 5.0):
        assert bisect.bisect_right(times, t) <= rate * t + burst
    # Strict side only, and by at most one lease per replica (plus a fractional token).
    assert total >= rate * 10 + burst - size * replicas - 1
    # Any window: at most rate * w + burst, plus the leases outstanding at its start.
    for w in (0.05, 0.2, 1.0, 3.0):
        worst = max(bisect.bisect_right(times, a + w) - i for i, a in enumerate(times))
        assert worst <= rate * w + burst + size * replicas


@pytest.mark.parametrize(("rate", "burst"), [(50, 20), (200, 100), (7, 3), (500, 40)])
def test_replicas_round_robin_admit_rate_times_t_plus_burst(rate: float, burst: int) -> None:
    times = simulate(lambda i: i % 3, lambda: 0.001, rate=rate, burst=burst)
    check_bounds(times, rate, burst, replicas=3)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("rate", "burst"), [(50, 20), (200, 100)])
def test_replicas_random_traffic_admit_rate_times_t_plus_burst(
    seed: int, rate: float, burst: int
) -> None:
    rng = random.Random(seed)
    times = simulate(
        lambda _: rng.randrange(3),
        lambda: rng.expovariate(1500.0),  # about 1500 requests a second, far over the limit
        rate=rate,
        burst=burst,
    )
    check_bounds(times, rate, burst, replicas=3)


def test_sparse_traffic_loses_expired_leases_only_on_the_strict_side() -> None:
    # Just over the rate, spread thin over 3 replicas: leases often expire unused.
    rng = random.Random(7)
    rate, burst = 100.0, 100
    times = simulate(lambda _: rng.randrange(3), lambda: 1 / 120, rate=rate, burst=burst)
    assert len(times) <= rate * 10 + burst
    for w in (0.1, 1.0):
        worst = max(bisect.bisect_right(times, a + w) - i for i, a in enumerate(times))
        assert worst <= rate * w + burst + lease_size(rate, burst) * 3


def test_a_window_that_starts_while_leases_are_outstanding_may_see_them() -> None:
    # The documented edge: leases taken, then the central bucket refills to full while
    # the replicas still hold them; a burst right after sees both.
    rate, burst, replicas = 100.0, 100, 3
    size = lease_size(rate, burst)
    clock = FakeClock()
    central = Central(clock)
    limiters = [RateLimiter(central.lease, clock) for _ in range(replicas)]

    async def go() -> int:
        for limiter in limiters:
            await limiter.admit("k", rate, burst)  # each now holds size - 1 tokens
        clock.advance(size * replicas / rate)  # the central bucket is full again
        count = 0
        for _ in range(1000):  # all at once: a window of length 0
            for limiter in limiters:
                count += await admitted(limiter, "k", rate, burst)
        return count

    in_window = run(go())
    assert in_window == burst + (size - 1) * replicas
    assert in_window <= rate * 0 + burst + size * replicas  # the documented bound
    # Counted from the bucket's creation, still exact: 3 + 112 <= 100 * 0.15 + 100.
    assert replicas + in_window <= rate * (size * replicas / rate) + burst


def test_central_buckets_grant_exactly_under_threads() -> None:
    # Ray Serve calls a sync deployment method from a thread pool.
    central = CentralBuckets()
    granted: list[int] = []

    def worker() -> None:
        for _ in range(2000):
            granted.append(central.lease("k", 1e-9, 5000, 1, T0)[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 5000
