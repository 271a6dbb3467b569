"""Which version a request goes to: champion, weighted or sticky challenger, forced version;
and whether it is mirrored to the shadow. Pure functions; randomness is injected."""

from __future__ import annotations

import hashlib
import random

from app.control.routing import ModelRoutes, Target
from app.serving.errors import ModelUnavailable


def sticky_bucket(model: str, key: str) -> float:
    """A point in [0, 100) from a hash of model and routing key: the same on every replica,
    every restart and every machine (unlike Python's ``hash``)."""
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def choose_target(
    routes: ModelRoutes,
    *,
    routing_key: str | None = None,
    forced_version: str | None = None,
    rng: random.Random | None = None,
) -> Target:
    """The target of one request.

    - ``forced_version`` (header ``X-Model-Version``) wins where ``routes.allow_override``
      and that version serves in some role; it is ignored otherwise.
    - With a challenger at weight ``w`` percent: a request with a routing key goes to the
      challenger when its sticky bucket is below ``w``; one without, with probability ``w``.
    """
    champion = routes.champion
    if champion is None:
        raise ModelUnavailable(
            f"model {routes.name!r} is not available: "
            f"{routes.problem or 'no healthy champion version yet'}",
            model=routes.name,
        )
    if forced_version is not None and routes.allow_override:
        for target in (champion, routes.challenger, routes.shadow):
            if target is not None and target.version == forced_version:
                return target
    challenger = routes.challenger
    if challenger is None or routes.challenger_weight <= 0:
        return champion
    if routing_key:
        point = sticky_bucket(routes.name, routing_key)
    else:
        point = (rng or random).random() * 100.0
    return challenger if point < routes.challenger_weight else champion


def mirror_to_shadow(routes: ModelRoutes, rng: random.Random | None = None) -> Target | None:
    """The shadow target when this request is to be mirrored to it, else None."""
    if routes.shadow is None or routes.shadow_fraction <= 0:
        return None
    if routes.shadow_fraction >= 1 or (rng or random).random() < routes.shadow_fraction:
        return routes.shadow
    return None
