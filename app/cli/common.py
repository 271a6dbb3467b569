"""What every ``modellane`` command shares: the consoles, the global options it reads,
argument types, how a failure is reported, JSON output and a progress line."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from app.cli.client import EXIT_INTERRUPTED, CliError, Gateway, Registry

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


def check_version(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"{value!r} is no model version: versions are numbers, e.g. 3")
    return value


Model = Annotated[str, typer.Argument(help="Registered model name, as the gateway serves it.")]
Version = Annotated[
    str, typer.Argument(help="Model version number in MLflow.", callback=check_version)
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


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
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


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


class Progress:
    """A live status line on stderr (a spinner in a terminal, plain lines elsewhere)."""

    def __init__(self, what: str) -> None:
        self._status = err.status(what) if err.is_terminal else None
        if self._status is None:
            err.print(what)

    def __enter__(self) -> Progress:
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
