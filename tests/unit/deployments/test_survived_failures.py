"""Failures the gateway and the model server survive are logged and counted
(``modellane_serving_errors_total``, by operation), never silent; a failed read of a drift
baseline is never taken for "no baseline". Driven without Ray and without MLflow: fakes
stand for the watcher's handle, the registry and the metric."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from app.quality.drift import BASELINE_ARTIFACT, build_baseline
from app.serving.observe import OBSERVER_FAILED
from tests.unit.deployments.test_model_server_batching import FakePyfunc, server
from tests.unit.serving.test_http import Backends, make_table

# Ray Serve's modules warn (pydantic deprecations) on import: they are imported in the tests.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


#: (model, operation) -> how many times counted
Counts = dict[tuple[str, str], float]


class FakeCounter:
    def __init__(self) -> None:
        self.counts: Counts = {}

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert tags is not None and set(tags) == {"model", "operation"}
        key = (tags["model"], tags["operation"])
        self.counts[key] = self.counts.get(key, 0) + value


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counts:
    """What the gateway and the model server count: (model, operation) -> count."""
    counter = FakeCounter()
    monkeypatch.setattr("deployments.gateway.serving_errors", lambda: counter)
    monkeypatch.setattr("deployments.model_server.serving_errors", lambda: counter)
    return counter.counts


# -- the gateway -------------------------------------------------------------------------


class Remote:
    """A deployment handle's method: ``.remote(...)`` answers with ``fn``'s coroutine."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class FakeWatcher:
    def __init__(self) -> None:
        self.tables: list[Any] = []  # what each long-poll answers; an exception is raised
        self.report_error: Exception | None = None
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.wait_for_table = Remote(self._wait_for_table)
        self.report = Remote(self._report)

    async def _wait_for_table(self, known_epoch: int, timeout_s: float) -> Any:
        answer = self.tables.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _report(self, replica: str, snapshot: dict[str, Any]) -> None:
        if self.report_error is not None:
            raise self.report_error
        self.reports.append((replica, snapshot))


class FakeLimiter:
    central_failures = 0


@pytest.fixture
def gw(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Gateway replica's state, without Ray: the data plane, a fake watcher, a limiter."""
    from app.serving.dataplane import DataPlane
    from deployments.gateway import Gateway

    monkeypatch.setattr("deployments.gateway._LONG_POLL_RETRY_S", 0.0)
    # The class as written, under Serve's ingress wrapper (whose async __del__ warns when
    # an instance Serve never started is collected).
    written = next(k for k in Gateway.func_or_class.__mro__[1:] if k.__name__ == "Gateway")
    instance = object.__new__(written)
    instance._watcher = FakeWatcher()
    instance._replica = "r1"
    instance._limiter = FakeLimiter()
    instance._exported = {}
    instance._log = None
    instance.dataplane = DataPlane(Backends(), make_table(epoch=1))
    return instance


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("watcher restarting"), {"epoch": "not a number"}],
    ids=["call-raises", "table-does-not-validate"],
)
def test_a_failed_long_poll_keeps_the_table_in_force_and_is_logged_and_counted(
    gw: Any, caplog: pytest.LogCaptureFixture, counted: Counts, failure: Any
) -> None:
    from deployments.gateway import OP_LONG_POLL

    gw._watcher.tables = [failure, make_table(epoch=2).model_dump()]
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        asyncio.run(gw._follow_once())
    assert gw.dataplane.table.epoch == 1
    [record] = [r for r in caplog.records if "long-poll failed" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert counted == {("", OP_LONG_POLL): 1}
    asyncio.run(gw._follow_once())  # the next answer is installed
    assert gw.dataplane.table.epoch == 2
    assert counted == {("", OP_LONG_POLL): 1}


@pytest.mark.parametrize("failing", ["report", "gauges"])
def test_a_failed_report_or_gauge_update_is_logged_and_counted_and_the_other_goes_on(
    gw: Any, caplog: pytest.LogCaptureFixture, counted: Counts, failing: str
) -> None:
    from deployments.gateway import OP_METRICS, OP_REPORT

    gauges_set: list[bool] = []

    def set_gauges() -> None:
        if failing == "gauges":
            raise ValueError("bad tag")
        gauges_set.append(True)

    gw._set_gauges = set_gauges
    if failing == "report":
        gw._watcher.report_error = RuntimeError("watcher restarting")
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        asyncio.run(gw._report_once())
    [record] = caplog.records
    if failing == "report":
        assert "stats report to the watcher failed" in record.getMessage()
        assert "watcher restarting" in record.getMessage()
        assert gauges_set == [True]
        assert counted == {("", OP_REPORT): 1}
    else:
        assert record.exc_info is not None and "bad tag" in str(record.exc_info[1])
        assert [replica for replica, _ in gw._watcher.reports] == ["r1"]
        assert counted == {("", OP_METRICS): 1}


def test_failures_the_app_parts_counted_are_exported_once_each(gw: Any, counted: Counts) -> None:
    from deployments.gateway import OP_LEASE

    gw._export_failures()
    assert counted == {}
    gw.dataplane.failures[OBSERVER_FAILED] += 2
    gw._limiter.central_failures = 3
    gw._export_failures()
    assert counted == {("", OBSERVER_FAILED): 2, ("", OP_LEASE): 3}
    gw._export_failures()  # nothing new: nothing counted again
    gw.dataplane.failures[OBSERVER_FAILED] += 1
    gw._export_failures()
    assert counted == {("", OBSERVER_FAILED): 3, ("", OP_LEASE): 3}


# -- the model server --------------------------------------------------------------------


def test_a_model_that_raises_is_logged_and_counted_per_call(
    caplog: pytest.LogCaptureFixture, counted: Counts
) -> None:
    from deployments.model_server import OP_PREDICT

    s = server()
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        answers = s._predict_many([[{"a": 1.0, "b": 1.0}], [{"a": -5.0, "b": 1.0}]])
    assert answers[1]["error"]["status"] == 500  # the client's 500, unchanged
    # The batch, refused, then the one request that fails alone.
    records = [r for r in caplog.records if "raised on predict" in r.getMessage()]
    assert len(records) == 2 and all(r.exc_info is not None for r in records)
    assert counted == {("m", OP_PREDICT): 2}


def test_a_tokenizer_that_raises_is_logged_and_counted_and_usage_is_left_out(
    caplog: pytest.LogCaptureFixture, counted: Counts
) -> None:
    from deployments.model_server import OP_TOKENS

    def tokenizer(texts: list[str], add_special_tokens: bool) -> Any:
        raise RuntimeError("tokenizer broke")

    s = server("text")
    s._tokenizer, s._max_tokens = tokenizer, 512
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        answer = s._predict(["hello"])
    assert answer == {"outputs": [[5.0]]}
    [record] = caplog.records
    assert record.exc_info is not None and "tokenizer broke" in str(record.exc_info[1])
    assert counted == {("m", OP_TOKENS): 1}


def test_a_fast_predict_probe_that_raises_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture, counted: Counts
) -> None:
    from deployments.model_server import OP_FAST_PREDICT, _fast_predict

    model = FakePyfunc(None)  # the flavor's function raises on a list of records
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        chosen = _fast_predict(model, server().spec, [{"a": 1.0, "b": 2.0}], [1.0], "m")
    assert chosen == model.predict
    [record] = caplog.records
    assert "TypeError: wants a DataFrame" in record.getMessage()
    assert record.exc_info is not None
    assert counted == {("m", OP_FAST_PREDICT): 1}


class RawModelless:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_raw_model(self) -> Any:
        raise self.error


def test_only_a_model_without_a_raw_model_has_no_tokenizer() -> None:
    from deployments.model_server import _tokenizer_of

    spec = server("text").spec
    assert _tokenizer_of(RawModelless(NotImplementedError("no raw model")), spec) == (None, 0)
    with pytest.raises(RuntimeError, match="broken flavor"):
        _tokenizer_of(RawModelless(RuntimeError("broken flavor")), spec)


# -- the drift baseline: none only where there is none -----------------------------------


class FileInfo:
    def __init__(self, path: str) -> None:
        self.path = path


class FakeRegistry:
    """MlflowClient and ``download_artifacts`` over one model version and its run."""

    def __init__(self, tmp_path: Path) -> None:
        self.run_id: str | None = "run1"
        self.artifacts: list[str] | Exception = ["model", BASELINE_ARTIFACT]
        self.file = tmp_path / BASELINE_ARTIFACT
        self.download_error: Exception | None = None
        baseline = build_baseline({"a": [float(i) for i in range(60)]})
        self.file.write_text(baseline.model_dump_json())

    def client(self, tracking_uri: str) -> Any:
        registry = self

        class Client:
            def get_model_version(self, name: str, version: str) -> Any:
                return type("ModelVersion", (), {"run_id": registry.run_id})()

            def list_artifacts(self, run_id: str) -> list[FileInfo]:
                if isinstance(registry.artifacts, Exception):
                    raise registry.artifacts
                return [FileInfo(p) for p in registry.artifacts]

        return Client()

    def download(self, *, run_id: str, artifact_path: str, tracking_uri: str) -> str:
        if self.download_error is not None:
            raise self.download_error
        return str(self.file)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry(tmp_path)
    monkeypatch.setattr("mlflow.MlflowClient", fake.client)
    monkeypatch.setattr("mlflow.artifacts.download_artifacts", fake.download)
    return fake


def load(registry: FakeRegistry) -> Any:
    from deployments.model_server import _load_baseline

    return _load_baseline("m", "1", "http://mlflow")


def test_the_baseline_logged_with_the_run_is_loaded(registry: FakeRegistry) -> None:
    baseline = load(registry)
    assert baseline is not None and set(baseline.features) == {"a"}


@pytest.mark.parametrize("case", ["no-run", "not-logged", "run-gone"])
def test_no_baseline_only_where_the_registry_says_there_is_none(
    registry: FakeRegistry, counted: Counts, case: str
) -> None:
    if case == "no-run":
        registry.run_id = None
    elif case == "not-logged":
        registry.artifacts = ["model"]
    else:
        registry.artifacts = MlflowException("Run 'run1' not found", RESOURCE_DOES_NOT_EXIST)
    assert load(registry) is None
    assert counted == {}


@pytest.mark.parametrize("where", ["listing", "download"])
def test_a_failed_read_of_the_baseline_fails_the_load_never_taken_for_none(
    registry: FakeRegistry, where: str
) -> None:
    error = MlflowException("Max retries exceeded", TEMPORARILY_UNAVAILABLE)
    if where == "listing":
        registry.artifacts = error
    else:
        registry.download_error = error
    with pytest.raises(MlflowException, match="Max retries exceeded"):
        load(registry)


def test_a_baseline_that_does_not_parse_is_logged_and_counted_and_serving_goes_on(
    registry: FakeRegistry,
    caplog: pytest.LogCaptureFixture,
    counted: Counts,
) -> None:
    from deployments.model_server import OP_BASELINE

    registry.file.write_bytes(b'{"features": "of another schema"}')
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert load(registry) is None
    [record] = caplog.records
    assert "does not parse" in record.getMessage() and record.exc_info is not None
    assert counted == {("m", OP_BASELINE): 1}
