"""RegistryWatcher: reconcile the MLflow registry with the running version applications.

observe (registry + ``serve.status()``) -> desired champion per model -> act:
deploy what is missing, wait until healthy (the ModelServer validates itself on its
input example before it reports healthy), then publish a new routing table epoch.
Gateway replicas long-poll :meth:`RegistryWatcher.wait_for_table`, so a new table
reaches all of them as soon as it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ray import serve
from ray.serve.schema import ApplicationStatus

from app import constants
from app.registry import Desired, RegistryClient, choose_champion
from app.routing import ModelRoutes, RoutingTable, Target
from app.schemas import VersionInfo
from app.settings import AppArgs, ModelDeploymentConfig
from deployments.model_server import ModelServer

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name=constants.WATCHER_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=1000,  # every gateway replica keeps one long-poll open
)
class RegistryWatcher:
    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        self._args = AppArgs.model_validate(args)
        self._registry = RegistryClient(self._args.mlflow_tracking_uri)
        self._table = RoutingTable(
            epoch=1, models={name: ModelRoutes(name=name) for name in self._args.models}
        )
        self._published = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    # -- what gateways and admins call -------------------------------------------------

    async def wait_for_table(self, known_epoch: int, timeout_s: float) -> dict[str, Any] | None:
        """The routing table once its epoch is above ``known_epoch``; None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._table.epoch <= known_epoch:
            published = self._published
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(published.wait(), remaining)
            except TimeoutError:
                return None
        return self._table.model_dump()

    def table(self) -> dict[str, Any]:
        return self._table.model_dump()

    def reload(self) -> None:
        """Reconcile now instead of at the next poll."""
        self._wake.set()

    async def check_health(self) -> None:
        if self._loop_task.done():
            raise RuntimeError(f"reconcile loop ended: {self._loop_task.exception()!r}")

    # -- the reconcile loop ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:  # keep reconciling: the next poll may find the registry back
                logger.exception("reconcile pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._args.poll_interval_s)

    async def _reconcile(self) -> None:
        statuses = await asyncio.to_thread(_app_statuses)
        plans = await asyncio.gather(
            *(self._reconcile_model(name, statuses) for name in self._args.models)
        )
        models = dict(zip(self._args.models, plans, strict=True))
        if models != self._table.models:
            self._publish(models)

    async def _reconcile_model(self, name: str, statuses: dict[str, str]) -> ModelRoutes:
        current = self._table.models[name]
        try:
            versions = await asyncio.to_thread(self._registry.versions, name)
        except LookupError as exc:
            return current.model_copy(update={"problem": str(exc)})
        except Exception as exc:  # registry unreachable: keep serving what works
            logger.warning("cannot read %s from the registry: %s", name, exc)
            return current
        infos = [
            VersionInfo(
                version=v.version,
                aliases=list(v.aliases),
                stage=v.stage,
                role=constants.ROLE_CHAMPION
                if current.champion and current.champion.version == v.version
                else None,
            )
            for v in versions
        ]
        desired = choose_champion(versions)
        if desired is None:
            return ModelRoutes(
                name=name,
                champion=current.champion,
                versions=infos,
                problem=None
                if current.champion
                else "no version holds alias 'champion' or stage 'Production'",
            )
        if current.champion and current.champion.version == desired.version:
            return ModelRoutes(name=name, champion=current.champion, versions=infos)

        target, problem = await self._ensure_deployed(name, desired, statuses)
        champion = target or current.champion
        for info in infos:
            info.role = (
                constants.ROLE_CHAMPION if champion and info.version == champion.version else None
            )
        return ModelRoutes(name=name, champion=champion, versions=infos, problem=problem)

    async def _ensure_deployed(
        self, name: str, desired: Desired, statuses: dict[str, str]
    ) -> tuple[Target | None, str | None]:
        app_name = constants.version_app_name(name, desired.version)
        status = statuses.get(app_name)
        if status == ApplicationStatus.RUNNING:
            logger.info("adopting running application %s", app_name)
        else:
            config = self._args.models[name]
            logger.info("deploying %s (%s)", app_name, desired.source)
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(
                        _deploy, name, desired.version, config, self._args.mlflow_tracking_uri
                    ),
                    self._args.deploy_timeout_s,
                )
            except Exception as exc:
                problem = f"version {desired.version} failed to deploy: {exc}"[:500]
                logger.error("%s: %s", app_name, problem)
                return None, problem
        target = Target(
            model=name,
            version=desired.version,
            role=constants.ROLE_CHAMPION,
            app_name=app_name,
            source=desired.source,
            loaded_at=time.time(),
        )
        return target, None

    def _publish(self, models: dict[str, ModelRoutes]) -> None:
        self._table = RoutingTable(epoch=self._table.epoch + 1, models=models)
        logger.info("published routing table epoch %d", self._table.epoch)
        published, self._published = self._published, asyncio.Event()
        published.set()


def _app_statuses() -> dict[str, str]:
    return {name: str(app.status) for name, app in serve.status().applications.items()}


def _deploy(model: str, version: str, config: ModelDeploymentConfig, tracking_uri: str) -> None:
    """Deploy one version application and block until it is RUNNING (healthy, validated)."""
    app = ModelServer.options(  # type: ignore[attr-defined]
        **config.deployment_options()
    ).bind(model, version, tracking_uri)
    serve.run(app, name=constants.version_app_name(model, version), route_prefix=None)
