# Source this in your shell to use the CLIs against the stack scripts/up.sh started:
#   source scripts/env.sh && serve status
# Ray 2.60 guards its dashboard and REST API (what `serve deploy` and `serve status` call)
# with a token: `ray get-auth-token --generate` wrote it to ~/.ray/auth_token, and the
# clients send it when RAY_AUTH_MODE=token is set.
_modellane_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PATH="$_modellane_root/.venv/bin:$PATH"
export RAY_AUTH_MODE=token
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}
# Where scripts/up.sh keeps the inference log (`modellane log sql`, `modellane log tail`).
export MODELLANE_INFERENCE_LOG_URI=${MODELLANE_INFERENCE_LOG_URI:-$_modellane_root/.run/inference_log}
# Ray Serve's request-path options, on by default (docs/performance.md says what each
# changes): gRPC between replicas, direct ingress, HAProxy in front of the gateway replicas.
# Set either to 0 before sourcing for Ray's defaults; Ray's processes read them at start.
export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}
export RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset _modellane_root
