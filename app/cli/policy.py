"""``modellane canary --policy``: a rollout policy given as JSON or a file, checked before
anything changes."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from app.cli.client import EXIT_USAGE, CliError
from app.control.rollout import RolloutPolicy

__all__ = ["read_policy"]


def read_policy(value: str) -> RolloutPolicy:
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
