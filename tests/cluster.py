"""A multi-node Ray cluster on this machine with the modellane stack on it, for tests.

Ray's own test tooling (``ray.cluster_utils.Cluster``) starts a head node and worker nodes
as separate raylets on loopback, each with its own resources: to Ray and to Serve's
scheduler they are different machines. One Python process holds the cluster (a process can
be the driver of one Ray cluster only, and the test process already drives the suite's
single-node one), so this module is run as a child process and steered by JSON lines on
its standard input; :class:`ClusterProcess` is the test side.

Commands: ``details`` (Serve's controller view: applications, replicas with their node and
pid, and the nodes), ``remove_node`` (kill every process of a worker node, as a host that
dies), ``add_nodes`` (new worker nodes up to the cluster's size again, after a removal),
``restart`` (stop the whole stack, Ray included, and start it again from the same config:
nothing survives but the MLflow registry), ``stop``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from app import constants
from tests.helpers import haproxy_env, wait_for

NODE_ARGS: dict[str, Any] = {"num_cpus": 1}
WORKERS = 2


def _start(config: dict[str, Any]) -> Any:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    # The head's dashboard serves Ray's Jobs API, and its agent runs the jobs: batch jobs
    # run on this cluster too.
    head = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": _port()}
    cluster = Cluster(initialize_head=True, head_node_args={**_node_args(), **head})
    for _ in range(WORKERS):
        cluster.add_node(**_node_args())
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    # One HTTP proxy, on the head: every node of this cluster shares the host's ports.
    serve.start(proxy_location="HeadOnly", http_options=config["http_options"])
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    return cluster


def _node_args() -> dict[str, Any]:
    """A node's arguments. Every node's dashboard agent gets a port of its own: they share
    this host with each other and with the suite's Ray, whose agent has Ray's default."""
    return {**NODE_ARGS, "dashboard_agent_listen_port": _port()}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(cluster: Any) -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def _details(cluster: Any) -> dict[str, Any]:
    import ray
    from ray.serve.context import _get_global_client

    return {
        "serve": _get_global_client().get_serve_details(),
        "head": cluster.head_node.node_id,
        "workers": sorted(node.node_id for node in cluster.worker_nodes),
        "alive": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
    }


def _remove(cluster: Any, node_id: str) -> dict[str, Any]:
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    cluster.remove_node(node, allow_graceful=False)
    return {"removed": node_id}


def _add_nodes(cluster: Any) -> dict[str, Any]:
    added = [
        cluster.add_node(**_node_args()).node_id for _ in range(WORKERS - len(cluster.worker_nodes))
    ]
    cluster.wait_for_nodes()
    return {"added": added}


def main(config_path: str) -> None:
    import yaml

    config = yaml.safe_load(Path(config_path).read_text())
    cluster = _start(config)
    _reply({"started": True})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            op = command["op"]
            if op == "details":
                _reply(_details(cluster))
            elif op == "remove_node":
                _reply(_remove(cluster, command["node_id"]))
            elif op == "add_nodes":
                _reply(_add_nodes(cluster))
            elif op == "restart":
                _stop(cluster)
                cluster = _start(config)
                _reply({"restarted": True})
            elif op == "stop":
                break
            else:
                _reply({"error": f"unknown op {op!r}"})
        except Exception as exc:  # report, and stay up for the next command
            _reply({"error": f"{type(exc).__name__}: {exc}"})
    _stop(cluster)


def watcher_nodes(details: dict[str, Any]) -> set[str]:
    """Nodes of the RegistryWatcher's replicas, in an answer to ``details``."""
    app = details["serve"].get("applications", {}).get(constants.CONTROL_APP_NAME, {})
    deployment = app.get("deployments", {}).get(constants.WATCHER_DEPLOYMENT, {})
    return {r["node_id"] for r in deployment.get("replicas", [])}


#: Answers start with this; Ray's node processes share the child's stdout and print there too.
MARK = "@@cluster "


def _reply(answer: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(answer, default=str) + "\n")
    sys.stdout.flush()


class ClusterProcess:
    """The test side: start the child, send commands, read answers, stop it."""

    def __init__(self, config_path: Path, log_path: Path, cwd: Path) -> None:
        self._log = log_path.open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster", str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=cwd,
            start_new_session=True,  # its Ray processes are ours to stop, by this group id
            # HAProxy's socket path must stay under 97 characters: a short folder.
            env={**os.environ, **haproxy_env(Path(tempfile.mkdtemp(prefix="hap")))},
        )
        self._lock = threading.Lock()

    def read(self, timeout_s: float) -> dict[str, Any]:
        """The next answer; fail after ``timeout_s`` (the child's log says why)."""
        answer: list[str] = []

        def next_answer() -> None:
            assert self._process.stdout is not None
            for line in self._process.stdout:
                if line.startswith(MARK):
                    answer.append(line[len(MARK) :])
                    return

        reader = threading.Thread(target=next_answer, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not answer:
            raise TimeoutError(f"no answer from the cluster process in {timeout_s}s")
        parsed: dict[str, Any] = json.loads(answer[0])
        if "error" in parsed:
            raise RuntimeError(parsed["error"])
        return parsed

    def ask(self, op: str, timeout_s: float = 120, **args: Any) -> dict[str, Any]:
        with self._lock:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self._process.stdin.flush()
            return self.read(timeout_s)

    def replica_nodes(self, model: str, version: str) -> list[str]:
        """Node ids of the RUNNING replicas of ``model`` version ``version``."""
        apps = self.ask("details")["serve"].get("applications", {})
        app = apps.get(constants.version_app_name(model, version))
        if not app:
            return []
        replicas = app["deployments"][constants.MODEL_SERVER_DEPLOYMENT]["replicas"]
        return [r["node_id"] for r in replicas if r["state"] == "RUNNING"]

    def replace_removed_workers(self) -> None:
        """Back to the cluster's size: a new worker node for each one removed."""
        self.ask("add_nodes", timeout_s=300)
        wait_for(lambda: len(self.ask("details")["alive"]) == WORKERS + 1, 120, "nodes alive")

    def stop(self) -> None:
        try:
            if self._process.poll() is None:
                assert self._process.stdin is not None
                self._process.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self._process.stdin.close()
                self._process.wait(timeout=90)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)
        finally:
            self._log.close()


if __name__ == "__main__":
    main(sys.argv[1])
