#!/usr/bin/env bash
# The test command: install if needed, then lint, type-check and run the whole suite.
# Unit tests need nothing running; integration tests start their own MLflow server and
# one Ray instance for the whole run (tests/integration/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh
# A real Prometheus for the observability test, a real browser for the console test, and a
# real PostgreSQL for the cluster test (MLflow and the audit trail on it): Debian's
# packages, where missing.
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[test] installing Debian's ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
source scripts/env.sh
unset RAY_ADDRESS  # the suite starts its own Ray; never attach it to a running stack

echo "[test] ruff"
ruff check .
ruff format --check .
echo "[test] mypy"
mypy
echo "[test] deptry"
# app/ and deployments/ against the runtime dependencies ([tool.deptry] in pyproject.toml),
# then scripts/ and tests/: they may import dev dependencies, and nothing undeclared.
deptry .
deptry . --exclude '\.venv/|\.git/|mlflow/|app/|deployments/' --ignore DEP002,DEP004
echo "[test] pytest"
exec pytest "$@"
