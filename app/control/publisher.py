"""The routing table and its epochs: built from what the control plane knows, handed to
every gateway replica by long-poll (:meth:`Publisher.wait_for_table`).

Epochs are milliseconds, so a restarted watcher's tables outrank its predecessor's.
While a new watcher rebuilds its state nothing is published: a half-rebuilt table would
show models whose turn has not come yet as unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from app.control.memory import ControlMemory
from app.control.routing import ModelRoutes, RoutingTable, Target
from app.settings import ModelDeploymentConfig

logger = logging.getLogger("ray.serve")


class Publisher:
    def __init__(self, memory: ControlMemory) -> None:
        self._memory = memory
        self.table = RoutingTable(epoch=0)
        self.rebuilding = True
        self._rebuilt = asyncio.Event()
        self._published = asyncio.Event()

    def finish_rebuild(self) -> None:
        """The first pass is over (or failed): publish from now on."""
        self.rebuilding = False
        self.publish()
        self._rebuilt.set()

    def publish(self) -> bool:
        """Publish a new table (a new epoch) if it differs from the current one."""
        if self.rebuilding:
            return False
        memory = self._memory
        models = {}
        for name, state in memory.states.items():
            config = memory.settings(name)
            policy = memory.policy(name)
            models[name] = ModelRoutes(
                name=name,
                champion=_waits(state.champion, config),
                challenger=_waits(state.challenger, config),
                challenger_weight=state.weight if state.challenger else 0.0,
                shadow=_waits(state.shadow, config),
                shadow_fraction=memory.shadow_fraction(name) if state.shadow else 0.0,
                shadow_timeout_s=config.shadow_timeout_s,
                shadow_max_in_flight=config.shadow_max_in_flight,
                compare_challenger=bool(policy and policy.gates.min_agreement is not None),
                allow_override=config.allow_version_override,
                versions=memory.versions.get(name, []),
                problem=memory.problems.get(name),
                discovered=name in memory.discovered,
            )
        if models == self.table.models:
            return False
        epoch = max(self.table.epoch + 1, int(memory.clock.time() * 1000))
        self.table = RoutingTable(epoch=epoch, models=models)
        logger.info("published routing table epoch %d", epoch)
        published, self._published = self._published, asyncio.Event()
        published.set()
        return True

    async def wait_for_table(self, known_epoch: int, timeout_s: float) -> dict[str, Any] | None:
        """The routing table once its epoch is above ``known_epoch``; None after ``timeout_s``.

        A new watcher answers only once it has rebuilt its state, so a gateway never
        trades a good table for an empty one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):  # a long-poll's ordinary end
            await asyncio.wait_for(self._rebuilt.wait(), timeout_s)
        while self.table.epoch <= known_epoch:
            published = self._published
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(published.wait(), remaining)
            except TimeoutError:
                return None
        return self.table.model_dump()


def _waits(target: Target | None, config: ModelDeploymentConfig) -> Target | None:
    """``target``, with its cold-start wait where its model scales to zero."""
    if target is None or config.idle_to_zero_s is None:
        return target
    return target.model_copy(update={"cold_start_timeout_s": config.cold_start_timeout_s})
