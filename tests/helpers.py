"""Test helpers shared by every layer."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.security.auth import generate_key

REPO = Path(__file__).resolve().parents[1]

#: API keys of the integration test stack, new for every run (only their hashes go into
#: its configuration): an admin key, a predict key, a predict key with a low limit, and a
#: key that may only run batch jobs.
ADMIN_KEY, PREDICT_KEY, LIMITED_KEY = generate_key(), generate_key(), generate_key()
BATCH_KEY = generate_key()
APPROVE_KEY = generate_key()  # the "lead" key: the approve scope only
LIMITED_RATE_PER_S, LIMITED_BURST = 2.0, 4
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
PREDICT_HEADERS = {"Authorization": f"Bearer {PREDICT_KEY}"}


def wine_row(value: float = 1.0) -> dict[str, float]:
    """One input row of the demo's ``wine`` (its columns as logged: ``/`` made ``_``)."""
    from sklearn.datasets import load_wine

    return {c.replace("/", "_"): value for c in load_wine(as_frame=True).data.columns}


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.5
) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the condition may raise until the thing is up
            last_error = exc
        time.sleep(every_s)
    raise TimeoutError(
        f"timed out after {timeout_s}s waiting for {what}; last error: {last_error!r}"
    )


def throttled(condition: Callable[[], object], every_s: float = 0.5) -> Callable[[], bool]:
    """``condition``, asked at most every ``every_s`` (its last answer in between) and never
    again once true: for a load's ``until``, which runs between requests."""
    last = {"at": float("-inf"), "value": False}

    def check() -> bool:
        now = time.monotonic()
        if not last["value"] and now - last["at"] >= every_s:
            last["at"], last["value"] = now, bool(condition())
        return bool(last["value"])

    return check


def haproxy_env(directory: Path) -> dict[str, str]:
    """Where Ray's request-path options are on (scripts/env.sh), what gives a Ray instance's
    HAProxy its own files and its own stats and exporter ports: Ray's defaults are fixed
    (8404, 9101, /tmp/haproxy-serve), and two instances (the suite's, the cluster test's, a
    running scripts/up.sh) must never meet. Empty where HAProxy is off."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return {}
    ports = []
    for _ in range(3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(str(sock.getsockname()[1]))
    return {
        "RAY_SERVE_HAPROXY_STATS_PORT": ports[0],
        "RAY_SERVE_HAPROXY_METRICS_PORT": ports[1],
        # Where gRPC is on (test_grpc), the head's fallback Serve proxy serves it on 9500.
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": ports[2],
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
    }
