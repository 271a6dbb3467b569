"""Metrics through Ray's pipeline, scraped by a real Prometheus: every PromQL expression of
the Grafana dashboard returns data. Runs last (conftest), on what the suite left running,
plus a shadow and a rollout it starts itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.helpers import REPO, wait_for
from tests.integration.conftest import _free_port
from tests.load import Load

pytestmark = pytest.mark.integration

ROW = {
    "inputs": [{"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}]
}
#: Panels whose series exist only on some machines or some models.
NEED_GPU = "gpu"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: scripts/test.sh installs Debian's package")
    root = tmp_path_factory.mktemp("prometheus")
    config = (REPO / "configs" / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{metrics_port}").replace("5s", "2s")
    (root / "prometheus.yml").write_text(config)
    port = _free_port()
    log = (root / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((REPO / "configs" / "grafana" / "modellane.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _series(prometheus: str, expr: str) -> list[Any]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_every_dashboard_expression_returns_series(
    prometheus: str, gateway: str, registry: str, client: httpx.Client
) -> None:
    mlflow = MlflowClient(registry)
    # A good shadow (agreement) and a rollout in progress (weights, step), under traffic.
    mlflow.set_registered_model_alias("swapper", "shadow", "1")
    mlflow.set_registered_model_alias("swapper", "champion", "2")
    canary = mlflow.get_model_version_by_alias("canary", "champion").version
    mlflow.set_registered_model_alias("canary", "challenger", "1" if canary != "1" else "2")
    client.post("/admin/reload")

    def shadow_beside_champion() -> bool:
        status = client.get("/admin/models/swapper").json()
        return (
            status["serving_version"] == "2" and (status.get("shadow") or {}).get("version") == "1"
        )

    # Both: requests served by v1 itself are never mirrored to v1.
    wait_for(shadow_beside_champion, 300, "the shadow v1 beside champion v2")
    Load(f"{gateway}/v1/models/swapper/predict", ROW, concurrency=4, min_requests=200).run()
    Load(f"{gateway}/v1/models/canary/predict", ROW, concurrency=4, min_requests=200).run()
    client.post("/v1/models/iris/predict", json={"inputs": [{"bad": 1}]})  # a 4xx

    missing: list[str] = []
    for title, expr in _dashboard_exprs():
        if NEED_GPU in title.lower():
            continue  # absent without a GPU, by design
        try:
            wait_for(lambda e=expr: _series(prometheus, e), 60, title, every_s=2)
        except TimeoutError:
            missing.append(f"{title}: {expr}")
    assert not missing, "no series for:\n" + "\n".join(missing)


def test_metrics_endpoint_has_modellane_metrics_for_every_model(metrics_port: int) -> None:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    lines = text.splitlines()
    for metric in ("ray_modellane_model_load_seconds", "ray_modellane_requests_total"):
        for model in ("iris", "minilm", "sentiment"):
            assert any(line.startswith(metric) and f'model="{model}"' in line for line in lines), (
                f"{metric} for {model}"
            )


def test_request_id_is_kept_and_returned(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/models/iris/predict", json=ROW, headers={"X-Request-Id": "trace-me-42"}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-Id"] == "trace-me-42"
