"""How the ``modellane`` CLI shows models and events in a terminal (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app import constants
from app.cli.follow import rollout_text

_KIND_STYLE = {
    "switch": "green",
    "promote": "bold green",
    "rollback": "yellow",
    "failure": "red",
    "retry": "red",
    "drift": "magenta",
    "registry_unreachable": "red",
    "no_champion": "red",
    "rollout": "cyan",
    "traffic": "cyan",
}


def clock_time(unix: float | None) -> str:
    """Local wall-clock time of a Unix time, ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(unix)) if unix else "-"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _health(status: dict[str, Any]) -> Text:
    health = status.get("health")
    if not health:
        return Text("no champion", style="red")
    replicas = ", ".join(f"{n} {state.lower()}" for state, n in health["replicas"].items())
    style = "green" if health["status"] == "RUNNING" else "yellow"
    return Text(f"{health['status']}" + (f" ({replicas})" if replicas else ""), style=style)


def _version_rows(status: dict[str, Any]) -> list[tuple[str, str, str, str, Text]]:
    """One row per version worth showing: registered versions, plus any the watcher
    mentions (deploying, failed, previous) that the list lacks."""
    challenger = status.get("challenger") or {}
    shadow = status.get("shadow") or {}
    weight = float(challenger.get("weight") or 0) if challenger else 0.0
    failures = {f["version"]: f for f in status.get("failures") or []}
    versions = {v["version"]: v for v in status.get("versions") or []}
    for extra in (status.get("deploying"), status.get("previous_version"), *failures):
        if extra and extra not in versions:
            versions[extra] = {"version": extra, "aliases": [], "stage": None, "role": None}
    rows = []
    for version in sorted(versions, key=lambda v: int(v) if v.isdigit() else 0, reverse=True):
        info = versions[version]
        marks = list(info.get("aliases") or [])
        if info.get("stage"):
            marks.append(f"stage {info['stage']}")
        role, traffic, state = "", "", Text("")
        if version == status.get("serving_version"):
            role, traffic = constants.ROLE_CHAMPION, f"{100 - weight:g}%"
            state = Text("serving", style="green")
        elif version == challenger.get("version"):
            role, traffic = constants.ROLE_CHALLENGER, f"{weight:g}%"
            state = Text("routable", style="green")
        elif version == shadow.get("version"):
            fraction = shadow.get("fraction")
            role = constants.ROLE_SHADOW
            traffic = f"mirror {fraction:.0%}" if fraction is not None else "mirror"
            state = Text("routable", style="green")
        if version == status.get("deploying"):
            state = Text("deploying", style="yellow")
        elif version in failures:
            f = failures[version]
            state = Text(
                f"failed x{f['attempts']}: {f['reason'][:80]} (retry in {f['next_try_in_s']:.0f}s)",
                style="red",
            )
        elif version == status.get("previous_version"):
            warm = "warm" if status.get("previous_warm") else "not deployed"
            state = Text(f"previous champion ({warm})", style="dim")
        rows.append((version, ", ".join(marks), role, traffic, state))
    return rows


def _comparison_table(status: dict[str, Any]) -> Table | None:
    rows = []
    for role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
        info = status.get(role) or {}
        comparison = info.get("comparison")
        if not comparison:
            continue
        kind = comparison.get("kind") or ""
        figure = f"agreement {_num(comparison.get('agreement'))}"
        if kind == "embedding":
            figure = f"cosine similarity {_num(comparison.get('agreement'))}"
        elif kind == "numeric":
            figure += f", mean difference {_num(comparison.get('mean'))}"
        rows.append(
            (
                role,
                info["version"],
                str(comparison.get("compared", 0)),
                figure,
                _num(comparison.get("latency_ratio"), 2),
                f"{comparison.get('errors', 0)} / {comparison.get('timeouts', 0)} / "
                f"{comparison.get('dropped', 0)}",
            )
        )
    if not rows:
        return None
    table = Table(title="answers compared with the champion's", title_justify="left")
    for column in ("role", "v", "compared", "figure", "latency ratio"):
        table.add_column(column)
    table.add_column("errors / timeouts / dropped")
    for row in rows:
        table.add_row(*row)
    return table


def _rollout_part(rollout: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [Text(rollout_text(rollout).split(";")[0], style="cyan")]
    if rollout.get("reason"):
        parts.append(Text(f"  {rollout['reason']}"))
    gates = rollout.get("gates") or []
    if gates:
        table = Table(title="gates (last step)", title_justify="left")
        for column in ("gate", "value", "limit", "passed", "detail"):
            table.add_column(column)
        for gate in gates:
            table.add_row(
                gate["name"],
                _num(gate.get("value")),
                _num(gate.get("limit")),
                Text("yes", style="green") if gate.get("passed") else Text("NO", style="red"),
                gate.get("detail") or "",
            )
        parts.append(table)
    return Group(*parts)


def _quality_table(status: dict[str, Any]) -> Table | None:
    """Live quality per role, from labels (``quality`` of the model's status)."""
    quality = status.get("quality") or {}
    if not quality:
        return None
    table = Table(title="live quality (labelled predictions)", title_justify="left")
    for column in ("role", "v", "metric", "value", "95% interval", "labels"):
        table.add_column(column)
    for role in (constants.ROLE_CHAMPION, constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
        row = quality.get(role)
        if not row:
            continue
        low, high = row.get("low"), row.get("high")
        interval = f"{_num(low)} .. {_num(high)}" if low is not None and high is not None else "-"
        table.add_row(
            role,
            str(row.get("version")),
            str(row.get("metric")),
            _num(row.get("value")),
            interval,
            str(row.get("labels", 0)),
        )
    return table


def _drift_part(drift: dict[str, Any] | None) -> RenderableType:
    if drift is None:
        return Text("drift: not available", style="dim")
    if not drift.get("baseline") and not drift.get("features"):
        return Text("drift: no baseline for this version (or no figures yet)", style="dim")
    features = drift.get("features") or []
    if not features:
        return Text("drift: no live figures yet", style="dim")
    drifted = [f["feature"] for f in features if f.get("drifted")]
    title = f"drift of v{drift.get('version')} (PSI threshold {_num(drift.get('threshold'), 2)})"
    table = Table(title=title, title_justify="left")
    for column in ("feature", "PSI", "KL", "window", "drifted"):
        table.add_column(column)
    for f in features:
        table.add_row(
            f["feature"],
            _num(f.get("psi")),
            _num(f.get("kl")),
            str(f.get("window", 0)),
            Text("DRIFTED", style="red")
            if f.get("drifted")
            else Text("too few values", style="dim")
            if f.get("psi") is None
            else Text("no", style="green"),
        )
    if drifted:
        return Group(table, Text(f"drift alert on {', '.join(drifted)}", style="red"))
    return table


def model_view(status: dict[str, Any], drift: dict[str, Any] | None) -> Panel:
    """One model: versions and roles, traffic, health, rollout and gates, live quality,
    comparison, drift."""
    serving = status.get("serving_version")
    head = Text()
    if serving:
        head.append(f"serving v{serving}", style="bold green")
        head.append(f" ({status.get('source')}) since {clock_time(status.get('loaded_at'))}")
    else:
        head.append("no champion serving", style="bold red")
    head.append("  health: ")
    head.append(_health(status))
    parts: list[RenderableType] = [head]
    if status.get("problem"):
        parts.append(Text(f"problem: {status['problem']}", style="red"))
    table = Table(title_justify="left")
    for column in ("version", "aliases / stage", "role", "traffic", "state"):
        table.add_column(column)
    for row in _version_rows(status):
        table.add_row(*row)
    parts.append(table)
    if status.get("rollout"):
        parts.append(_rollout_part(status["rollout"]))
    for extra in (_quality_table(status), _comparison_table(status)):
        if extra is not None:
            parts.append(extra)
    parts.append(_drift_part(drift))
    return Panel(Group(*parts), title=f"[bold]{status['name']}[/bold]", title_align="left")


def events_table(events: list[dict[str, Any]]) -> Table:
    """Events as a table: seq, time, model, version, kind, who acted, message."""
    table = Table()
    for column in ("seq", "time", "model", "version", "kind", "by", "message"):
        table.add_column(column, overflow="fold")
    for event in events:
        seq, at, model, version, kind, message = event_cells(event)
        table.add_row(seq, at, model, version, kind, str(event.get("actor") or "-"), message)
    return table


def event_cells(event: dict[str, Any]) -> tuple[str, str, str, str, Text, str]:
    kind = str(event.get("kind", ""))
    return (
        str(event.get("seq", "")),
        clock_time(event.get("time")),
        str(event.get("model") or "-"),
        str(event.get("version") or "-"),
        Text(kind, style=_KIND_STYLE.get(kind, "")),
        str(event.get("message", "")),
    )


def event_line(event: dict[str, Any]) -> Text:
    """One event on one line, for ``events --follow``."""
    seq, at, model, version, kind, message = event_cells(event)
    line = Text(f"{seq:>5} {at} {model} v{version} ")
    line.append(kind)
    if event.get("actor"):
        line.append(f" by {event['actor']}")
    line.append(f"  {message}")
    return line
