#!/usr/bin/env bash
# Stop what scripts/up.sh started, by the process ids it recorded (each in its own
# process group: the Ray head's `ray start --block` takes its daemons with it).
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=.run

stop() {  # stop NAME
  local pidfile="$RUN/$1.pid" pid
  [ -f "$pidfile" ] || { echo "[down] $1: not started by up.sh"; return; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "[down] stopping $1 (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  else
    echo "[down] $1: already stopped"
  fi
  rm -f "$pidfile"
}

# First a graceful Serve shutdown: each gateway replica writes what its inference log holds
# (a plain stop of the Ray head would lose up to one flush interval of records).
if [ -f "$RUN/ray.pid" ] && kill -0 "$(cat "$RUN/ray.pid")" 2>/dev/null; then
  # shellcheck source=scripts/env.sh
  source scripts/env.sh
  echo "[down] serve shutdown (gateways flush their inference log)"
  timeout 120 serve shutdown --yes >/dev/null 2>&1 || echo "[down] serve shutdown failed; stopping Ray anyway"
fi
stop ray
stop mlflow
