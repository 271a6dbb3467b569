"""``modellane log sql`` and ``modellane log tail`` over a real log (Parquet, DuckDB)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from app import constants
from app.cli import log as cli_log
from app.cli import main as cli_mod
from app.quality.logstore import LogStore, PredictionRecord

T0 = 1_710_072_000.0  # 2024-03-10 12:00 UTC


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(constants.ENV_INFERENCE_LOG_URI, raising=False)
    monkeypatch.chdir(tmp_path)  # no .run/admin.key of the repository
    # A wide terminal, so that table rows are not wrapped.
    monkeypatch.setattr(cli_log, "out", Console(highlight=False, width=200))


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    root = tmp_path / "log"
    store = LogStore(str(root))
    store.write_predictions(
        [
            PredictionRecord(
                request_id=f"r{i}",
                ts=T0 + i,
                model="iris",
                version="1" if i % 2 else "2",
                role="champion" if i % 2 else "challenger",
                routing_key=None,
                inputs={"x": i},
                outputs=[i % 3] if i != 4 else [0.1, 0.9],
                latency_ms=2.5,
                status=200 if i != 3 else 500,
                replica="gw-a",
            )
            for i in range(6)
        ]
        + [PredictionRecord("w0", T0, "wine", "7", "champion", None, None, [1], 1.0, 200, "gw-a")],
        "gw-a",
    )
    store.write_labels("iris", [("r5", 2, T0 + 10, None), ("r1", 0, T0 + 10, "ci")], "m")
    store.write_labels("iris", [("r5", 0, T0 + 20, None)], "m")  # later: not the label
    return root


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_mod.cli, ["log", *args])


def json_of(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sql_prints_a_table(log_dir: Path) -> None:
    result = run(
        "sql",
        "select version, count(*) as n from predictions where model='iris' group by 1 order by 1",
        "--uri",
        str(log_dir),
    )
    assert result.exit_code == 0, result.output
    cells = [
        [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        for line in result.stdout.splitlines()
        if "│" in line or "┃" in line
    ]
    assert cells == [["version", "n"], ["1", "3"], ["2", "3"]]
    assert "2 rows" in result.stderr


def test_sql_json_prints_the_rows(log_dir: Path) -> None:
    rows = json_of(
        run(
            "sql",
            "select model, date, request_id, ts from predictions order by ts, model limit 2",
            "--uri",
            str(log_dir),
            "--json",
        )
    )
    assert rows == [
        {
            "model": "iris",
            "date": "2024-03-10",
            "request_id": "r0",
            "ts": "2024-03-10T12:00:00+00:00",
        },
        {
            "model": "wine",
            "date": "2024-03-10",
            "request_id": "w0",
            "ts": "2024-03-10T12:00:00+00:00",
        },
    ]


def test_the_uri_comes_from_the_environment(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(constants.ENV_INFERENCE_LOG_URI, str(log_dir))
    assert json_of(run("sql", "select count(*) as n from labels", "--json")) == [{"n": 3}]


def test_without_a_uri_it_says_how_to_give_one() -> None:
    result = run("sql", "select 1")
    assert result.exit_code == 2
    assert "no inference log given" in result.stderr
    assert constants.ENV_INFERENCE_LOG_URI in result.stderr
    assert result.stdout == ""


def test_a_uri_with_nothing_there_is_a_usage_error(tmp_path: Path) -> None:
    result = run("tail", "iris", "--uri", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert "no inference log at" in result.stderr


def test_a_sql_error_prints_its_message_and_exits_1(log_dir: Path) -> None:
    result = run("sql", "select nope from predictions", "--uri", str(log_dir))
    assert result.exit_code == 1
    assert "error:" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    result = run("sql", "selec 1", "--uri", str(log_dir))
    assert result.exit_code == 1 and "syntax" in result.stderr.lower()


def test_tail_shows_the_newest_predictions_oldest_first_with_their_labels(
    log_dir: Path,
) -> None:
    rows = json_of(run("tail", "iris", "-n", "3", "--uri", str(log_dir), "--json"))
    assert [r["request_id"] for r in rows] == ["r3", "r4", "r5"]
    by_id = {r["request_id"]: r for r in rows}
    assert by_id["r5"]["label"] == "2"  # the first label of r5
    assert by_id["r4"]["prediction"] is None and by_id["r4"]["outputs"] == "[0.1,0.9]"
    assert by_id["r3"]["status"] == 500 and by_id["r3"]["label"] is None
    assert set(rows[0]) == {
        "ts",
        "request_id",
        "version",
        "role",
        "status",
        "latency_ms",
        "prediction",
        "outputs",
        "label",
        "labelled_at",
    }


def test_tail_prints_a_table(log_dir: Path) -> None:
    result = run("tail", "iris", "--uri", str(log_dir))
    assert result.exit_code == 0, result.output
    assert "newest predictions of iris" in result.stdout
    rows = [line.strip("│ ").split("│") for line in result.stdout.splitlines() if "│" in line]
    assert [r[1].strip() for r in rows] == [f"r{i}" for i in range(6)]
    assert [r[-1].strip() for r in rows] == ["-", "0", "-", "-", "-", "2"]
    assert "2024-03-10 12:00:05.000" in result.stdout


def test_tail_of_a_model_without_predictions(log_dir: Path) -> None:
    result = run("tail", "nothing", "--uri", str(log_dir))
    assert result.exit_code == 0
    assert "no predictions of nothing" in result.stderr
    assert json_of(run("tail", "nothing", "--uri", str(log_dir), "--json")) == []


def test_log_is_listed_in_the_help() -> None:
    result = CliRunner().invoke(cli_mod.cli, ["--help"])
    assert result.exit_code == 0 and "log" in result.stdout
    result = run("--help")
    assert "sql" in result.stdout and "tail" in result.stdout
