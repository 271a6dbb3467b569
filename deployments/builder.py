"""The control application: gateway + registry watcher + rate limiter.

``serve_config.yaml`` names ``deployments.builder:build_app``; Ray Serve validates the
``args:`` block against :class:`app.settings.AppArgs` from the annotation.
"""

# No `from __future__ import annotations` here: Ray Serve reads the real AppArgs type
# from the annotation of build_app to validate `args`.
from ray.serve import Application

from app.settings import AppArgs
from deployments.gateway import Gateway
from deployments.limiter import RateLimiter
from deployments.watcher import RegistryWatcher


def build_app(args: AppArgs) -> Application:
    plain = args.model_dump()
    watcher = RegistryWatcher.bind(plain)  # type: ignore[attr-defined]
    limiter = RateLimiter.bind()  # type: ignore[attr-defined]
    return Gateway.bind(watcher, plain, limiter)  # type: ignore[attr-defined]
