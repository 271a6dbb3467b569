"""MLflow's own deployment interface against the real stack: ``mlflow deployments ... -t
modellane`` (MLflow's CLI, as a process) and ``mlflow.deployments.get_deploy_client``.

The test registers its own model, ``deployed`` (two copies of the iris classifier), which
the watcher serves only once it is tagged ``modellane.serve=true`` (discovery), and
withdraws and deletes it at the end: the served set is as it was before.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.deployments import PredictionsResponse, get_deploy_client
from mlflow.exceptions import MlflowException

from app import constants
from tests.helpers import ADMIN_KEY, REPO, wait_for
from tests.integration.conftest import IRIS_COLUMNS

pytestmark = pytest.mark.integration

MLFLOW = REPO / ".venv" / "bin" / "mlflow"
NAME = "deployed"
ROWS = [
    dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True)),
    dict(zip(IRIS_COLUMNS, [6.7, 3.0, 5.2, 2.3], strict=True)),
]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _served(gateway: str) -> bool:
    """Whether the gateway has the model at all: anything but 404 from its admin API or
    from prediction (each gateway replica drops it once the watcher's table says so)."""
    status = httpx.get(f"{gateway}/admin/models/{NAME}", headers=ADMIN, timeout=10)
    predict = httpx.post(
        f"{gateway}/v1/models/{NAME}/predict", json={"inputs": ROWS}, headers=ADMIN, timeout=30
    )
    return (status.status_code, predict.status_code) != (404, 404)


def _withdraw(mlflow: MlflowClient, gateway: str) -> None:
    """Untag ``deployed`` if it is registered, wait until the gateway no longer has it, then
    delete it from the registry."""
    with contextlib.suppress(MlflowException):
        mlflow.delete_registered_model_tag(NAME, constants.TAG_SERVE)
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{gateway}/admin/reload", headers=ADMIN, timeout=30)
    wait_for(lambda: not _served(gateway), 180, f"the gateway to drop {NAME}")
    with contextlib.suppress(MlflowException):
        mlflow.delete_registered_model(NAME)


@pytest.fixture
def deployed(registry: str, gateway: str) -> Iterator[MlflowClient]:
    """``deployed`` v1 (the weaker iris, v1 of iris) and v2 (iris v2), not tagged; withdrawn
    and deleted afterwards, whatever the test did."""
    mlflow = MlflowClient(tracking_uri=registry, registry_uri=registry)
    _withdraw(mlflow, gateway)  # what an interrupted earlier run may have left
    mlflow.create_registered_model(NAME)
    for version in ("1", "2"):
        source = mlflow.get_model_version("iris", version)
        mlflow.create_model_version(NAME, source=f"models:/iris/{version}", run_id=source.run_id)
    try:
        yield mlflow
    finally:
        _withdraw(mlflow, gateway)


@pytest.fixture
def env(
    registry: str, gateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """What a user sets: the registry, the gateway and an admin key; in this process too
    (for ``get_deploy_client``). No ``.run/admin.key`` or config.toml is found instead."""
    values = {
        "MLFLOW_TRACKING_URI": registry,
        "MODELLANE_GATEWAY": gateway,
        "MODELLANE_API_KEY": ADMIN_KEY,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MODELLANE_")}, **values}


def _mlflow_deployments(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``mlflow deployments ARGS`` in the current directory (the test's empty tmp_path)."""
    done = subprocess.run(
        [str(MLFLOW), "deployments", *args], env=env, capture_output=True, text=True, timeout=480
    )
    assert done.returncode == 0, f"mlflow deployments {args}: exit {done.returncode}\n{done.stderr}"
    return done


def _model(mlflow: MlflowClient) -> tuple[dict[str, str], dict[str, str]]:
    found = mlflow.get_registered_model(NAME)
    return dict(found.tags), {alias: str(version) for alias, version in found.aliases.items()}


def test_deploy_update_predict_and_delete_through_mlflow(
    deployed: MlflowClient, env: dict[str, str], gateway: str, tmp_path: Path
) -> None:
    # create, through MLflow's CLI: the alias and the tag in the registry, then it serves
    made = _mlflow_deployments(
        env, "create", "-t", "modellane", "--name", NAME, "-m", f"models:/{NAME}/1",
        "-C", "timeout_s=300",
    )  # fmt: skip
    assert f"python_function deployment {NAME} is created" in made.stdout
    assert _model(deployed) == ({constants.TAG_SERVE: "true"}, {"champion": "1"})
    client = get_deploy_client("modellane")

    def answered_by(version: str) -> PredictionsResponse | None:
        answer = client.predict(NAME, ROWS)
        return answer if answer["version"] == version else None

    first = wait_for(lambda: answered_by("1"), 300, f"{NAME} v1 to answer")
    assert isinstance(first, PredictionsResponse) and len(first["predictions"]) == 2

    # update, through the Python client: v2 serves
    updated = client.update_deployment(NAME, f"models:/{NAME}/2", config={"timeout_s": 300})
    assert (updated["version"], updated["role"], updated["status"]) == ("2", "champion", "serving")
    assert _model(deployed)[1] == {"champion": "2"}
    wait_for(lambda: answered_by("2"), 300, f"{NAME} v2 to answer")

    # list and get, through both
    assert NAME in {d["name"] for d in client.list_deployments()}
    status = client.get_deployment(NAME)
    assert status["name"] == NAME and status["serving_version"] == "2"
    shown = _mlflow_deployments(env, "get", "-t", "modellane", "--name", NAME)
    assert "serving_version: 2" in shown.stdout
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    predicted = _mlflow_deployments(env, "predict", "-t", f"modellane:/{gateway}", "--name", NAME,
                                    "-I", str(rows))  # fmt: skip
    answer: dict[str, Any] = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert answer["version"] == "2" and len(answer["predictions"]) == 2

    # creating it again is refused: update is the way
    with pytest.raises(MlflowException) as refused:
        client.create_deployment(NAME, f"models:/{NAME}/1")
    assert refused.value.error_code == "RESOURCE_ALREADY_EXISTS"

    # delete, through MLflow's CLI: untagged, then the gateway has it no more
    _mlflow_deployments(env, "delete", "-t", "modellane", "--name", NAME)
    tags, aliases = _model(deployed)  # the watcher's own tags (previous champion) stay
    assert constants.TAG_SERVE not in tags and aliases == {"champion": "2"}
    wait_for(lambda: not _served(gateway), 180, f"the gateway to answer 404 for {NAME}")
    with pytest.raises(MlflowException) as gone:
        client.predict(NAME, ROWS)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_deployment(NAME)  # idempotent
