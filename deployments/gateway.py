"""Gateway: the ingress deployment. HTTP in, routing table lookup, handle call out."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from app import constants
from app.dataplane import DataPlane
from app.http import create_api
from app.routing import RoutingTable
from app.settings import AppArgs
from deployments.backends import HandleBackend

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name=constants.GATEWAY_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,
)
@serve.ingress()
class Gateway:
    async def __init__(self, watcher: DeploymentHandle, args: dict[str, Any]) -> None:  # type: ignore[misc]
        self._args = AppArgs.model_validate(args)
        self._watcher = watcher
        self.dataplane = DataPlane(backend_for=HandleBackend.for_target)
        self._follow_task = asyncio.get_running_loop().create_task(self._follow_table())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.dataplane, max_body_bytes=self._args.max_body_bytes)

    async def _follow_table(self) -> None:
        """Long-poll the watcher; install each newer routing table as soon as it exists."""
        while True:
            try:
                table = await self._watcher.wait_for_table.remote(
                    self.dataplane.table.epoch, constants.DEFAULT_TABLE_WAIT_S
                )
            except Exception as exc:  # watcher restarting: keep the table in force, ask again
                logger.warning("routing table long-poll failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if table is not None and self.dataplane.update_table(
                RoutingTable.model_validate(table)
            ):
                logger.info("routing table epoch %d in force", self.dataplane.table.epoch)
