"""``modellane``: see and steer what serves, from a terminal.

Reads come from the gateway's admin API (``/admin/*``, with an admin key); promotions move
MLflow aliases, the registry being the one source of truth; then each change is followed
live until it happened or failed. Exit codes are documented in ``modellane --help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from app import constants
from app.cli.approve import approve
from app.cli.batch import batch_cli
from app.cli.client import (
    ENV_API_KEY,
    ENV_GATEWAY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    GATEWAY_HELP,
    KEY_HELP,
    CliError,
    Gateway,
    Registry,
    gateway_for,
)
from app.cli.common import (
    Interval,
    JsonFlag,
    Model,
    NoWait,
    Progress,
    Settings,
    Timeout,
    Version,
    err,
    out,
    print_json,
    reports_errors,
    settings_of,
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
from app.cli.policy import read_policy
from app.cli.register_command import register
from app.cli.views import events, status

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
cli.add_typer(batch_cli, name="batch")
# In the order `modellane --help` lists them.
cli.command()(status)
cli.command()(events)


class _Settings(Settings):
    def gateway_client(self) -> Gateway:  # the key is looked up once a command needs it
        return gateway_for(self.gateway, self.key)


@cli.callback()
def _options(
    ctx: typer.Context,
    gateway: Annotated[
        str, typer.Option("--gateway", envvar=ENV_GATEWAY, show_default=False, help=GATEWAY_HELP)
    ] = "",
    key: Annotated[
        str | None, typer.Option("--key", envvar=ENV_API_KEY, show_default=False, help=KEY_HELP)
    ] = None,
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri", envvar=constants.ENV_TRACKING_URI, help="The MLflow tracking URI."
        ),
    ] = constants.DEFAULT_TRACKING_URI,
) -> None:
    """Global options; they go before the command: ``modellane --key K status``."""
    ctx.obj = _Settings(gateway=gateway, key=key, tracking_uri=tracking_uri)


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
    with Progress(what) as progress:
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
        print_json(
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
@reports_errors
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
    settings = settings_of(ctx)
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


@cli.command()
@reports_errors
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
    own_policy = read_policy(policy) if policy is not None else None
    settings = settings_of(ctx)
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
@reports_errors
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
    settings = settings_of(ctx)
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
@reports_errors
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
    found = settings_of(ctx).gateway_client().set_traffic(model, challenger)
    version = (found.get("challenger") or {}).get("version")
    message = f"challenger v{version} of {model} gets {challenger:g}% of requests"
    rollout = found.get("rollout") or {}
    if rollout.get("status") == "paused" and rollout.get("version") == version:
        message += f" (its rollout is paused: modellane rollout resume {model})"
    _finish(model, Outcome(EXIT_OK, message, found), json_out, challenger=challenger)


@cli.command()
@reports_errors
def rollback(
    ctx: typer.Context,
    model: Model,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_out: JsonFlag = False,
    interval: Interval = 1.0,
) -> None:
    """Move alias champion back to the previous champion and show the switch."""
    gateway = settings_of(ctx).gateway_client()
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
    found = settings_of(ctx).gateway_client().rollout_action(model, action)
    rollout = found.get("rollout")
    message = f"{model}: rollout {action}d" + (f"; {rollout_text(rollout)}" if rollout else "")
    _finish(model, Outcome(EXIT_OK, message, found), json_out, action=action)


@rollout_cli.command("pause")
@reports_errors
def rollout_pause(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Hold the rollout at its current step and weight."""
    _rollout_action(ctx, model, "pause", json_out)


@rollout_cli.command("resume")
@reports_errors
def rollout_resume(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Go on with a paused rollout from its current step."""
    _rollout_action(ctx, model, "resume", json_out)


@rollout_cli.command("abort")
@reports_errors
def rollout_abort(ctx: typer.Context, model: Model, json_out: JsonFlag = False) -> None:
    """Stop the rollout: the challenger's weight drops to 0 and it loses its role."""
    _rollout_action(ctx, model, "abort", json_out)


cli.command()(register)
cli.command()(approve)


def main() -> None:
    """The ``modellane`` console script."""
    cli()


if __name__ == "__main__":
    main()
