"""Defaults and environment variable names, in one place."""

from __future__ import annotations

SERVER_NAME = "modellane"
SERVER_VERSION = "0.1.0"

# Applications and names
CONTROL_APP_NAME = "modellane"
GATEWAY_DEPLOYMENT = "Gateway"
WATCHER_DEPLOYMENT = "RegistryWatcher"
MODEL_SERVER_DEPLOYMENT = "ModelServer"
LIMITER_DEPLOYMENT = "RateLimiter"

# Roles (issue 4 adds challenger and shadow traffic; the names are fixed now).
ROLE_CHAMPION = "champion"
ROLE_CHALLENGER = "challenger"
ROLE_SHADOW = "shadow"
STAGE_PRODUCTION = "Production"
STAGE_STAGING = "Staging"

# Environment variables
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MAX_BODY_BYTES = "MODELLANE_MAX_BODY_BYTES"
#: Where the inference log and labels live when serve_config.yaml names no
#: ``inference_log.uri`` (scripts/up.sh sets it to .run/inference_log).
ENV_INFERENCE_LOG_URI = "MODELLANE_INFERENCE_LOG_URI"

# Defaults
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_BATCH_ITEMS = 1000
DEFAULT_MAX_STRING_CHARS = 20_000
DEFAULT_MAX_JSON_DEPTH = 32
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_TABLE_WAIT_S = 30.0
DEFAULT_DEPLOY_TIMEOUT_S = 600.0
DEFAULT_KEEP_PREVIOUS_S = 300.0
DEFAULT_ROLLBACK_WAIT_S = 120.0

# Tags modellane writes into the MLflow registry (all under "modellane.").
#: How often the watcher writes waiting audit events to the audit store.
AUDIT_FLUSH_S = 1.0
TAG_PREFIX = "modellane."
TAG_SWITCHED_AT = "modellane.switched_at"  # on a version: when it last became champion
TAG_SWITCH = "modellane.last_switch"  # on a version: from which version, why
TAG_LOAD_ERROR = "modellane.load_error"  # on a version: why it failed to load or validate
TAG_FAILED_AT = "modellane.failed_at"
TAG_PREVIOUS_CHAMPION = "modellane.previous_champion"  # on a model: the champion before
TAG_WEIGHT = "modellane.weight"  # on a challenger version: its traffic weight in percent
TAG_ROLLOUT = "modellane.rollout"  # on a challenger version: rollout status and step (JSON)
TAG_ROLLOUT_RESULT = "modellane.rollout_result"  # on a version: promoted / rolled back, why
TAG_FAILED_GATE = "modellane.failed_gate"  # on a version: the gate and figures that failed
TAG_ROLLOUT_POLICY = "modellane.rollout_policy"  # on a challenger: its own policy (JSON)
TAG_SHADOW_FRACTION = "modellane.shadow_fraction"  # on a shadow: its own share of requests
TAG_SERVE = "modellane.serve"  # on a model: "true" has it discovered and served
TAG_QUALITY_RUN = "modellane.quality_run"  # on a version: the MLflow run of its live quality

DEFAULT_ROUTING_KEY_HEADER = "X-Routing-Key"
ROLLOUT_TICK_S = 1.0
#: Threads of the watcher's blocking work (registry calls, ``serve.run`` waits, log reads).
#: Ray sizes a replica's pool from its num_cpus (0.05: five threads); a few deploys that
#: wait minutes for health would then hold a rollback's registry write in the queue.
WATCHER_THREADS = 32
STATS_REPORT_S = 1.0

# Response headers
HEADER_MODEL_VERSION = "X-Model-Version"
HEADER_MODEL_ROLE = "X-Model-Role"

# The watcher must notice an unreachable registry in seconds, not after MLflow's default
# retries (minutes); operators may override these in the environment.
REGISTRY_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Never download weights from a hub at run time.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def version_app_name(model: str, version: str) -> str:
    """The Ray Serve application name of one model version: ``<model>-v<version>``."""
    return f"{model}-v{version}"
