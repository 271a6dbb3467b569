"""``modellane batch``: score a dataset with a version of a model, as a Ray job.

Every command goes through the gateway's ``/admin/jobs`` (an admin key or one with the
``batch`` scope). A local path is sent as an absolute path: the job's processes read it,
so on a cluster it must be a path every node sees, or an object-store URI.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Table

from app.batch.spec import FINAL_STATES
from app.cli.client import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, CliError, Gateway
from app.cli.common import JsonFlag, err, out, print_json, reports_errors, settings_of

__all__ = ["batch_cli"]

batch_cli = typer.Typer(
    help="Batch jobs: score a dataset (Parquet, CSV, JSON lines) with a model version.",
    no_args_is_help=True,
)

JobId = Annotated[str, typer.Argument(help="The job's id (modellane batch list shows them).")]


def _location(value: str) -> str:
    """A URI as given; a local path made absolute (the job does not run in this folder)."""
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))


@batch_cli.command("submit")
@reports_errors
def submit(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="File or folder: a path or a pyarrow URI.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="A new or empty folder: a path or a URI.")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="Score with this version.")
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Or with the version this alias names (default: champion)."),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Comma-separated input columns fed to the model."),
    ] = None,
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys",
            help="Comma-separated columns copied to the output (default: "
            "every column not fed to the model).",
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="parquet, csv or json (default: the name's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Rows per model call.")
    ] = None,
    actors: Annotated[
        int | None, typer.Option("--actors", min=1, help="Scoring actors (model copies).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the job ends; exit 1 if it fails.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="With --wait: seconds before exit 3.")
    ] = 3600.0,
    json_out: JsonFlag = False,
) -> None:
    """Submit a batch job; the version is fixed now (the champion unless told)."""
    body: dict[str, Any] = {"model": model, "input": _location(input_), "output": _location(output)}
    options = {
        "version": version,
        "alias": alias,
        "format": fmt,
        "batch_size": batch_size,
        "actors": actors,
        "columns": _split(columns),
        "keys": _split(keys),
    }
    body |= {name: value for name, value in options.items() if value is not None}
    gateway = settings_of(ctx).gateway_client()
    job = gateway.request("POST", "/admin/jobs", json=body)
    if not wait:
        _show(job, json_out)
        return
    err.print(f"job {job['job_id']}: {job['model']} v{job['version']} -> {job['output']}")
    final = _follow(gateway, job["job_id"], timeout)
    _show(final, json_out)
    raise typer.Exit(EXIT_OK if final["state"] == "succeeded" else EXIT_FAILED)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _follow(gateway: Gateway, job_id: str, timeout_s: float, every_s: float = 1.0) -> Any:
    """Poll the job until it ends, with a progress bar of rows (rich) on stderr."""
    deadline = time.monotonic() + timeout_s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Bar(*columns, console=err, transient=False) as bar:
        task = bar.add_task("pending", total=None, rate="")
        while True:
            job = gateway.request("GET", f"/admin/jobs/{job_id}")
            rate = f"{job['rows_per_s']:.0f} rows/s" if job.get("rows_per_s") else ""
            failed = f", {job['rows_failed']} failed" if job.get("rows_failed") else ""
            bar.update(
                task,
                description=job["state"],
                completed=job["rows_done"] + job["rows_failed"],
                total=job.get("rows_total"),
                rate=rate + failed,
            )
            if job["state"] in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise CliError(
                    f"job {job_id} still {job['state']} after {timeout_s:.0f}s",
                    EXIT_TIMEOUT,
                    f"it goes on; see it with: modellane batch status {job_id}",
                )
            time.sleep(every_s)


def _show(job: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(job)
        return
    total = job.get("rows_total")
    rows = f"{job['rows_done']}" + (f" of {total}" if total is not None else "")
    lines = [
        f"job       {job['job_id']}",
        f"state     {job['state']}" + (f": {job['message']}" if job.get("message") else ""),
        f"model     {job['model']} v{job['version']}",
        f"input     {job['input']}",
        f"output    {job['output']}",
        f"rows      {rows} done, {job['rows_failed']} failed (see errors/)",
    ]
    if job.get("rows_per_s"):
        lines.append(f"rate      {job['rows_per_s']:.0f} rows/s")
    if job.get("startup_s") is not None:
        lines.append(f"start-up  {job['startup_s']:.1f} s")
    if job.get("run_id"):
        lines.append(f"MLflow    run {job['run_id']}")
    out.print("\n".join(lines))


@batch_cli.command("status")
@reports_errors
def status(ctx: typer.Context, job_id: JobId, json_out: JsonFlag = False) -> None:
    """A job's state, rows done of total, rows/s and failures."""
    _show(settings_of(ctx).gateway_client().request("GET", f"/admin/jobs/{job_id}"), json_out)


@batch_cli.command("list")
@reports_errors
def list_jobs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    json_out: JsonFlag = False,
) -> None:
    """Jobs, newest first."""
    jobs = settings_of(ctx).gateway_client().request("GET", "/admin/jobs", params={"limit": limit})
    if json_out:
        print_json(jobs)
        return
    if not jobs:
        out.print("no batch jobs yet (modellane batch submit MODEL --input ... --output ...)")
        return
    table = Table("job", "state", "model", "rows", "failed", "rows/s", "output")
    for job in jobs:
        rate = f"{job['rows_per_s']:.0f}" if job.get("rows_per_s") else ""
        table.add_row(
            job["job_id"],
            job["state"],
            f"{job['model']} v{job['version']}",
            str(job["rows_done"]),
            str(job["rows_failed"]),
            rate,
            job["output"],
        )
    out.print(table)


@batch_cli.command("cancel")
@reports_errors
def cancel(ctx: typer.Context, job_id: JobId, json_out: JsonFlag = False) -> None:
    """Stop a job: nothing of it is committed to its output."""
    job = settings_of(ctx).gateway_client().request("POST", f"/admin/jobs/{job_id}/cancel")
    _show(job, json_out)
