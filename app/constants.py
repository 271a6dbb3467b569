"""Defaults and environment variable names, in one place."""

from __future__ import annotations

# Applications and names
CONTROL_APP_NAME = "modellane"
GATEWAY_DEPLOYMENT = "Gateway"
WATCHER_DEPLOYMENT = "RegistryWatcher"
MODEL_SERVER_DEPLOYMENT = "ModelServer"

# Roles (issue 4 adds challenger and shadow traffic; the names are fixed now).
ROLE_CHAMPION = "champion"
ROLE_CHALLENGER = "challenger"
ROLE_SHADOW = "shadow"
STAGE_PRODUCTION = "Production"
STAGE_STAGING = "Staging"

# Environment variables
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MAX_BODY_BYTES = "MODELLANE_MAX_BODY_BYTES"

# Defaults
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_TABLE_WAIT_S = 30.0
DEFAULT_DEPLOY_TIMEOUT_S = 600.0

# Response headers
HEADER_MODEL_VERSION = "X-Model-Version"
HEADER_MODEL_ROLE = "X-Model-Role"

# Never download weights from a hub at run time.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def version_app_name(model: str, version: str) -> str:
    """The Ray Serve application name of one model version: ``<model>-v<version>``."""
    return f"{model}-v{version}"
