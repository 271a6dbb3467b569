"""RateLimiter: the one place API-key token buckets live, shared by every gateway replica.

Gateway replicas lease a few tokens at a time (``app.security.ratelimit.RateLimiter``), so the
limit holds across replicas without a remote call per request; see ``app/security/ratelimit.py``
for how exact that is.
"""

from __future__ import annotations

import time

from ray import serve

from app import constants
from app.security.ratelimit import CentralBuckets


@serve.deployment(
    name=constants.LIMITER_DEPLOYMENT,
    num_replicas=1,  # one bucket per key: more replicas would multiply the limit
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=1000,
    max_surge_percent=100,
)
class RateLimiter:
    def __init__(self) -> None:
        self._buckets = CentralBuckets()

    def lease(self, key: str, rate_per_s: float, burst: int, want: int) -> tuple[int, float]:
        """Up to ``want`` tokens of ``key``'s bucket: (granted, seconds until one is there)."""
        return self._buckets.lease(key, rate_per_s, burst, want, time.monotonic())
