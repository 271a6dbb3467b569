"""HTTP payloads of the gateway; the same models drive validation and the OpenAPI docs."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Records = list[dict[str, Any]]
Columns = dict[str, list[Any]]


class PredictRequest(BaseModel):
    """Body of ``POST /v1/models/{name}/predict``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {
                            "sepal_length": 5.1,
                            "sepal_width": 3.5,
                            "petal_length": 1.4,
                            "petal_width": 0.2,
                        }
                    ]
                },
                {"inputs": ["a sentence to embed or classify"]},
            ]
        },
    )

    inputs: list[Any] | Columns = Field(
        ...,
        description="Tabular models: a list of records or a dict of columns. "
        "Text models: a list of strings.",
    )


class PredictResponse(BaseModel):
    model: str = Field(..., description="Registered model name.")
    version: str = Field(..., description="Model version that answered.")
    outputs: list[Any] = Field(..., description="One output per input row.")
    #: Tokens the model read, where it reports them (internal: the embeddings API's usage).
    usage: dict[str, int] | None = Field(default=None, exclude=True)


class ErrorDetail(BaseModel):
    status: int = Field(..., description="HTTP status code.")
    code: str = Field(..., description="Machine-readable error code.")
    message: str = Field(..., description="What went wrong, for a person.")
    model: str | None = Field(None, description="Model concerned, where there is one.")
    version: str | None = Field(None, description="Model version concerned, where there is one.")
    field: str | None = Field(None, description="Offending input field, for 422.")


class ErrorResponse(BaseModel):
    """The one error body every endpoint uses."""

    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses`` for an endpoint: each status, with its description, answered
    with the common error body (:class:`ErrorResponse`)."""
    return {
        status: {"model": ErrorResponse, "description": text}
        for status, text in descriptions.items()
    }


class VersionInfo(BaseModel):
    version: str
    aliases: list[str] = Field(default_factory=list)
    stage: str | None = None
    role: str | None = Field(None, description="Role this version serves in, if any.")


class ModelSummary(BaseModel):
    name: str
    champion: str | None = Field(None, description="Version serving as champion, if routable.")
    champion_source: str | None = Field(
        None, description="Where the champion came from: 'alias:champion' or 'stage:Production'."
    )
    versions: list[VersionInfo] = Field(default_factory=list)


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: str
    detail: dict[str, str] = Field(default_factory=dict)


class ReplicaHealth(BaseModel):
    app: str = Field(..., description="Ray Serve application of the version.")
    status: str = Field(..., description="Application status, e.g. RUNNING.")
    replicas: dict[str, int] = Field(default_factory=dict, description="Replicas by state.")


class FailureInfo(BaseModel):
    version: str
    attempts: int
    reason: str
    next_try_in_s: float


class ModelStatus(BaseModel):
    """``GET /admin/models/{name}``: what serves and what could serve next."""

    name: str
    serving_version: str | None = Field(None, description="The champion in force.")
    source: str | None = Field(None, description="'alias:champion' or 'stage:Production'.")
    loaded_at: float | None = Field(None, description="Unix time the champion became routable.")
    health: ReplicaHealth | None = None
    previous_version: str | None = Field(None, description="The champion before, if known.")
    previous_warm: bool = Field(False, description="Whether a rollback to it is instant.")
    deploying: str | None = Field(None, description="Version being deployed now, if any.")
    problem: str | None = None
    failures: list[FailureInfo] = Field(default_factory=list)
    versions: list[VersionInfo] = Field(default_factory=list)
    epoch: int = Field(0, description="Routing table epoch in force at the watcher.")
    challenger: RoleInfo | None = None
    shadow: RoleInfo | None = None
    rollout: dict[str, Any] | None = Field(
        None, description="The rollout in progress or last finished: step, weight, gates."
    )
    quality: dict[str, dict[str, Any]] | None = Field(
        None,
        description="Live quality per role (champion, challenger, shadow), from labelled "
        "predictions: metric, value, interval, label count.",
    )


class RollbackResult(BaseModel):
    name: str
    from_version: str | None
    to_version: str
    switched: bool = Field(..., description="Whether the switch happened before the answer.")
    switch_s: float = Field(..., description="Seconds from the call to the switch.")
    status: ModelStatus


class ApprovalResult(BaseModel):
    name: str
    version: str
    approved_by: str = Field(..., description="The approving API key's name.")
    approved_at: str = Field(..., description="When, UTC (ISO 8601).")
    note: str
    status: ModelStatus


class ApproveRequest(BaseModel):
    """Body of ``POST /admin/models/{name}/versions/{version}/approve``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "validated on the Q3 set"}]}
    )

    note: str = Field("", max_length=5000, description="Why it may serve; kept with it.")


class PromoteRequest(BaseModel):
    """Body of ``POST /admin/models/{name}/promote``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "3"}]})

    version: str = Field(..., min_length=1, max_length=64, description="Version to promote.")


class TrafficRequest(BaseModel):
    """Body of ``PUT /admin/models/{name}/traffic``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"challenger": 10}]})

    challenger: float = Field(..., ge=0, le=100, description="Percent of requests to challenger.")


class RolloutAction(StrEnum):
    pause = "pause"
    resume = "resume"
    abort = "abort"


class RoleInfo(BaseModel):
    version: str
    source: str
    app: str
    weight: float | None = Field(None, description="Challenger: percent of requests.")
    fraction: float | None = Field(None, description="Shadow: share of requests mirrored.")
    comparison: dict[str, Any] | None = Field(
        None,
        description="Its answers compared with the primary's: agreement or similarity, "
        "latency ratio, errors, timeouts, dropped calls.",
    )
