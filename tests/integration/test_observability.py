"""Metrics through Ray's pipeline, scraped by a real Prometheus: every PromQL expression of
the Grafana dashboard returns data. The test makes every series it reads itself (traffic,
an error, a switch and a rollback, a failed load, a shadow, a rollout, drift figures),
whatever ran before it; conftest puts the roles back after it."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, wait_for
from tests.integration.conftest import IRIS_COLUMNS, _free_port
from tests.integration.roles import Roles
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


def _events(client: httpx.Client, since: int, model: str, kind: str) -> list[Any]:
    answer = client.get("/admin/events", params={"model": model, "since": since}).json()
    return [e for e in answer if e["kind"] == kind]


def _training_rows() -> list[dict[str, Any]]:
    from sklearn.datasets import load_iris

    rows = [dict(zip(IRIS_COLUMNS, map(float, r), strict=True)) for r in load_iris().data]
    return [{"inputs": rows[i : i + 10]} for i in range(0, len(rows), 10)]


def _labelled_iris(client: httpx.Client, count: int = 30) -> None:
    """Single-row iris predictions, each with its request id, then their true classes."""
    from sklearn.datasets import load_iris

    data = load_iris()
    labels = []
    for i in range(count):
        row = dict(zip(IRIS_COLUMNS, map(float, data.data[i * 5]), strict=True))
        request_id = f"obs-{uuid.uuid4().hex}"
        answer = client.post(
            "/v1/models/iris/predict", json={"inputs": [row]}, headers={"X-Request-Id": request_id}
        )
        assert answer.status_code == 200, answer.text
        labels.append({"request_id": request_id, "label": int(data.target[i * 5])})
    answer = client.post("/v1/models/iris/feedback", json={"labels": labels})
    assert answer.status_code == 202, answer.text


def test_every_dashboard_expression_returns_series(
    prometheus: str, gateway: str, client: httpx.Client, roles: Roles
) -> None:
    since = client.get("/admin/events", params={"limit": 1}).json()[-1]["seq"]
    # A failed load: broken v2 raises on load (as a shadow, so nothing else changes). It
    # loads (and fails) while the rest is set up.
    roles.mlflow.set_registered_model_alias("broken", "shadow", "2")
    roles.reload()

    # A switch and a rollback: swapper out to its other version and back.
    champion = roles.record("swapper").expected()["champion"]
    assert champion is not None
    other = "1" if champion == "2" else "2"
    roles.set("swapper", champion=other)
    back = client.post("/admin/models/swapper/rollback")
    assert back.status_code == 200 and back.json()["switched"], back.text

    # A good shadow (agreement) and a rollout in progress (weights, step), under traffic:
    # the shadow is another version than the champion (a version is never its own shadow).
    roles.set("swapper", champion=champion, shadow=other)
    canary = roles.record("canary").expected()["champion"]
    roles.set("canary", challenger="1" if canary != "1" else "2", shadow=None)
    Load(f"{gateway}/v1/models/swapper/predict", ROW, concurrency=4, min_requests=200).run()
    Load(f"{gateway}/v1/models/canary/predict", ROW, concurrency=4, min_requests=200).run()
    # Drift figures: the training rows, more than a drift window needs, on iris.
    Load(
        f"{gateway}/v1/models/iris/predict", _training_rows(), concurrency=2, min_requests=15
    ).run()
    client.post("/v1/models/iris/predict", json={"inputs": [{"bad": 1}]})  # a 4xx
    _labelled_iris(client)  # live quality and label counts
    for stream in (False, True, True):  # text generation: time to first token, tokens/s
        body = {"model": "textgen", "prompt": "the registry decides", "max_tokens": 8,
                "temperature": 0, "stream": stream}  # fmt: skip
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
    wait_for(lambda: _events(client, since, "broken", "failure"), 240, "broken v2 to fail to load")

    missing: list[str] = []
    for title, expr in _dashboard_exprs():
        if NEED_GPU in title.lower():
            continue  # absent without a GPU, by design
        try:
            wait_for(lambda e=expr: _series(prometheus, e), 60, title, every_s=2)
        except TimeoutError:
            missing.append(f"{title}: {expr}")
    assert not missing, "no series for:\n" + "\n".join(missing)


def test_metrics_endpoint_has_modellane_metrics_for_every_model(
    metrics_port: int, client: httpx.Client
) -> None:
    inputs = {"iris": [ROW["inputs"][0]], "minilm": ["a request"], "sentiment": ["a request"]}
    for model, rows in inputs.items():  # a request to each, so each has a request count
        answer = client.post(f"/v1/models/{model}/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
    wanted = [
        (metric, model)
        for metric in ("ray_modellane_model_load_seconds", "ray_modellane_requests_total")
        for model in inputs
    ]

    def missing() -> list[tuple[str, str]]:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        lines = text.splitlines()
        return [
            (metric, model)
            for metric, model in wanted
            if not any(line.startswith(metric) and f'model="{model}"' in line for line in lines)
        ]

    # Ray exports what the replicas report every few seconds.
    try:
        wait_for(lambda: not missing(), 60, "every model's metrics", every_s=2)
    except TimeoutError:
        pytest.fail(f"no series for {missing()}")


def test_request_id_is_kept_and_returned(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/models/iris/predict", json=ROW, headers={"X-Request-Id": "trace-me-42"}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-Id"] == "trace-me-42"
