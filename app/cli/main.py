"""``modellane``: see and steer what serves, from a terminal.

Reads come from the gateway's admin API (``/admin/*``, with an admin key); promotions move
MLflow aliases, the registry being the one source of truth; then each change is followed
live until it happened or failed. Exit codes are documented in ``modellane --help``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from app import constants
from app.cli.client import (
    DEFAULT_GATEWAY,
    ENV_API_KEY,
    ENV_GATEWAY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Gateway,
    Registry,
    resolve_key,
)
from app.cli.follow import (
    Judge,
    Outcome,
    failure_attempts,
    follow,
    judge_canary,
    judge_promote,
    judge_shadow,
    rollout_text,
)
from app.cli.log import log_cli
from app.cli.render import event_line, events_table, model_view
from app.control.rollout import RolloutPolicy

EXIT_CODES = (
    "Exit codes: 0 ok; 1 the change failed (the version failed to load, the rollout was "
    "rolled back); 2 usage error; 3 timed out while following; 4 the gateway or MLflow is "
    "unreachable or failing; 5 the gateway or MLflow refused (unknown model or version, "
    "missing or non-admin key, a conflict such as no previous champion)."
)

cli = typer.Typer(
    name="modellane",
    help="See and steer the models modellane serves: status, promotions, canaries, "
    "shadows, traffic, rollbacks, rollouts, registration and the event trail.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    # A traceback with locals could print the API key.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
rollout_cli = typer.Typer(
    help="Pause, resume or abort the rollout in progress.", no_args_is_help=True
)
cli.add_typer(rollout_cli, name="rollout")
cli.add_typer(log_cli, name="log")

# Sentences are not wrapped (logs and pipes keep whole lines); tables fit the terminal.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Settings:
    """The global options, for every command."""

    gateway: str
    key: str | None
    tracking_uri: str

    def gateway_client(self) -> Gateway:
        return Gateway(self.gateway, self.key)

    def registry(self) -> Registry:
        return Registry(self.tracking_uri)


def _check_version(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"{value!r} is no model version: versions are numbers, e.g. 3")
    return value


Model = Annotated[str, typer.Argument(help="Registered model name, as the gateway serves it.")]
Version = Annotated[
    str, typer.Argument(help="Model version number in MLflow.", callback=_check_version)
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON only on stdout.")
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Return once the change is made; do not follow it.")
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0, help="Seconds to follow the change before exit 3.")
]
Interval = Annotated[
    float, typer.Option("--interval", min=0.05, hidden=True, help="Seconds between polls.")
]


@cli.callback()
def _options(
    ctx: typer.Context,
    gateway: Annotated[
        str, typer.Option("--gateway", envvar=ENV_GATEWAY, help="The gateway's base URL.")
    ] = DEFAULT_GATEWAY,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar=ENV_API_KEY,
            show_default=False,
            help="An admin API key. Default: .run/admin.key in the current directory, "
            "if there is one (scripts/up.sh writes it).",
        ),
    ] = None,
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri", envvar=constants.ENV_TRACKING_URI, help="The MLflow tracking URI."
        ),
    ] = constants.DEFAULT_TRACKING_URI,
) -> None:
    """Global options; they go before the command: ``modellane --key K status``."""
    ctx.obj = Settings(gateway=gateway, key=resolve_key(key), tracking_uri=tracking_uri)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print a :class:`CliError` to stderr, with what to do, and exit with its code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            err.print(Text(f"error: {exc.message}", style="red"))
            if exc.hint:
                err.print(Text(f"hint: {exc.hint}"))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: a change already made goes on (see: modellane status)")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return run


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


class _Progress:
    """A live status line on stderr (a spinner in a terminal, plain lines elsewhere)."""

    def __init__(self, what: str) -> None:
        self._status = err.status(what) if err.is_terminal else None
        if self._status is None:
            err.print(what)

    def __enter__(self) -> _Progress:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def update(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        if self._status is not None:
            self._status.update(stamped)
        else:
            err.print(stamped)


def _follow(
    gateway: Gateway,
    model: str,
    since: int,
    judge: Judge,
    what: str,
    timeout_s: float,
    interval_s: float,
    tags: Callable[[], dict[str, str]] | None = None,
) -> Outcome:
    with _Progress(what) as progress:
        return follow(
            gateway,
            model,
            since,
            judge,
            timeout_s=timeout_s,
            interval_s=interval_s,
            on_progress=progress.update,
            tags=tags,
        )


_WHAT_NEXT = {
    EXIT_FAILED: "what served before keeps serving; see why with: modellane events {model}",
    EXIT_TIMEOUT: "the change may still happen; see where it is with: modellane status {model}",
}


def _finish(model: str, outcome: Outcome, json_out: bool, **extra: Any) -> NoReturn:
    """Report how a change ended and exit with its code."""
    if json_out:
        _print_json(
            {
                "model": model,
                **extra,
                "ok": outcome.exit_code == EXIT_OK,
                "exit_code": outcome.exit_code,
                "message": outcome.message,
                "status": outcome.status,
            }
        )
    elif outcome.exit_code == EXIT_OK:
        out.print(Text(outcome.message, style="green"), soft_wrap=True)
    if outcome.exit_code != EXIT_OK:  # errors go to stderr, with --json too
        err.print(Text(f"error: {outcome.message}", style="red"))
        hint = _WHAT_NEXT.get(outcome.exit_code)
        if hint:
            err.print(f"hint: {hint.format(model=model)}")
    raise typer.Exit(outcome.exit_code)


def _move_alias_and_follow(
    gateway: Gateway,
    registry: Registry,
    model: str,
    version: str,
    role: str,
    before: dict[str, Any],
    judge: Judge,
    what: str,
    *,
    no_wait: bool,
    json_out: bool,
    timeout_s: float,
    interval_s: float,
    tags: Callable[[], dict[str, str]] | None = None,
) -> NoReturn:
    """Move alias ``role`` to ``version``, wake the watcher, then follow (unless
    ``no_wait``) until ``judge`` says how it ended; exits with its code."""
    since = gateway.last_seq(model)
    registry.set_alias(model, role, version)
    gateway.reload()
    if no_wait:
        message = f"alias {role} of {model} moved to v{version}; the watcher follows it"
        _finish(model, Outcome(EXIT_OK, message, before), json_out, version=version)
    outcome = _follow(gateway, model, since, judge, what, timeout_s, interval_s, tags=tags)
    _finish(model, outcome, json_out, version=version)


def _not_the_champion(before: dict[str, Any], model: str, version: str, role: str) -> None:
    if before.get("serving_version") == version:
        raise CliError(
            f"v{version} is the champion of {model}; a {role} must be another version",
            EXIT_USAGE,
        )


# -- read commands ---------------------------------------------------------------------------


@cli.command()
@_reports_errors
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
    gateway = _settings(ctx).gateway_client()
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
        _print_json({"models": views})
        return
    if not views:
        out.print("the gateway serves no models")
    for view in views:
        out.print(model_view(view, view["drift"]))


@cli.command()
@_reports_errors
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
    gateway = _settings(ctx).gateway_client()
    found = gateway.events(model, since=since, limit=limit)
    if not follow_:
        if json_out:
            _print_json(found)
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
    errors = 0
    try:
        while max_s is None or time.monotonic() - started < max_s:
            time.sleep(interval if max_s is None else max(0.0, min(interval, max_s)))
            try:
                batch = gateway.events(model, since=last, limit=2000)
                errors = 0
            except CliError as exc:
                errors += 1
                if exc.exit_code != EXIT_UNREACHABLE or errors >= 5:
                    raise
                continue
            if batch:
                last = int(batch[-1]["seq"])
                show(batch)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following: a clean exit


# -- changes through MLflow --------------------------------------------------------------------


@cli.command()
@_reports_errors
def promote(
    ctx: typer.Context,
    model: Model,
    version: Version,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_out: JsonFlag = False,
    interval: Interval = 1.0,
) -> None:
    """Make VERSION the champion (alias champion in MLflow) and follow the switch.

    Exits 0 once it serves, 1 if it fails to load (what served keeps serving).
    """
    settings = _settings(ctx)
    gateway, registry = settings.gateway_client(), settings.registry()
    before = gateway.status(model)  # an unknown model or a bad key fail before any change
    registry.check_reachable()
    registry.version_tags(model, version)  # the version exists
    _move_alias_and_follow(
        gateway, registry, model, version, constants.ROLE_CHAMPION, before,
        judge_promote(version, failure_attempts(before, version)),
        f"promoting {model} v{version} (alias champion moved; following the switch)",
        no_wait=no_wait, json_out=json_out, timeout_s=timeout, interval_s=interval,
    )  # fmt: skip


def _read_policy(value: str) -> RolloutPolicy:
    """``--policy``: JSON, or a file holding it; checked here before anything changes."""
    example = (
        '\'{"steps": [10, 50, 100], "step_interval_s": 60, "min_requests": 50, '
        '"gates": {"min_agreement": 0.9}}\''
    )
    path = Path(value)
    try:
        text = path.read_text() if path.is_file() else value
    except OSError as exc:
        raise CliError(f"cannot read the policy file {value}: {exc}", EXIT_USAGE) from exc
    try:
        return RolloutPolicy.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(
            f"--policy is not a rollout policy: {problems}",
            EXIT_USAGE,
            f"pass JSON (or a file of it) such as {example}",
        ) from exc


@cli.command()
@_reports_errors
def canary(
    ctx: typer.Context,
    model: Model,
    version: Version,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="This version's own rollout policy, as JSON or a JSON file (steps, "
            "step_interval_s, min_requests, gates); default: the model's configured one.",
        ),
    ] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_out: JsonFlag = False,
    interval: Interval = 1.0,
) -> None:
    """Make VERSION the challenger (alias challenger) and follow its rollout.

    Exits 0 once promoted, 1 if rolled back; for a model without a rollout policy, 0 once
    the challenger is routable (then set its weight with: modellane traffic).
    """
    own_policy = _read_policy(policy) if policy is not None else None
    settings = _settings(ctx)
    gateway, registry = settings.gateway_client(), settings.registry()
    before = gateway.status(model)
    _not_the_champion(before, model, version, constants.ROLE_CHALLENGER)
    registry.check_reachable()
    tags = registry.version_tags(model, version)
    if own_policy is not None:
        registry.set_tag(model, version, constants.TAG_ROLLOUT_POLICY, own_policy.model_dump_json())
    elif constants.TAG_ROLLOUT_POLICY in tags:
        err.print(
            f"note: v{version} carries its own rollout policy (tag "
            f"{constants.TAG_ROLLOUT_POLICY}): {tags[constants.TAG_ROLLOUT_POLICY]}"
        )
    _move_alias_and_follow(
        gateway, registry, model, version, constants.ROLE_CHALLENGER, before,
        judge_canary(version, before, tags.get(constants.TAG_ROLLOUT_RESULT)),
        f"canary {model} v{version} (alias challenger moved; following its rollout)",
        no_wait=no_wait, json_out=json_out, timeout_s=timeout, interval_s=interval,
        tags=lambda: registry.version_tags(model, version),
    )  # fmt: skip


@cli.command()
@_reports_errors
def shadow(
    ctx: typer.Context,
    model: Model,
    version: Version,
    fraction: Annotated[
        float | None,
        typer.Option(
            "--fraction",
            min=0.0,
            max=1.0,
            help="Share of requests mirrored to it, 0 to 1; default: the model's configured "
            "shadow_fraction.",
        ),
    ] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_out: JsonFlag = False,
    interval: Interval = 1.0,
) -> None:
    """Mirror requests to VERSION (alias shadow) and follow until it is routable.

    Its answers are compared with the champion's, never returned: see modellane status.
    """
    settings = _settings(ctx)
    gateway, registry = settings.gateway_client(), settings.registry()
    before = gateway.status(model)
    _not_the_champion(before, model, version, constants.ROLE_SHADOW)
    registry.check_reachable()
    registry.version_tags(model, version)
    if fraction is not None:
        registry.set_tag(model, version, constants.TAG_SHADOW_FRACTION, f"{fraction:g}")
    _move_alias_and_follow(
        gateway, registry, model, version, constants.ROLE_SHADOW, before,
        judge_shadow(version, failure_attempts(before, version)),
        f"shadow {model} v{version} (alias shadow moved; following)",
        no_wait=no_wait, json_out=json_out, timeout_s=timeout, interval_s=interval,
    )  # fmt: skip


# -- changes through the admin API -----------------------------------------------------------


@cli.command()
@_reports_errors
def traffic(
    ctx: typer.Context,
    model: Model,
    challenger: Annotated[
        float,
        typer.Option(
            "--challenger", min=0.0, max=100.0, help="Percent of requests to the challenger."
        ),
    ],
    json_out: JsonFlag = False,
) -> None:
    """Set the challenger's weight by hand (it pauses a rollout in progress)."""
    found = _settings(ctx).gateway_client().set_traffic(model, challenger)
    version = (found.get("challenger") or {}).get("version")
    message = f"challenger v{version} of {model} gets {challenger:g}% of requests"
    rollout = found.get("rollout") or {}
    if rollout.get("status") == "paused" and rollout.get("version") == version:
        message += f" (its rollout is paused: modellane rollout resume {model})"
    _finish(model, Outcome(EXIT_OK, message, found), json_out, challenger=challenger)


@cli.command()
@_reports_errors
def rollback(
    ctx: typer.Context,
    model: Model,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_out: JsonFlag = False,
    interval: Interval = 1.0,
) -> None:
    """Move alias champion back to the previous champion and show the switch."""
    gateway = _settings(ctx).gateway_client()
    since = gateway.last_seq(model)
    result = gateway.rollback(model)
    old, new = result.get("from_version"), result["to_version"]
    extra = {"from_version": old, "to_version": new, "switch_s": result.get("switch_s")}
    if result.get("switched"):
        at = time.strftime("%H:%M:%S", time.localtime(result["status"].get("loaded_at") or 0))
        message = (
            f"{model}: rolled back v{old} -> v{new}; switched at {at}, "
            f"{result['switch_s']:.2f}s after the call"
        )
        _finish(model, Outcome(EXIT_OK, message, result["status"]), json_out, **extra)
    if no_wait:
        message = f"{model}: alias champion moved back to v{new}; the switch is under way"
        _finish(model, Outcome(EXIT_OK, message, result["status"]), json_out, **extra)
    outcome = _follow(
        gateway,
        model,
        since,
        judge_promote(new),
        f"{model}: rolling back v{old} -> v{new} (v{new} is loading)",
        timeout,
        interval,
    )
    _finish(model, outcome, json_out, **extra)


def _rollout_action(ctx: typer.Context, model: str, action: str, json_out: bool) -> None:
    found = _settings(ctx).gateway_client().rollout_action(model, action)
    rollout = found.get("rollout")
    message = f"{model}: rollout {action}d" + (f"; {rollout_text(rollout)}" if rollout else "")
    _finish(model, Outcome(EXIT_OK, message, found), json_out, action=action)


@rollout_cli.command("pause")
@_reports_errors
def rollout_pause(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Hold the rollout at its current step and weight."""
    _rollout_action(ctx, model, "pause", json_out)


@rollout_cli.command("resume")
@_reports_errors
def rollout_resume(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Go on with a paused rollout from its current step."""
    _rollout_action(ctx, model, "resume", json_out)


@rollout_cli.command("abort")
@_reports_errors
def rollout_abort(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Stop the rollout: the challenger's weight drops to 0 and it loses its role."""
    _rollout_action(ctx, model, "abort", json_out)


# -- registration ------------------------------------------------------------------------------


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


@cli.command()
@_reports_errors
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
    settings = _settings(ctx)
    settings.registry().check_reachable()
    with _Progress(f"registering {path} ({plan.flavor}) as {name}"):
        made = cli_register.register(
            plan, name, settings.tracking_uri, alias=alias, task=task, experiment=experiment
        )
    if json_out:
        _print_json(made.as_dict())
        return
    out.print(
        Text(f"registered {made.name} v{made.version} ({made.flavor})", style="green")
        + Text(f" with alias {made.alias}" if made.alias else "")
    )
    out.print(f"signature: {_signature_text(made.signature)}", soft_wrap=True)
    if made.baseline:
        out.print("drift baseline: logged from the sample")


def main() -> None:
    """The ``modellane`` console script."""
    cli()


if __name__ == "__main__":
    main()
