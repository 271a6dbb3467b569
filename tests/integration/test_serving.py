"""End to end through the real gateway: HTTP -> Ray Serve -> ModelServer -> MLflow model."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pandas as pd
import pytest
from ray import serve

from tests.integration.conftest import DEMO_MODELS, TEST_MODELS

pytestmark = pytest.mark.integration

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _iris_rows() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    frame = pd.DataFrame(load_iris().data, columns=IRIS_COLUMNS)
    return frame.iloc[::7].reset_index(drop=True)  # 22 rows across all three classes


def _pyfunc(registry: str, uri: str):  # type: ignore[no-untyped-def]
    import mlflow

    mlflow.set_tracking_uri(registry)
    return mlflow.pyfunc.load_model(uri)


def test_every_champion_runs_as_its_own_version_application(gateway: str) -> None:
    apps = serve.status().applications
    for name in ("iris-v2", "minilm-v1", "sentiment-v1", "failing-v1", "stageonly-v1"):
        assert apps[name].status == "RUNNING", name
        assert set(apps[name].deployments) == {"ModelServer"}
    assert "iris-v1" not in apps  # only the champion is deployed


def test_models_list_versions_and_champions(client: httpx.Client) -> None:
    answer = client.get("/v1/models")
    assert answer.status_code == 200
    models = {m["name"]: m for m in answer.json()["models"]}
    assert models["iris"]["champion"] == "2"
    assert models["iris"]["champion_source"] == "alias:champion"
    assert [v["version"] for v in models["iris"]["versions"]] == ["1", "2", "3"]
    assert models["iris"]["versions"][1]["aliases"] == ["champion"]
    # Users of stages: the Production version serves where no alias is set.
    assert models["stageonly"]["champion"] == "1"
    assert models["stageonly"]["champion_source"] == "stage:Production"


def test_iris_answers_equal_pyfunc_predict(client: httpx.Client, registry: str) -> None:
    rows = _iris_rows()
    expected = _pyfunc(registry, "models:/iris/2").predict(rows).tolist()
    assert len(set(expected)) == 3  # the rows really span the classes

    as_records = client.post("/v1/models/iris/predict", json={"inputs": rows.to_dict("records")})
    as_columns = client.post("/v1/models/iris/predict", json={"inputs": rows.to_dict("list")})
    for answer in (as_records, as_columns):
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "2"
        assert answer.json() == {"model": "iris", "version": "2", "outputs": expected}


def test_minilm_embeddings_are_the_real_model(client: httpx.Client, registry: str) -> None:
    sentences = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell."]
    answer = client.post("/v1/models/minilm/predict", json={"inputs": sentences})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Version"] == "1"
    got = np.array(answer.json()["outputs"])
    assert got.shape == (3, 384)
    expected = _pyfunc(registry, "models:/minilm/1").predict(sentences)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert similar > unrelated + 0.2  # real weights: paraphrases are close


def test_sentiment_returns_labels_with_scores(client: httpx.Client) -> None:
    answer = client.post("/v1/models/sentiment/predict", json={"inputs": ["great", "awful"]})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert len(outputs) == 2
    for out in outputs:
        assert out["label"] in {"NEGATIVE", "POSITIVE"}
        assert 0.0 <= out["score"] <= 1.0


def test_health_readiness_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    # wine: the demo's model served by discovery (tagged modellane.serve=true).
    assert set(ready.json()["detail"]) == {*DEMO_MODELS, "wine", *TEST_MODELS}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert "PredictRequest" in str(predict["requestBody"])
    assert {"200", "404", "413", "422", "500"} <= set(predict["responses"])


# --- bad input: a clear 4xx with the common body, and nothing breaks ----------------------


def _error(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message", "model", "version", "field"}
    assert body["error"]["status"] == status
    return dict(body["error"])


def test_unknown_model_is_404(client: httpx.Client) -> None:
    err = _error(client.post("/v1/models/nope/predict", json={"inputs": ["x"]}), 404)
    assert err["code"] == "model_not_found" and err["model"] == "nope"


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ([{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}], "inputs[0].petal_width"),
        ([{"sepal_length": "5.1", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
         "inputs[0].sepal_length"),
        ({"sepal_length": [5.1], "sepal_width": [3.5], "petal_length": [1.4]},
         "inputs.petal_width"),
        (["not", "a", "record"], "inputs[0]"),
    ],
)  # fmt: skip
def test_bad_tabular_input_is_422_naming_the_field(
    client: httpx.Client, inputs: object, field: str
) -> None:
    err = _error(client.post("/v1/models/iris/predict", json={"inputs": inputs}), 422)
    assert err["field"] == field
    assert (err["model"], err["version"]) == ("iris", "2")


def test_bad_text_input_is_422(client: httpx.Client) -> None:
    err = _error(client.post("/v1/models/minilm/predict", json={"inputs": ["ok", 3]}), 422)
    assert err["field"] == "inputs[1]"
    err = _error(client.post("/v1/models/sentiment/predict", json={"text": ["hi"]}), 422)
    assert err["field"] in {"inputs", "text"}


#: A review of 600 words: more tokens than either text model reads (sentiment 512 positions,
#: minilm 256), short of the 20,000-character string limit.
LONG_REVIEW = " ".join(["a wonderful film with a weak ending"] * 86)


@pytest.mark.parametrize("model", ["sentiment", "minilm"])
def test_a_text_longer_than_the_model_reads_is_truncated_not_a_500(
    client: httpx.Client, model: str
) -> None:
    """Both text models cut a long text to what they read (``truncate``, the default), and
    answer it as they answer its first tokens alone."""
    answer = client.post(f"/v1/models/{model}/predict", json={"inputs": [LONG_REVIEW, "ok"]})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert len(outputs) == 2
    alone = client.post(f"/v1/models/{model}/predict", json={"inputs": ["ok"]}).json()
    # The long text changed nothing for the other (padded beside it: equal to float noise).
    if model == "minilm":
        np.testing.assert_allclose(outputs[1], alone["outputs"][0], atol=1e-4)
    else:
        assert outputs[1]["label"] == alone["outputs"][0]["label"]
        assert outputs[1]["score"] == pytest.approx(alone["outputs"][0]["score"], abs=1e-4)


@pytest.mark.parametrize("number", ["1" + "0" * 400, "-1e400", "1e309"])
def test_a_number_no_float_holds_is_422_naming_the_field(client: httpx.Client, number: str) -> None:
    """JSON allows any number; a float64 column takes none past 1.8e308 (a 422, never the
    OverflowError it once was)."""
    row = '"sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2'
    body = f'{{"inputs": [{{"sepal_length": {number}, {row}}}]}}'
    answer = client.post(
        "/v1/models/iris/predict", content=body, headers={"content-type": "application/json"}
    )
    err = _error(answer, 422)
    assert err["field"] == "inputs[0].sepal_length"


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = {"inputs": ["x" * 1_100_000]}
    err = _error(client.post("/v1/models/minilm/predict", json=big), 413)
    assert err["code"] == "payload_too_large"
    assert client.post("/v1/models/minilm/predict", json={"inputs": ["ok"]}).status_code == 200


def test_model_exception_is_500_naming_model_and_version_and_replica_stays_up(
    client: httpx.Client,
) -> None:
    def replica_ids() -> set[str]:
        import ray

        return {
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "failing-v1" in a["name"]
        }

    before = replica_ids()
    assert before
    err = _error(client.post("/v1/models/failing/predict", json={"inputs": [{"x": -1.0}]}), 500)
    assert err["code"] == "model_error"
    assert (err["model"], err["version"]) == ("failing", "1")
    assert "x must not be negative" in str(err["message"])

    ok = client.post("/v1/models/failing/predict", json={"inputs": [{"x": 2.0}]})
    assert ok.status_code == 200
    assert ok.json()["outputs"] == [4.0]
    assert replica_ids() == before  # the same replica answered: nothing restarted


def test_loopback_stays_loopback(gateway: str) -> None:
    """The stack is started with ``http_options.host: 127.0.0.1`` (as serve_config.yaml
    has it): the gateway's port, and the gateway replicas' own HTTP ports (direct ingress,
    where Ray's request-path options are on), listen on loopback only. Where
    HAProxy is on, the only ports it opens on every interface are its stats page and its
    Prometheus exporter, which Ray binds so regardless (docs/security.md names them)."""
    import psutil

    from tests.integration.test_faults import running_replicas

    port = int(gateway.rsplit(":", 1)[1])
    listening = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    on_port = [c for c in listening if c.laddr.port == port]
    assert on_port and {c.laddr.ip for c in on_port} == {"127.0.0.1"}, on_port

    gateway_pids = {int(r["pid"]) for r in running_replicas("modellane", "Gateway")}
    assert gateway_pids
    # Each gateway replica's own HTTP server (direct ingress, Ray's ports 30000 to 30999).
    # Not checked: the inter-deployment gRPC server Ray starts in every replica on "[::]:0"
    # with the options on, and Ray's own worker ports (docs/security.md names them).
    direct = [c for c in listening if c.pid in gateway_pids and 30000 <= c.laddr.port < 31000]
    assert {c.laddr.ip for c in direct} <= {"127.0.0.1"}, direct
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        assert direct  # each gateway replica serves HTTP itself, behind HAProxy
        haproxy = {c.pid for c in on_port}
        everywhere = {
            c.laddr.port for c in listening if c.pid in haproxy and c.laddr.ip in ("0.0.0.0", "::")
        }
        assert everywhere <= {
            int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]),
            int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]),
        }, everywhere
