#!/usr/bin/env bash
# Bring up modellane locally: install, MLflow tracking server, demo models, Ray head,
# `serve deploy serve_config.yaml`; return once every model answers. Running it twice is
# harmless: what already runs is left as it is. scripts/down.sh stops what this started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MLFLOW_PORT=5000
GATEWAY=http://127.0.0.1:8000
DASHBOARD_PORT=8265
RAY_GCS_PORT=6379
METRICS_EXPORT_PORT=8080   # Ray's Prometheus metrics endpoint (fixed for configs/prometheus.yml)
READY_TIMEOUT_S=${MODELLANE_READY_TIMEOUT_S:-900}
RUN=.run
mkdir -p "$RUN" mlflow/artifacts

scripts/install.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "[up] timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

# 1. MLflow tracking server: SQLite store and artifacts under mlflow/, loopback only.
if curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then
  echo "[up] MLflow already answers on :$MLFLOW_PORT"
else
  echo "[up] starting MLflow on 127.0.0.1:$MLFLOW_PORT"
  setsid nohup mlflow server \
    --backend-store-uri "sqlite:///$ROOT/mlflow/mlflow.db" \
    --artifacts-destination "$ROOT/mlflow/artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    >"$RUN/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$RUN/mlflow.pid"
  wait_for 120 "MLflow" curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
fi

# 2. Demo models, only those the registry lacks.
python scripts/register_demo_models.py --tracking-uri "$MLFLOW_TRACKING_URI" --if-empty \
  2>&1 | grep -E "^(iris|minilm|sentiment)" || true

# 3. Ray head, with token authentication on its dashboard and REST API.
ray get-auth-token --generate >/dev/null

# The gateway's API keys, for local development: an admin key made once and kept in
# .run/admin.key (mode 600); Ray's processes get only its hash. Prediction is left open
# here (MODELLANE_PREDICT_AUTH=off); outside local development it needs a key.
if [ ! -s "$RUN/admin.key" ] || [ ! -s "$RUN/api_keys.json" ]; then
  ( umask 077
    python -m app.security.auth new --name local-admin --scopes admin 2>/dev/null > "$RUN/admin.new"
    head -1 "$RUN/admin.new" > "$RUN/admin.key"
    echo "[$(tail -1 "$RUN/admin.new")]" > "$RUN/api_keys.json"
    rm -f "$RUN/admin.new" )
fi
MODELLANE_API_KEYS="$(cat "$RUN/api_keys.json")"
export MODELLANE_API_KEYS
# The inference log and labels (Parquet), unless serve_config.yaml names another place.
export MODELLANE_INFERENCE_LOG_URI="${MODELLANE_INFERENCE_LOG_URI:-$ROOT/$RUN/inference_log}"
export MODELLANE_PREDICT_AUTH="${MODELLANE_PREDICT_AUTH:-off}"
# The audit trail (GET /admin/events): a SQLite file next to the MLflow store, unless
# serve_config.yaml names a database (audit.db_uri; docs/audit.md).
export MODELLANE_AUDIT_DB_URI="${MODELLANE_AUDIT_DB_URI:-sqlite:///$ROOT/mlflow/audit.db}"
if alive "$RUN/ray.pid" || ray status --address "127.0.0.1:$RAY_GCS_PORT" >/dev/null 2>&1; then
  echo "[up] Ray head already running"
else
  echo "[up] starting the Ray head"
  setsid nohup ray start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 \
    --port "$RAY_GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --metrics-export-port "$METRICS_EXPORT_PORT" --num-cpus 4 \
    >"$RUN/ray.log" 2>&1 < /dev/null &
  echo $! > "$RUN/ray.pid"
  wait_for 120 "the Ray dashboard" serve status
fi

# 4. The control application; the registry watcher deploys each champion version.
echo "[up] serve deploy serve_config.yaml"
serve deploy serve_config.yaml
echo "[up] waiting for every model to have a healthy champion (first start loads the models)"
if ! wait_for "$READY_TIMEOUT_S" "the gateway to be ready" curl -sf "$GATEWAY/readyz"; then
  curl -s "$GATEWAY/readyz" >&2 || true
  serve status >&2 || true
  exit 1
fi

cat <<MSG

modellane is up.
  gateway        $GATEWAY          (e.g. curl $GATEWAY/v1/models)
  OpenAPI docs   $GATEWAY/docs
  Ray dashboard  http://127.0.0.1:$DASHBOARD_PORT   (token: ray get-auth-token)
  admin API key  in $RUN/admin.key   (curl -H "Authorization: Bearer \$(cat $RUN/admin.key)" ...)
  MLflow UI      http://127.0.0.1:$MLFLOW_PORT
  audit trail    $MODELLANE_AUDIT_DB_URI   (modellane events; docs/audit.md)
  inference log  $MODELLANE_INFERENCE_LOG_URI   (modellane log sql "select ..."; docs/inference-log.md)
For the CLIs (serve status, ray, mlflow): source scripts/env.sh
Stop everything: scripts/down.sh
MSG
