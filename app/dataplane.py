"""The gateway's data plane: route a request by the routing table and call the version.

The HTTP layer (:mod:`app.http`) parses and answers; this module decides and calls.
Model versions sit behind the small :class:`ModelBackend` protocol, so the same
data plane runs over Ray Serve deployment handles in production and over an
in-process fake in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from app.errors import ModellaneError, from_body
from app.routing import RoutingTable, Target
from app.schemas import ModelList, PredictResponse


class ModelBackend(Protocol):
    """One model version, however it is reached.

    ``predict`` answers an envelope: ``{"outputs": [...]}`` or the common error body
    ``{"error": {...}}``. Errors travel as data, not exceptions, so a bad request can
    never take a replica down and the gateway never has to unpickle a model's exception.
    """

    async def predict(self, inputs: Any) -> dict[str, Any]: ...


BackendFactory = Callable[[Target], ModelBackend]


class DataPlane:
    """Routes predictions; holds the newest routing table it was given."""

    def __init__(self, backend_for: BackendFactory, table: RoutingTable | None = None) -> None:
        self._backend_for = backend_for
        self._backends: dict[str, ModelBackend] = {}
        self._table = table or RoutingTable()
        self.installed_at: float | None = None
        #: model -> (champion version, when this replica began routing to it)
        self.champion_since: dict[str, tuple[str, float]] = {}

    @property
    def table(self) -> RoutingTable:
        return self._table

    def update_table(self, table: RoutingTable) -> bool:
        """Install ``table`` if it is newer than the one in force. Returns whether it was."""
        if table.epoch <= self._table.epoch:
            return False
        self._table = table  # one reference swap: a request sees the old or the new, whole
        now = self.installed_at = time.time()
        for name, routes in table.models.items():
            version = routes.champion.version if routes.champion else None
            if version is not None and self.champion_since.get(name, ("", 0.0))[0] != version:
                self.champion_since[name] = (version, now)
        return True

    def _backend(self, target: Target) -> ModelBackend:
        backend = self._backends.get(target.app_name)
        if backend is None:
            backend = self._backends[target.app_name] = self._backend_for(target)
        return backend

    async def predict(self, model: str, inputs: Any) -> tuple[PredictResponse, Target]:
        """Predict with the version the table routes ``model`` to.

        Raises:
            ModellaneError: unknown model (404), bad input (422), model failure (500),
                no routable version (503).
        """
        target = self._table.route(model)
        answer = await self._backend(target).predict(inputs)
        if "error" in answer:
            err = from_body(answer)
            err.model, err.version = target.model, target.version
            raise err
        return (
            PredictResponse(model=target.model, version=target.version, outputs=answer["outputs"]),
            target,
        )

    def models(self) -> ModelList:
        return self._table.summary()

    def unready(self) -> dict[str, str]:
        """Models that cannot serve yet, with the reason; empty when all can."""
        if not self._table.models:
            return {"*": "no routing table received yet"}
        return self._table.unready()


__all__ = ["BackendFactory", "DataPlane", "ModelBackend", "ModellaneError"]
