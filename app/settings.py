"""Typed configuration: the ``args:`` block of the control application in serve_config.yaml.

Ray Serve validates that block against :class:`AppArgs` because the application
builder (``deployments.builder:build_app``) is annotated with it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app import constants
from app.alerts.settings import AlertSettings
from app.audit.settings import AuditSettings
from app.batch.spec import JobSettings
from app.control.approvals import ApprovalSettings
from app.control.rollout import RolloutPolicy
from app.quality.drift import DriftSettings
from app.security.auth import AuthSettings

Task = Literal["auto", "classification", "regression"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BatchSettings(BaseModel):
    """Dynamic batching of one model's replicas: the deployment's ``user_config``, so a
    change reaches running replicas (``reconfigure``) without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Most requests one model call takes together (1: no batching).",
    )
    batch_wait_timeout_s: float = Field(
        default=0.01,
        ge=0,
        le=10,
        description="How long the first request of a batch waits for more to join it.",
    )


class ModelDeploymentConfig(BatchSettings):
    """How the replicas of every version application of one model are placed and sized
    (and batched: the fields of :class:`BatchSettings`)."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(
        default=None, ge=1, description="Fixed replica count. Default 1 unless autoscaling is set."
    )
    autoscaling_config: dict[str, Any] | None = Field(
        default=None,
        description="Ray Serve autoscaling_config (min_replicas, max_replicas, ...). "
        "Mutually exclusive with num_replicas.",
    )
    num_cpus: float = Field(default=0.5, gt=0, description="CPUs per replica; fractions allowed.")
    num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs per replica; fractions such as 0.25 share a device."
    )
    max_replicas_per_node: int | None = Field(
        default=None,
        ge=1,
        description="At most this many replicas of one version on a node (1 spreads them "
        "over the cluster's nodes, so that one node's loss leaves the others serving).",
    )
    max_ongoing_requests: int = Field(
        default=8,
        ge=1,
        description="Requests one replica may hold at once; at least max_batch_size.",
    )
    max_queued_requests: int = Field(
        default=32,
        ge=-1,
        description="Requests each gateway replica lets wait for this version's replicas "
        "beyond max_ongoing_requests; past it a request gets 503 with Retry-After at once "
        "instead of a time-out (-1: no bound, Ray's default).",
    )
    rollout: RolloutPolicy | None = Field(
        default=None,
        description="Progressive rollout of a new challenger; without one, the challenger's "
        "weight is set by hand (PUT /admin/models/{name}/traffic) and starts at 0.",
    )
    shadow_fraction: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests mirrored to the shadow version."
    )
    shadow_timeout_s: float = Field(
        default=2.0, gt=0, description="A shadow call slower than this is dropped and counted."
    )
    shadow_max_in_flight: int = Field(
        default=32, ge=1, description="Shadow calls in flight per gateway replica; beyond, dropped."
    )
    allow_version_override: bool = Field(
        default=False, description="Honour a request's X-Model-Version header for this model."
    )
    sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of this model's predictions written to the inference log (a label "
        "joins only a logged prediction).",
    )
    log_inputs: bool = Field(
        default=True,
        description="Write request inputs to the inference log; false for data that must not "
        "be stored (outputs, ids and timings are still logged).",
    )
    truncate: bool = Field(
        default=True,
        description="Text models: a text longer than the model reads is cut to fit (as Hugging "
        "Face pipelines do with truncation=True); false answers 422 with the limit instead.",
    )
    task: Task = Field(
        default="auto",
        description="How labels are judged: classification (accuracy) or regression (MAE, "
        "RMSE); auto decides from the version's example output (a float is regression).",
    )
    idle_to_zero_s: float | None = Field(
        default=None,
        gt=0,
        description="Scale a version to zero replicas once it has had no request for about "
        "this long (Ray Serve autoscaling with min_replicas 0); its next request waits for a "
        "replica. Unset: replicas stay up.",
    )
    cold_start_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="With idle_to_zero_s: how long a request waits for a version at zero "
        "replicas to start; past it, 503 with Retry-After.",
    )
    require_approval: bool = Field(
        default=False,
        description="A new champion serves only once approved (POST /admin/models/{name}/"
        "versions/{version}/approve, a key with the approve scope); until then the current "
        "champion keeps serving and the version is tagged modellane.blocked.",
    )

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> ModelDeploymentConfig:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        if self.idle_to_zero_s is not None and self.autoscaling_config is not None:
            floor = self.autoscaling_config.get("min_replicas", 0)
            if floor not in (0, None):
                raise ValueError(
                    f"idle_to_zero_s scales to zero replicas: autoscaling_config.min_replicas "
                    f"must be 0 or unset, not {floor}"
                )
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no bound) or at least 1")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                f"max_batch_size ({self.max_batch_size}): a replica must be able to hold "
                "a full batch"
            )
        return self

    def batch_settings(self) -> BatchSettings:
        return BatchSettings.model_validate(
            self.model_dump(include=set(BatchSettings.model_fields))
        )

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments for ``Deployment.options`` of this model's ModelServer."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "user_config": self.batch_settings().model_dump(),
        }
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        scaling = self.scaling()
        if scaling is not None:
            options["autoscaling_config"] = scaling
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options

    def scaling(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config for this model, None for a fixed replica count.

        With ``idle_to_zero_s``: ``min_replicas`` 0, from ``num_replicas`` (or 1) at most,
        and one replica at deploy time, so that a version is loaded and validated on its
        input example before it takes traffic, as every version is."""
        if self.idle_to_zero_s is None:
            return self.autoscaling_config
        scaling: dict[str, Any] = {
            "max_replicas": self.num_replicas or 1,
            "upscale_delay_s": 0.0,
            "downscale_delay_s": self.idle_to_zero_s,
            **(self.autoscaling_config or {}),
        }
        scaling["min_replicas"] = 0
        scaling["initial_replicas"] = max(1, int(scaling.get("initial_replicas") or 1))
        scaling["downscale_to_zero_delay_s"] = self.idle_to_zero_s
        return scaling


def _default_tracking_uri() -> str:
    return os.environ.get(constants.ENV_TRACKING_URI, constants.DEFAULT_TRACKING_URI)


class LimitSettings(BaseModel):
    """Bounds on what one request may carry (beyond ``max_body_bytes``); over them, a 4xx."""

    model_config = ConfigDict(extra="forbid")

    max_batch_items: int = Field(
        default=constants.DEFAULT_MAX_BATCH_ITEMS,
        ge=1,
        description="Most rows (records, texts, tensor elements along the batch axis) in one "
        "request; more get 422.",
    )
    max_string_chars: int = Field(
        default=constants.DEFAULT_MAX_STRING_CHARS,
        ge=1,
        description="Longest string anywhere in a request body; longer get 422.",
    )
    max_json_depth: int = Field(
        default=constants.DEFAULT_MAX_JSON_DEPTH,
        ge=2,
        description="Deepest nesting of JSON arrays and objects in a request body; deeper get 422.",
    )


def _default_log_uri() -> str | None:
    return os.environ.get(constants.ENV_INFERENCE_LOG_URI) or None


class InferenceLogSettings(BaseModel):
    """``inference_log`` in serve_config.yaml: every answered prediction, as Parquet."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(
        default_factory=_default_log_uri,
        description="Folder or pyarrow filesystem URI (s3://, gs://, a shared path) of the log "
        "and labels. Defaults to $MODELLANE_INFERENCE_LOG_URI; unset, nothing is logged.",
    )
    flush_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="A gateway replica writes its buffer this often."
    )
    max_buffer_records: int = Field(
        default=20_000,
        ge=1,
        description="Records a gateway replica holds unwritten; beyond, new ones are dropped "
        "and counted (the answer never waits for the log).",
    )
    compact_interval_s: float = Field(
        default=300.0, gt=0, description="How often small files are merged."
    )
    compact_min_files: int = Field(
        default=20, ge=2, description="A partition with this many small files is compacted."
    )
    retention_days: float = Field(
        default=30.0, gt=0, description="Partitions older than this are deleted."
    )


class FeedbackSettings(BaseModel):
    """``feedback`` in serve_config.yaml: labels and the live quality computed from them."""

    model_config = ConfigDict(extra="forbid")

    max_delay_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="A label may arrive up to this long after its prediction.",
    )
    window: int = Field(
        default=1000,
        ge=10,
        description="Live quality of a version: its most recent this many labelled predictions.",
    )
    refresh_s: float = Field(
        default=5.0, gt=0, le=60, description="How often live quality is computed."
    )
    mlflow_interval_s: float = Field(
        default=60.0, gt=0, description="How often live quality is written to MLflow."
    )
    history_points: int = Field(
        default=720, ge=10, description="Points of quality history kept per model, for charts."
    )


class DiscoverySettings(BaseModel):
    """``discover`` in serve_config.yaml: serve registered models the registry marks."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, description="Serve every registered model that carries the tag."
    )
    tag: str = Field(
        default=constants.TAG_SERVE,
        min_length=1,
        description="The registered-model tag that asks for serving (value: 'true').",
    )
    name_regex: str | None = Field(
        default=None,
        description="Only models whose whole name matches this regular expression.",
    )

    @field_validator("name_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"name_regex {pattern!r} is not a regular expression: {exc}"
                ) from exc
        return pattern

    def wants(self, name: str) -> bool:
        """Whether a tagged model of this name is to be served."""
        return self.name_regex is None or re.fullmatch(self.name_regex, name) is not None


def valid_model_name(name: str) -> bool:
    """Whether ``name`` can be served (it becomes part of a Ray Serve application name)."""
    return _MODEL_NAME.fullmatch(name) is not None


class AppArgs(BaseModel):
    """Arguments of the control application (gateway + registry watcher)."""

    # A key pasted by mistake where a hash belongs must not be echoed in an error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    mlflow_tracking_uri: str = Field(
        default_factory=_default_tracking_uri,
        description="MLflow tracking server every node can reach. "
        "Defaults to $MLFLOW_TRACKING_URI, else http://127.0.0.1:5000.",
    )
    models: dict[str, ModelDeploymentConfig] = Field(
        default_factory=dict,
        description="Registered models to serve, by MLflow registered model name, each with "
        "its own settings.",
    )
    model_defaults: ModelDeploymentConfig = Field(
        default_factory=ModelDeploymentConfig,
        description="Settings of the models served by discovery (not listed under models).",
    )
    discover: DiscoverySettings = Field(
        default_factory=DiscoverySettings,
        description="Serve registered models tagged modellane.serve=true (discovery).",
    )
    max_body_bytes: int = Field(
        default=constants.DEFAULT_MAX_BODY_BYTES,
        gt=0,
        description="Largest request body the gateway accepts; larger bodies get 413.",
    )
    limits: LimitSettings = Field(
        default_factory=LimitSettings,
        description="Batch size, string length and nesting limits of request bodies.",
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="API keys (stored as SHA-256 hashes) with scopes and rate limits. /admin "
        "always needs an admin key; prediction needs a predict key unless turned off.",
    )
    poll_interval_s: float = Field(
        default=constants.DEFAULT_POLL_INTERVAL_S,
        gt=0,
        description="How often the registry watcher reads the MLflow registry.",
    )
    keep_previous_s: float = Field(
        default=constants.DEFAULT_KEEP_PREVIOUS_S,
        ge=0,
        description="How long a replaced version stays deployed (warm) so a rollback is instant.",
    )
    drift: DriftSettings = Field(
        default_factory=DriftSettings,
        description="Input drift: how often it is measured, the window, the PSI threshold, "
        "the alert cool-down and webhook.",
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings,
        description="Where alerts go (a webhook, e-mail over SMTP) and how often: drift, "
        "rollbacks, failed loads, the registry unreachable.",
    )
    routing_key_header: str = Field(
        default=constants.DEFAULT_ROUTING_KEY_HEADER,
        description="Request header whose value pins a user to one arm (sticky assignment).",
    )
    inference_log: InferenceLogSettings = Field(
        default_factory=InferenceLogSettings,
        description="Where and how every answered prediction is logged (Parquet).",
    )
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings,
        description="Labels (POST /v1/models/{name}/feedback) and live quality per version.",
    )
    batch: JobSettings = Field(
        default_factory=JobSettings,
        description="Batch jobs (POST /admin/jobs): the CPU cap, actors, batch size, priority.",
    )
    audit: AuditSettings = Field(
        default_factory=AuditSettings,
        description="Where the audit trail (GET /admin/events) is kept, and for how long.",
    )
    approval: ApprovalSettings = Field(
        default_factory=ApprovalSettings,
        description="Rules of approvals, for models with require_approval.",
    )
    deploy_timeout_s: float = Field(
        default=constants.DEFAULT_DEPLOY_TIMEOUT_S,
        gt=0,
        description="How long a version application may take to become healthy.",
    )

    @field_validator("models")
    @classmethod
    def _valid_names(
        cls, models: dict[str, ModelDeploymentConfig]
    ) -> dict[str, ModelDeploymentConfig]:
        for name in models:
            if not _MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"model name {name!r} must match {_MODEL_NAME.pattern} "
                    "(it becomes part of a Ray Serve application name)"
                )
        return models
