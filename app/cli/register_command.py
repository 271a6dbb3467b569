"""``modellane register``: log a local model into the registry as a new version."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from app import constants
from app.cli.client import EXIT_REFUSED, EXIT_USAGE, CliError, Gateway
from app.cli.common import (
    JsonFlag,
    Progress,
    err,
    out,
    print_json,
    reports_errors,
    settings_of,
)


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
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help=f"Tag the model {constants.TAG_SERVE}=true: the gateway discovers and "
            "serves it (with model_defaults) once a version holds alias champion.",
        ),
    ] = False,
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
    if serve:
        settings.registry().set_model_tag(name, constants.TAG_SERVE, "true")
    served, note = _who_serves(settings.gateway_client(), name, serve, made.alias)
    if json_out:
        print_json({**made.as_dict(), "serve": serve, "served": served, "note": note})
        return
    out.print(
        Text(f"registered {made.name} v{made.version} ({made.flavor})", style="green")
        + Text(f" with alias {made.alias}" if made.alias else "")
    )
    out.print(f"signature: {_signature_text(made.signature)}", soft_wrap=True)
    if made.baseline:
        out.print("drift baseline: logged from the sample")
    if note:
        err.print(Text(note, style="yellow" if served is False else ""))


def _who_serves(
    gateway: Gateway, name: str, tagged: bool, alias: str | None
) -> tuple[bool | None, str | None]:
    """Whether the gateway serves ``name`` (None: it could not say), and a line for the
    user where the answer needs one: above all, how to fix a model nothing will serve."""
    if tagged:
        with contextlib.suppress(CliError):  # best effort: the watcher polls anyway
            gateway.reload()
    try:
        gateway.status(name)
    except CliError as exc:
        if exc.exit_code == EXIT_REFUSED and "not served" in exc.message and not tagged:
            return False, (
                f"note: nothing serves {name}: it is not under models: in serve_config.yaml "
                f"and not tagged {constants.TAG_SERVE}=true. To serve it, register with "
                f"--serve, or run: mlflow's set_registered_model_tag({name!r}, "
                f"{constants.TAG_SERVE!r}, 'true')"
            )
        if tagged:
            return None, (
                f"tagged {constants.TAG_SERVE}=true: the gateway serves it within one poll "
                f"(its answer now: {exc.message})"
            )
        return None, f"note: could not ask the gateway whether it serves {name}: {exc.message}"
    if alias != constants.ROLE_CHAMPION:
        return True, (
            f"{name} is served; this version serves once it holds alias champion "
            f"(modellane promote {name} VERSION)"
        )
    return True, None
