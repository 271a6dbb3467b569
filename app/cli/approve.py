"""``modellane approve MODEL VERSION --note ...``: approve a version to serve as champion.

For models with ``require_approval``: the key needs the ``approve`` (or admin) scope, and
the approval is stored on the version in MLflow (who, when, the note) and in the audit
trail. A version the registry already names champion, held back for want of it, then
switches in (``modellane status MODEL`` shows it).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from app.cli.common import JsonFlag, out, print_json, reports_errors, settings_of


@reports_errors
def approve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to approve.")],
    note: Annotated[
        str, typer.Option("--note", "-n", help="Why it may serve; kept with the approval.")
    ] = "",
    json_out: JsonFlag = False,
) -> None:
    """Approve a version to serve as champion (models with require_approval)."""
    gateway = settings_of(ctx).gateway_client()
    path = f"/admin/models/{model}/versions/{version}/approve"
    result: dict[str, Any] = gateway.request("POST", path, json={"note": note})
    if json_out:
        print_json(result)
        return
    serving = result["status"].get("serving_version")
    out.print(
        Text(
            f"{model} v{version} approved by {result['approved_by']} at "
            f"{result['approved_at']}; serving v{serving} now",
            style="green",
        ),
        soft_wrap=True,
    )
