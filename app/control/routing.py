"""The routing table: which version of each model is routable, and in which role.

The registry watcher builds it and publishes it to every gateway replica with a
new epoch; the gateway only reads it. Plain data, no Ray.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from app import constants
from app.schemas import ModelList, ModelSummary, VersionInfo
from app.serving.errors import ModelNotFound, ModelUnavailable


class Target(BaseModel):
    """One routable model version: its application is deployed, healthy and validated."""

    model: str
    version: str
    role: str = constants.ROLE_CHAMPION
    app_name: str = Field(..., description="Ray Serve application serving this version.")
    source: str = Field(..., description="'alias:champion' or 'stage:Production'.")
    loaded_at: float = Field(..., description="Unix time the version became routable.")
    cold_start_timeout_s: float | None = Field(
        None,
        description="Set where the version scales to zero (idle_to_zero_s): how long a "
        "request waits for a replica to start before it gets 503 with Retry-After.",
    )


class ModelRoutes(BaseModel):
    """Routes of one model: champion, weighted challenger (canary), mirrored shadow."""

    name: str
    champion: Target | None = None
    challenger: Target | None = None
    challenger_weight: float = Field(0.0, ge=0, le=100, description="Percent to challenger.")
    shadow: Target | None = None
    shadow_fraction: float = Field(0.0, ge=0, le=1, description="Share mirrored to shadow.")
    shadow_timeout_s: float = Field(2.0, gt=0)
    shadow_max_in_flight: int = Field(32, ge=1)
    compare_challenger: bool = Field(
        False, description="Mirror challenger requests to the champion to measure agreement."
    )
    allow_override: bool = Field(False, description="Honour the X-Model-Version header.")
    versions: list[VersionInfo] = Field(default_factory=list)
    problem: str | None = Field(
        None, description="Why no champion is routable, when none is (for /readyz and admins)."
    )
    discovered: bool = Field(
        False,
        description="Served because the registry tags it (discovery), not configured: "
        "readiness does not wait for its champion.",
    )


class RoutingTable(BaseModel):
    """Epoch-numbered routing table; a higher epoch replaces a lower one."""

    epoch: int = 0
    models: dict[str, ModelRoutes] = Field(default_factory=dict)

    def route(self, model: str) -> Target:
        """The target a request for ``model`` goes to.

        Raises:
            ModelNotFound: the model is not served here.
            ModelUnavailable: it is served, but no version is routable yet.
        """
        routes = self.models.get(model)
        if routes is None:
            raise ModelNotFound(f"model {model!r} is not served here", model=model)
        if routes.champion is None:
            reason = routes.problem or "no healthy champion version yet"
            raise ModelUnavailable(f"model {model!r} is not available: {reason}", model=model)
        return routes.champion

    def unready(self) -> dict[str, str]:
        """Configured models without a routable champion, with the reason."""
        return {
            name: _why(routes)
            for name, routes in self.models.items()
            if routes.champion is None and not routes.discovered
        }

    def readiness(self) -> dict[str, str]:
        """Each model: ``ok``, or why it cannot serve (a discovered model waiting for a
        champion leaves the gateway ready)."""
        return {n: "ok" if r.champion else _why(r) for n, r in self.models.items()}

    def summary(self) -> ModelList:
        return ModelList(
            models=[
                ModelSummary(
                    name=name,
                    champion=routes.champion.version if routes.champion else None,
                    champion_source=routes.champion.source if routes.champion else None,
                    versions=routes.versions,
                )
                for name, routes in sorted(self.models.items())
            ]
        )


def _why(routes: ModelRoutes) -> str:
    return routes.problem or "no healthy champion version yet"
