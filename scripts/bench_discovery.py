"""Twenty models served by discovery on one machine: what they cost idle and hot, how long a
cold start takes, and whether a hot model notices the others starting.

Called by ``scripts/bench.py`` inside its Ray session, after its other measurements, on the
stack it brought up (the bench process is Ray's driver, so Serve's state is read from the
controller). In order:

1. The control app gets ``model_defaults`` (a small replica that goes to zero after
   ``idle_to_zero_s`` idle); then the resident memory of the whole stack serving the demo
   models only: every process under the bench's (Ray's, HAProxy, the MLflow server), not the
   bench itself, which is the load's client.
2. N models registered as copies of iris's champion, alias ``champion``, tagged
   ``modellane.serve=true``; ``POST /admin/reload``; until each answers 200, then until each
   is at zero replicas with its replica gone; the stack's memory again.
3. Cold starts: one first request to each model at zero, one after another, timed until its
   answer.
4. Once all are at zero again: wrk on iris for the run length (steady), then the same length
   while a thread sends first requests to the cold models one after another.
5. Traffic to ``hot`` of the models until only they have replicas; the stack's memory; then
   idle again, and its memory once more (is memory given back?).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from app import constants

IDLE_TO_ZERO_S = 10.0
MODEL_DEFAULTS = {
    "num_cpus": 0.05,
    "max_ongoing_requests": 16,
    "idle_to_zero_s": IDLE_TO_ZERO_S,
    "cold_start_timeout_s": 180,
}


def _until(
    condition: Callable[[], object],
    timeout_s: float,
    what: str,
    detail: Callable[[], object] = lambda: "",
) -> float:
    """Poll ``condition`` every half second until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what} {detail()}")
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def _kind(process: psutil.Process, discovered: set[str]) -> str:
    """What a process of the stack is, for the breakdown (Ray names its workers ray::...)."""
    cmdline = " ".join(process.cmdline())
    if "ServeReplica:" in cmdline:
        app = cmdline.split("ServeReplica:", 1)[1].split(":", 1)[0]
        if app.rsplit("-v", 1)[0] in discovered:
            return "discovered model replicas"
        return "control app replicas" if app == "modellane" else "demo model replicas"
    for needle, kind in (
        ("ServeController", "serve controller"),
        ("haproxy", "haproxy"),
        ("mlflow", "mlflow server"),
        ("ray::", "other ray workers"),
    ):
        if needle in cmdline:
            return kind
    return "ray system (gcs, raylet, agents)"


def stack_memory(discovered: set[str] | None = None) -> dict[str, Any]:
    """Resident memory (MB) of every process under this one: RSS, the target's figure, and
    PSS (shared pages divided among the processes that share them), with a breakdown."""
    rss = pss = 0.0
    by_kind: dict[str, list[float]] = {}
    for process in psutil.Process().children(recursive=True):
        try:
            memory = process.memory_full_info()
            kind = _kind(process, discovered or set())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += memory.rss / 2**20
        pss += getattr(memory, "pss", memory.rss) / 2**20
        by_kind.setdefault(kind, []).append(memory.rss / 2**20)
    return {
        "rss_mb": round(rss, 1),
        "pss_mb": round(pss, 1),
        "processes": sum(len(v) for v in by_kind.values()),
        "by_kind": {k: round(sum(v), 1) for k, v in sorted(by_kind.items())},
    }


def tree_rss_mb(pid: int) -> dict[str, Any]:
    """RSS and PSS (MB) of a process and its children (``mlflow models serve`` and its
    server)."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    infos = [p.memory_full_info() for p in processes]
    return {
        "rss_mb": round(sum(i.rss for i in infos) / 2**20, 1),
        "pss_mb": round(sum(getattr(i, "pss", i.rss) for i in infos) / 2**20, 1),
        "processes": len(processes),
    }


def _replicas(app: str) -> dict[str, int]:
    """Replica counts by state of a version's ModelServer; empty once it has none."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or constants.MODEL_SERVER_DEPLOYMENT not in status.deployments:
        return {}
    states = status.deployments[constants.MODEL_SERVER_DEPLOYMENT].replica_states
    return {str(k): v for k, v in states.items() if v}


def _settled() -> bool:
    """Every replica of every application runs (none starting or stopping)."""
    from ray import serve

    for app in serve.status().applications.values():
        for deployment in app.deployments.values():
            if any(str(s) != "RUNNING" and n for s, n in deployment.replica_states.items()):
                return False
    return True


class Discovery:
    """The section's state: the stack's address, the models, the figures so far."""

    def __init__(self, base: str, key: str, body: dict[str, Any], count: int) -> None:
        self.base, self.body = base, body
        self.headers = {"Authorization": f"Bearer {key}"}
        self.names = [f"small{i:02d}" for i in range(count)]
        self.apps: dict[str, str] = {}  # model name -> its version's application

    def predict(self, name: str, timeout_s: float = 200) -> tuple[int, float]:
        """One request; its status and seconds until the answer (0 where none came)."""
        started = time.monotonic()
        try:
            answer = httpx.post(
                f"{self.base}/v1/models/{name}/predict",
                json=self.body,
                headers=self.headers,
                timeout=timeout_s,
            )
        except httpx.HTTPError:
            return 0, round(time.monotonic() - started, 3)
        return answer.status_code, round(time.monotonic() - started, 3)

    def register(self, registry: Any) -> None:
        """Each model: a copy of iris's champion, alias champion, tagged for serving."""
        source = registry.get_model_version_by_alias("iris", "champion")
        for name in self.names:
            registry.create_registered_model(name)
            version = registry.create_model_version(
                name, source=f"models:/iris/{source.version}", run_id=source.run_id
            )
            registry.set_registered_model_alias(name, "champion", version.version)
            registry.set_registered_model_tag(name, constants.TAG_SERVE, "true")
            self.apps[name] = constants.version_app_name(name, version.version)

    def all_answer(self) -> bool:
        return all(self.predict(name, timeout_s=30)[0] == 200 for name in self.names)

    def states(self) -> dict[str, dict[str, int]]:
        return {name: _replicas(app) for name, app in self.apps.items()}

    def at_zero(self, names: list[str] | None = None, gone: bool = False) -> bool:
        """No replica of these models runs (``gone``: none is left in any state)."""
        for name in names if names is not None else self.names:
            states = _replicas(self.apps[name])
            if (sum(states.values()) if gone else states.get("RUNNING", 0)) > 0:
                return False
        return True

    def idle(self, timeout_s: float = 300) -> dict[str, Any]:
        """Wait until every model is at zero and its replica has stopped; how long it took."""
        to_zero = _until(self.at_zero, timeout_s, "all at zero", self.states)
        try:
            gone = _until(lambda: self.at_zero(gone=True), 120, "their replicas stopped")
        except TimeoutError:
            gone = None  # a replica still stopping: said in the results
        return {"to_zero_s": to_zero, "replicas_gone_s": gone}

    def cold_starts(
        self,
        names: list[str],
        until: Callable[[], bool] | None = None,
        done: list[Any] | None = None,
    ) -> list[Any]:
        """First requests to models at zero, one after another, into ``done``: each
        ``[name, status, seconds]``; before each, stop where ``until()`` holds."""
        done = [] if done is None else done
        for name in names:
            if until is not None and until():
                break
            status, seconds = self.predict(name)
            done.append([name, status, seconds])
        return done


def _quantiles(cold: list[Any]) -> dict[str, Any]:
    seconds = sorted(s for _, status, s in cold if status == 200)
    if not seconds:
        return {"answered": 0, "of": len(cold)}
    return {
        "answered": len(seconds),
        "of": len(cold),
        "p50_s": round(statistics.median(seconds), 2),
        "p99_s": round(seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))], 2),
        "max_s": round(seconds[-1], 2),
        "min_s": round(seconds[0], 2),
    }


def measure(
    out: dict[str, Any],
    args: argparse.Namespace,
    redeploy: Callable[[dict[str, Any]], None],
    registry: Any,
    wrk: Callable[..., Any],
    base: str,
    admin: httpx.Client,
    key: str,
    body: dict[str, Any],
    runs: dict[str, Any],
) -> None:
    """The whole section, its figures written into ``out`` as they come (a failure keeps
    those taken before it); the target ratios under ``out["ratios"]``."""
    from ray import serve

    count, hot_count = (10, 3) if args.quick else (20, 5)
    d = Discovery(base, key, body, count)
    out.update(
        models=count,
        hot_models=hot_count,
        model_defaults=MODEL_DEFAULTS,
        memory={},
        cold_start_order="sequential: one first request at a time, each to a model at zero",
    )
    print(f"[bench] discovery: model_defaults {MODEL_DEFAULTS}; the demo models' stack")
    redeploy(MODEL_DEFAULTS)
    _until(_settled, 300, "every replica running, none stopping")
    out["apps_demo_only"] = sorted(serve.status().applications)
    out["memory"]["demo_only"] = stack_memory()

    print(f"[bench] discovery: registering {count} copies of iris, tagged {constants.TAG_SERVE}")
    d.register(registry)
    discovered = set(d.names)
    started = time.monotonic()
    admin.post("/admin/reload")
    _until(d.all_answer, 1200, f"all {count} discovered models to answer 200")
    out["all_answer_s"] = round(time.monotonic() - started, 1)
    print(f"[bench] discovery: all {count} answer after {out['all_answer_s']} s; to zero")
    out["first_idle"] = d.idle()
    out["memory"]["idle"] = stack_memory(discovered)

    print("[bench] discovery: cold starts, one after another")
    cold = d.cold_starts(d.names)
    out["cold_start"] = {"each": cold, **_quantiles(cold)}
    print(f"[bench] discovery: cold starts {out['cold_start']}")

    out["second_idle"] = d.idle()
    url = f"{base}/v1/models/iris/predict"
    common = dict(concurrency=args.concurrency, key=key, seconds=args.seconds)
    runs["iris_before_cold_starts"] = wrk(
        "iris steady, discovered models at zero", url, body, warmup_s=args.warmup, **common
    )
    stop = threading.Event()
    during: list[Any] = []
    starter = threading.Thread(
        target=d.cold_starts, args=(d.names, stop.is_set, during), daemon=True
    )
    starter.start()
    try:
        runs["iris_during_cold_starts"] = wrk(
            "iris while discovered models cold-start", url, body, **common
        )
    finally:
        stop.set()
        starter.join(timeout=240)
    out["cold_start_under_load"] = {"each": during, **_quantiles(during)}

    hot = d.names[:hot_count]
    print(f"[bench] discovery: traffic to {hot}; until only they have replicas")
    sent: dict[int, int] = {}
    stop_hot = threading.Event()

    def traffic(name: str) -> None:
        # A thread per model: one model's cold start must not leave another idle.
        while not stop_hot.is_set():
            status = d.predict(name, timeout_s=200)[0]
            with lock:
                sent[status] = sent.get(status, 0) + 1

    lock = threading.Lock()
    senders = [threading.Thread(target=traffic, args=(n,), daemon=True) for n in hot]
    for sender in senders:
        sender.start()
    try:
        rest = [n for n in d.names if n not in hot]
        out["hot_settled_s"] = _until(
            lambda: (all(_replicas(d.apps[n]).get("RUNNING") == 1 for n in hot)
                     and d.at_zero(rest, gone=True)),
            300, "only the hot models with replicas", d.states,
        )  # fmt: skip
        out["memory"]["hot"] = stack_memory(discovered)
    finally:
        stop_hot.set()
        for sender in senders:
            sender.join(timeout=240)
    out["hot_traffic_answers"] = {str(k): v for k, v in sorted(sent.items())}
    out["third_idle"] = d.idle()
    out["memory"]["idle_again"] = stack_memory(discovered)

    memory = out["memory"]
    demo = memory["demo_only"]["rss_mb"]
    steady, loaded = runs["iris_before_cold_starts"], runs["iris_during_cold_starts"]
    out["ratios"] = {
        "discovery_idle_rss_vs_demo": _ratio(memory["idle"]["rss_mb"], demo),
        "discovery_hot_rss_vs_demo": _ratio(memory["hot"]["rss_mb"], demo),
        "discovery_hot_p99_vs_steady": _ratio(loaded.p99_ms, steady.p99_ms),
        "discovery_cold_start_p50_s": out["cold_start"].get("p50_s"),
        "discovery_cold_start_p99_s": out["cold_start"].get("p99_s"),
    }


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None


def markdown(results: dict[str, Any]) -> list[str]:
    """The section's lines for bench/results.md (none where it did not run)."""
    out = results.get("discovery")
    if not out:
        return []
    n, memory = out.get("models"), out.get("memory", {})
    cold, under = out.get("cold_start", {}), out.get("cold_start_under_load", {})
    peer = results.get("peer_memory", {}).get("idle")
    lines = [
        "",
        f"Discovery: {n} copies of iris served by discovery with model_defaults "
        f"{out.get('model_defaults')}; all answered {out.get('all_answer_s')} s after the "
        "reload." + (f" **Failed**: {out['error']}" if "error" in out else ""),
        "",
        "| stack: every process under the bench (Ray's, HAProxy, MLflow's) | RSS MB | PSS MB "
        "| processes |",
        "|---|---:|---:|---:|",
    ]
    for key, what in (
        ("demo_only", "demo models only (iris, minilm)"),
        ("idle", f"+ {n} discovered, all at zero"),
        ("hot", f"+ {n} discovered, {out.get('hot_models')} of them hot"),
        ("idle_again", f"+ {n} discovered, all at zero again"),
    ):
        m = memory.get(key) or {}
        lines.append(f"| {what} | {m.get('rss_mb')} | {m.get('pss_mb')} | {m.get('processes')} |")
    without = [
        m["rss_mb"] - m["by_kind"].get("mlflow server", 0)
        for m in (memory.get("demo_only"), memory.get("idle"))
        if m
    ]
    if len(without) == 2:
        lines.append(
            f"| the stack without the MLflow server: demo only, then {n} at zero "
            f"(x{_ratio(without[1], without[0])}) | {round(without[0], 1)}, "
            f"{round(without[1], 1)} | | |"
        )
    if peer:
        lines.append(
            f"| `mlflow models serve`, iris, idle: one model (x{n}: "
            f"{round(peer['rss_mb'] * (n or 20))} MB) | {peer['rss_mb']} | {peer['pss_mb']} "
            f"| {peer['processes']} |"
        )
    first = out.get("first_idle", {})
    lines += [
        "",
        f"Cold starts ({out.get('cold_start_order')}): {cold.get('answered')} of "
        f"{cold.get('of')} answered 200; p50 {cold.get('p50_s')} s, p99 {cold.get('p99_s')} s "
        f"(min {cold.get('min_s')}, max {cold.get('max_s')}). Beside the iris run: "
        f"{under.get('of')} started, {under.get('answered')} answered 200, p50 "
        f"{under.get('p50_s')} s, max {under.get('max_s')} s. All at zero "
        f"{first.get('to_zero_s')} s after the last request, replicas gone "
        + (
            f"{gone} s later."
            if (gone := first.get("replicas_gone_s")) is not None
            else "not within 120 s (one was still stopping when memory was read)."
        ),
    ]
    return lines
