#!/usr/bin/env bash
# Update requirements.lock from pyproject.toml: the runtime dependencies, the dev extra and
# the build backend, each pinned to one version with the hashes of its files. Arguments go
# to pip-compile:
#   scripts/lock.sh               # after editing pyproject.toml; the other pins stay
#   scripts/lock.sh --upgrade     # every package to the newest release pyproject.toml allows
#   scripts/lock.sh -P mlflow     # one package to its newest allowed release
# scripts/install.sh then installs the new lock. docs/install.md says more.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# pip-compile resolves with pip, so it finds what pip finds here: the CPU torch in
# /opt/wheels and the local indexes that pip's configuration names (docs/install.md).
if [ ! -x .venv/bin/pip-compile ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # Only the resolver, at the lock's version: the lock may be the thing that is out of date.
  .venv/bin/python -m pip install --quiet "$(grep -o '^pip-tools==[^ ]*' requirements.lock)"
fi
echo "[lock] resolving pyproject.toml into requirements.lock (a few minutes)"
# The header of the lock names this script as the way to update it.
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" .venv/bin/pip-compile --quiet \
  --extra dev --build-deps-for editable --generate-hashes --allow-unsafe --strip-extras \
  --output-file requirements.lock "$@" pyproject.toml
# The CPU torch, and so no CUDA libraries (nvidia-ml-py is NVML's bindings, not CUDA).
cuda=$(grep -iE '^(nvidia-|cuda-|triton==)' requirements.lock | grep -iv '^nvidia-ml-py==' || true)
if ! grep -q '^torch==[^ ]*+cpu ' requirements.lock || [ -n "$cuda" ]; then
  echo "[lock] requirements.lock holds a CUDA build of torch (docs/install.md):" >&2
  grep -iE '^torch==' requirements.lock >&2
  echo "${cuda}" >&2
  exit 1
fi
echo "[lock] requirements.lock updated; scripts/install.sh installs it"
