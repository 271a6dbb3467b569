#!/usr/bin/env bash
# Create .venv if missing and install exactly requirements.lock (the runtime and dev
# dependencies, each pinned with its files' hashes), then modellane itself, only when the
# lock or pyproject.toml changed since the last install. Safe to run any number of times.
# scripts/lock.sh updates the lock; docs/install.md says how and why.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.modellane-installed
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# pip warns once for each package a local index of pip's configuration does not hold.
unwarned() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] installing requirements.lock into .venv (a few minutes the first time)"
  # Every file is checked against the lock's hashes; torch is the CPU build in /opt/wheels.
  unwarned .venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
  # Uninstall what the lock no longer holds (modellane too: it goes back in just below).
  unwarned .venv/bin/pip-sync --quiet requirements.lock
  # The project itself, editable; its build backend is in the lock like everything else.
  unwarned .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  # A lock older than an edit of pyproject.toml would install without complaint.
  .venv/bin/python - <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

stale = []
for line in requires("modellane") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
        continue
    try:
        have = version(req.name)
    except PackageNotFoundError:
        stale.append(f"{req}: not in the lock")
        continue
    if not req.specifier.contains(have, prereleases=True):
        stale.append(f"{req}: the lock has {have}")
if stale:
    print("[install] requirements.lock is older than pyproject.toml; run scripts/lock.sh:")
    print("\n".join(f"  {s}" for s in stale))
    sys.exit(1)
EOF
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
