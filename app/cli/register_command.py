"""``modellane register``: log a local model into the registry as a new version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from app.cli.client import EXIT_USAGE, CliError
from app.cli.common import JsonFlag, Progress, out, print_json, reports_errors, settings_of


def _type_text(spec: dict[str, Any]) -> str:
    tensor = spec.get("tensor-spec")
    if spec.get("type") == "tensor" and isinstance(tensor, dict):
        return f"{tensor.get('dtype')} tensor {tensor.get('shape')}"
    return str(spec.get("type"))


def _signature_text(signature: dict[str, Any] | None) -> str:
    if not signature:
        return "no signature"

    def side(raw: Any) -> str:
        try:
            specs = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return "?"
        if not specs:
            return "-"
        return ", ".join(f"{s.get('name') or 'value'}: {_type_text(s)}" for s in specs)

    return f"{side(signature.get('inputs'))} -> {side(signature.get('outputs'))}"


@reports_errors
def register(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="A scikit-learn .pkl/.joblib file (unpickled: only files you trust), or a "
            "sentence-transformers, transformers or MLflow model directory.",
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    alias: Annotated[
        str | None, typer.Option("--alias", help="Give the new version this alias.")
    ] = None,
    sample: Annotated[
        Path | None,
        typer.Option(
            "--sample",
            help="Sample inputs: CSV or JSON records (tabular), a text file of lines or a "
            "JSON list of strings (text). They give the signature and the input example.",
        ),
    ] = None,
    task: Annotated[
        str, typer.Option("--task", help="Pipeline task of a transformers directory.")
    ] = "text-classification",
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment of the logging run.")
    ] = "modellane-cli",
    json_out: JsonFlag = False,
) -> None:
    """Log a local model into the MLflow registry as a new version; print it.

    The signature and the input example come from the sample file.
    """
    from app.cli import register as cli_register

    if sample is not None and not sample.is_file():
        raise CliError(f"the sample {sample} is not a file", EXIT_USAGE)
    plan = cli_register.prepare(path, sample)  # local checks first: nothing logged in vain
    settings = settings_of(ctx)
    settings.registry().check_reachable()
    with Progress(f"registering {path} ({plan.flavor}) as {name}"):
        made = cli_register.register(
            plan, name, settings.tracking_uri, alias=alias, task=task, experiment=experiment
        )
    if json_out:
        print_json(made.as_dict())
        return
    out.print(
        Text(f"registered {made.name} v{made.version} ({made.flavor})", style="green")
        + Text(f" with alias {made.alias}" if made.alias else "")
    )
    out.print(f"signature: {_signature_text(made.signature)}", soft_wrap=True)
    if made.baseline:
        out.print("drift baseline: logged from the sample")
