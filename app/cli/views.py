"""The commands that only look: ``status`` and ``events``."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from app.cli.client import EXIT_REFUSED, EXIT_UNREACHABLE, CliError
from app.cli.common import Interval, JsonFlag, err, out, print_json, reports_errors, settings_of
from app.cli.render import event_line, events_table, model_view


@reports_errors
def status(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="One model; default: every served model.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show each model: versions, roles, traffic, rollout, health, comparison, drift.

    The rollout shows its step and gate figures; the comparison is the shadow's (and the
    challenger's) answers against the champion's.
    """
    gateway = settings_of(ctx).gateway_client()
    names = [model] if model else [m["name"] for m in gateway.models()]
    views = []
    for name in names:
        found = gateway.status(name)
        drift: dict[str, Any] | None
        try:
            drift = gateway.drift(name)
        except CliError as exc:
            if exc.exit_code not in (EXIT_REFUSED, EXIT_UNREACHABLE):
                raise
            drift = None  # drift is a side view: its absence must not hide the status
        views.append({**found, "drift": drift})
    if json_out:
        print_json({"models": views})
        return
    if not views:
        out.print("the gateway serves no models")
    for view in views:
        out.print(model_view(view, view["drift"]))


#: How long ``events --follow`` keeps trying through 5xx answers and an unreachable gateway.
_PATIENCE_S = 180.0


@reports_errors
def events(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Only this model's events.")] = None,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    since: Annotated[int, typer.Option("--since", min=0, help="Only events after this seq.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=2000, help="At most this many (the newest).")
    ] = 50,
    max_s: Annotated[
        float | None,
        typer.Option("--max-s", min=0, help="With --follow: stop after this many seconds."),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="JSON only on stdout: a list; with --follow, one event per line."
        ),
    ] = False,
    interval: Interval = 1.0,
) -> None:
    """Show the event trail: deploys, switches, rollbacks, rollouts, failures, drift."""
    gateway = settings_of(ctx).gateway_client()
    found = gateway.events(model, since=since, limit=limit)
    if not follow_:
        if json_out:
            print_json(found)
        elif found:
            out.print(events_table(found))
        else:
            out.print("no events")
        return
    last = int(found[-1]["seq"]) if found else since

    def show(batch: list[dict[str, Any]]) -> None:
        for event in batch:
            if json_out:
                sys.stdout.write(json.dumps(event) + "\n")
            else:
                out.print(event_line(event), soft_wrap=True)
        sys.stdout.flush()

    show(found)
    started = time.monotonic()
    failing_since: float | None = None
    try:
        while max_s is None or time.monotonic() - started < max_s:
            time.sleep(interval if max_s is None else max(0.0, min(interval, max_s)))
            try:
                batch = gateway.events(model, since=last, limit=2000)
            except CliError as exc:
                # A watcher being replaced, or the audit store down, answers 5xx a while; the
                # trail's seqs are durable, so following on from ``last`` later loses nothing.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    err.print(f"{exc.message}; still following (from seq {last})")
                if exc.exit_code != EXIT_UNREACHABLE or now - failing_since > _PATIENCE_S:
                    raise
                continue
            if failing_since is not None:
                failing_since = None
                err.print(f"the gateway answers again; following from seq {last}")
            if batch:
                last = int(batch[-1]["seq"])
                show(batch)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following: a clean exit


# -- changes through MLflow --------------------------------------------------------------------
