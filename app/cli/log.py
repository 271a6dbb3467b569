"""``modellane log``: query the inference log and labels with DuckDB, from a terminal.

The log is read where it lies (a folder or a pyarrow filesystem URI), not through the
gateway: views ``predictions`` and ``labels`` as in docs/inference-log.md.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated, Any

import duckdb
import pyarrow as pa
import typer
from rich.table import Table
from rich.text import Text

from app import constants
from app.cli.client import EXIT_FAILED, EXIT_USAGE, CliError
from app.cli.common import err, out, reports_errors
from app.quality.logstore import LogStore

__all__ = ["log_cli"]

#: Rows a table shows at most; --json prints them all.
MAX_TABLE_ROWS = 1000

log_cli = typer.Typer(
    help="Query the inference log and labels (DuckDB over their Parquet files).",
    no_args_is_help=True,
)


Uri = Annotated[
    str | None,
    typer.Option(
        "--uri",
        envvar=constants.ENV_INFERENCE_LOG_URI,
        show_default=False,
        help="Folder or pyarrow filesystem URI (s3://, gs://) of the inference log. "
        f"Default: ${constants.ENV_INFERENCE_LOG_URI}.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the rows as a JSON list on stdout.")]

_TAIL = """
SELECT p.ts, p.request_id, p.version, p.role, p.status, p.latency_ms, p.prediction,
       p.outputs, l.label, l.received_at AS labelled_at
FROM predictions p
LEFT JOIN (
    SELECT request_id, label, received_at FROM labels WHERE model = $model
    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY received_at, label) = 1
) l USING (request_id)
WHERE p.model = $model
ORDER BY p.ts DESC, p.request_id DESC
LIMIT $n
"""


def _store(uri: str | None) -> LogStore:
    if not uri:
        raise CliError(
            "no inference log given",
            EXIT_USAGE,
            f"pass --uri (a folder or s3://... URI) or set {constants.ENV_INFERENCE_LOG_URI}",
        )
    try:
        store = LogStore(uri)
        found = store.exists()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise CliError(f"cannot open the inference log {uri}: {exc}", EXIT_USAGE) from None
    if not found:
        raise CliError(
            f"no inference log at {uri}",
            EXIT_USAGE,
            "the gateway writes it where inference_log.uri (serve_config.yaml) or "
            f"{constants.ENV_INFERENCE_LOG_URI} says; nothing is there until a prediction",
        )
    return store


def _query(
    store: LogStore, query: str, params: dict[str, Any] | None = None, **narrow: Any
) -> pa.Table:
    try:
        return store.sql(query, params, **narrow)
    except duckdb.Error as exc:
        raise CliError(str(exc).strip(), EXIT_FAILED) from None
    except (OSError, pa.ArrowException) as exc:
        raise CliError(f"reading the inference log failed: {exc}", EXIT_FAILED) from None


def _cell(value: Any, width: int | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _print_json(rows: list[dict[str, Any]]) -> None:
    def default(value: Any) -> Any:
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return str(value)

    sys.stdout.write(json.dumps(rows, indent=2, default=default) + "\n")
    sys.stdout.flush()


def _print_table(table: pa.Table, title: str | None = None) -> None:
    view = Table(title=title, title_justify="left")
    for name in table.column_names:
        view.add_column(name)
    for row in table.slice(0, MAX_TABLE_ROWS).to_pylist():
        view.add_row(*(_cell(v, 60) for v in row.values()))
    out.print(view)
    more = table.num_rows - MAX_TABLE_ROWS
    if more > 0:
        err.print(f"... {more} more rows (add a LIMIT, or --json for all of them)")
    else:
        err.print(f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}")


@log_cli.command("sql")
@reports_errors
def sql(
    query: Annotated[
        str,
        typer.Argument(
            help="DuckDB SQL over the views predictions and labels (each with the columns "
            'model and date), e.g. "select version, count(*) from predictions where '
            "model='iris' group by 1\"."
        ),
    ],
    uri: Uri = None,
    json_out: JsonFlag = False,
) -> None:
    """Run one SQL query over the inference log and labels; print the rows.

    Exits 1 if the query fails (its message is printed), 2 without a log to read.
    """
    table = _query(_store(uri), query)
    if json_out:
        _print_json(table.to_pylist())
    else:
        _print_table(table)


@log_cli.command("tail")
@reports_errors
def tail(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    n: Annotated[
        int, typer.Option("-n", "--lines", min=1, help="How many of the newest predictions.")
    ] = 20,
    uri: Uri = None,
    json_out: JsonFlag = False,
) -> None:
    """Show MODEL's newest logged predictions, oldest first, with their labels where
    joined (the first label of each request id)."""
    table = _query(_store(uri), _TAIL, {"model": model, "n": n}, models=[model])
    rows = list(reversed(table.to_pylist()))
    if json_out:
        _print_json(rows)
        return
    if not rows:
        err.print(f"no predictions of {model} in the log")
        return
    view = Table(title=f"newest predictions of {model}", title_justify="left")
    for column in ("ts (UTC)", "request id"):
        view.add_column(column, no_wrap=True)
    for column in ("v", "role", "status", "ms", "answer", "label"):
        view.add_column(column)
    for row in rows:
        answer = row["prediction"] if row["prediction"] is not None else row["outputs"]
        label = Text(_cell(row["label"], 30))
        if row["label"] is not None and row["prediction"] is not None:
            label.stylize("green" if row["label"] == row["prediction"] else "yellow")
        view.add_row(
            _cell(row["ts"]),
            _cell(row["request_id"], 40),
            _cell(row["version"]),
            _cell(row["role"]),
            Text(str(row["status"]), style="red" if row["status"] >= 400 else ""),
            f"{row['latency_ms']:.1f}",
            _cell(answer, 40),
            label,
        )
    out.print(view)
