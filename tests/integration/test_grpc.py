"""The Open Inference Protocol over gRPC on the real stack, with ``tritonclient.grpc``
unchanged (only the key as metadata): health and metadata, inference on iris and minilm with
the answers ``tritonclient.http`` gets, every error status, keys and rate limits, and the
traffic policy. The stack serves gRPC where scripts/up.sh does (Ray Serve's gRPC proxy, or
HAProxy with Ray's request-path options on) on a free port (``grpc_port``, conftest)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import (
    ADMIN_KEY,
    BATCH_KEY,
    LIMITED_BURST,
    LIMITED_KEY,
    LIMITED_RATE_PER_S,
    PREDICT_KEY,
    wait_for,
)
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
TEXTS = ["modellane serves models", "a second, longer sentence to embed here"]


def _key(key: str = PREDICT_KEY) -> dict[str, str]:
    # gRPC metadata keys are lowercase; tritonclient sends headers as metadata as they are.
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def grpc_client(gateway: str, grpc_port: int) -> Iterator[Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    # The gRPC ingress is up once the gateway is (HAProxy adds it with the replicas).
    wait_for(client.is_server_live, 60, "the gRPC ingress to answer")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(gateway: str) -> Iterator[Any]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=gateway.removeprefix("http://"))
    yield client
    client.close()


def _iris(module: Any, rows: list[list[float]] = IRIS_ROWS) -> list[Any]:
    columns = np.array(rows, dtype=np.float64).T
    inputs = []
    for name, values in zip(IRIS_COLUMNS, columns, strict=True):
        tensor = module.InferInput(name, [len(values)], "FP64")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


def _texts(module: Any) -> list[Any]:
    tensor = module.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object))
    return [tensor]


def _grpc_error(call: Any) -> tuple[str, str]:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


def test_health_and_metadata_are_the_http_ones(
    grpc_client: Any, http_client: Any, client: httpx.Client
) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready() == (client.get("/readyz").status_code == 200)
    server = grpc_client.get_server_metadata(headers=_key())
    assert (server.name, server.version) == tuple(
        http_client.get_server_metadata(headers=_key())[k] for k in ("name", "version")
    )
    for model in ("iris", "minilm"):
        ours = grpc_client.get_model_metadata(model, headers=_key())
        http = http_client.get_model_metadata(model, headers=_key())
        assert (ours.name, list(ours.versions), ours.platform) == (
            http["name"], http["versions"], http["platform"],
        )  # fmt: skip
        for mine, theirs in ((ours.inputs, http["inputs"]), (ours.outputs, http["outputs"])):
            assert [(t.name, t.datatype, list(t.shape)) for t in mine] == [
                (t["name"], t["datatype"], t["shape"]) for t in theirs
            ]
        assert grpc_client.is_model_ready(model, headers=_key())
        assert grpc_client.is_model_ready(model, http["versions"][0], headers=_key())


def test_iris_and_minilm_answer_as_over_http(grpc_client: Any, http_client: Any) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    ours = grpc_client.infer("iris", _iris(grpcclient), request_id="g-1", headers=_key())
    http = http_client.infer("iris", _iris(httpclient), headers=_key())
    np.testing.assert_array_equal(ours.as_numpy("predictions"), http.as_numpy("predictions"))
    answer = ours.get_response()
    assert (answer.model_name, answer.id) == ("iris", "g-1")
    assert answer.model_version == http.get_response()["model_version"]
    # A named version: that one, as /v2/models/iris/versions/{v}/infer.
    pinned = grpc_client.infer("iris", _iris(grpcclient), answer.model_version, headers=_key())
    np.testing.assert_array_equal(pinned.as_numpy("predictions"), http.as_numpy("predictions"))

    vectors = grpc_client.infer("minilm", _texts(grpcclient), headers=_key())
    expected = http_client.infer("minilm", _texts(httpclient), headers=_key())
    assert vectors.as_numpy("predictions").shape == (2, 384)
    np.testing.assert_array_equal(vectors.as_numpy("predictions"), expected.as_numpy("predictions"))


def test_errors_map_to_grpc_status_codes_with_clear_messages(grpc_client: Any) -> None:
    import tritonclient.grpc as grpcclient

    status, message = _grpc_error(
        lambda: grpc_client.infer("no-such-model", _iris(grpcclient), headers=_key())
    )
    assert status == "StatusCode.NOT_FOUND" and "'no-such-model' is not served" in message
    status, message = _grpc_error(
        lambda: grpc_client.get_model_metadata("iris", "999", headers=_key())
    )
    assert status == "StatusCode.NOT_FOUND" and "'999'" in message
    status, message = _grpc_error(
        lambda: grpc_client.infer("iris", _iris(grpcclient)[:3], headers=_key())
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "petal_width" in message, message
    status, message = _grpc_error(lambda: grpc_client.infer("iris", _iris(grpcclient)))
    assert status == "StatusCode.UNAUTHENTICATED" and "API key is required" in message
    status, _ = _grpc_error(
        lambda: grpc_client.infer("iris", _iris(grpcclient), headers=_key("ml_not_a_key"))
    )
    assert status == "StatusCode.UNAUTHENTICATED"
    status, message = _grpc_error(
        lambda: grpc_client.infer("iris", _iris(grpcclient), headers=_key(BATCH_KEY))
    )
    assert status == "StatusCode.PERMISSION_DENIED" and "'predict' scope" in message
    big = _iris(grpcclient, [[5.0, 3.0, 1.5, 0.2]] * 40_000)  # 1.28 MB; the limit is 1 MB
    status, message = _grpc_error(lambda: grpc_client.infer("iris", big, headers=_key()))
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "larger than the limit" in message
    # The admin key may predict, as over HTTP; and the gateway still serves.
    assert grpc_client.infer("iris", _iris(grpcclient), headers=_key(ADMIN_KEY))


def test_a_key_over_its_rate_limit_is_resource_exhausted(grpc_client: Any) -> None:
    """The limited key (2/s, burst 4) shares its bucket with HTTP (test_protocols counts on
    finding it full: it is refilled before the test ends)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def ready() -> str:
        try:
            grpc_client.is_model_ready("iris", headers=_key(LIMITED_KEY))
        except InferenceServerException as exc:
            return f"{exc.status()}: {exc.message()}"
        return "ok"

    answers = Counter(ready().split(":")[0] for _ in range(12))
    assert answers["ok"] >= 1 and answers["StatusCode.RESOURCE_EXHAUSTED"] >= 1, answers
    status, message = _grpc_error(
        lambda: [grpc_client.infer("iris", _iris(grpcclient), headers=_key(LIMITED_KEY))
                 for _ in range(8)]
    )  # fmt: skip
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "rate limit" in message
    # The bucket refills by the clock alone, and a probe with the key would spend a token:
    # wait out a full refill (burst / rate) so that the next test finds the bucket full.
    refilled_at = time.monotonic() + LIMITED_BURST / LIMITED_RATE_PER_S + 0.5
    wait_for(lambda: time.monotonic() >= refilled_at, 10, "the key's bucket to refill", 0.1)


def _within_3_sd(share: float, p: float, n: int) -> bool:
    return abs(share - p) <= 3 * math.sqrt(p * (1 - p) / n)


def test_model_infer_follows_the_traffic_policy(
    grpc_client: Any, roles: Roles, client: httpx.Client
) -> None:
    """abtest, champion v1 and challenger v2 at 30 percent: the gRPC answers split so,
    and one routing key keeps one version."""
    import tritonclient.grpc as grpcclient

    roles.set("abtest", champion="1", challenger="2", shadow=None)
    answer = client.put("/admin/models/abtest/traffic", json={"challenger": 30})
    assert answer.status_code == 200, answer.text
    inputs = _iris(grpcclient, IRIS_ROWS[:1])
    versions = Counter(
        grpc_client.infer("abtest", inputs, headers=_key()).get_response().model_version
        for _ in range(300)
    )
    n = sum(versions.values())
    assert set(versions) == {"1", "2"} and _within_3_sd(versions["2"] / n, 0.30, n), versions
    sticky = {
        grpc_client.infer("abtest", inputs, headers={**_key(), "x-routing-key": "user-7"})
        .get_response()
        .model_version
        for _ in range(20)
    }
    assert len(sticky) == 1
