"""app/cli/render.py: a model's status in a terminal, live quality included."""

from __future__ import annotations

from rich.console import Console

from app.cli.render import model_view


def _text(status: dict[str, object]) -> str:
    console = Console(width=140, record=True)
    console.print(model_view(status, None))
    return console.export_text()


def test_live_quality_per_role_is_shown_with_interval_and_labels() -> None:
    status = {
        "name": "iris",
        "serving_version": "2",
        "source": "alias:champion",
        "quality": {
            "champion": {"version": "2", "metric": "accuracy", "value": 0.9512,
                         "low": 0.93, "high": 0.966, "labels": 812},
            "challenger": {"version": "3", "metric": "accuracy", "value": None, "labels": 0},
        },
    }  # fmt: skip
    text = _text(status)
    assert "live quality" in text
    assert "0.951" in text and "0.930 .. 0.966" in text and "812" in text
    assert "challenger" in text


def test_no_quality_figures_no_table() -> None:
    assert "live quality" not in _text({"name": "iris", "serving_version": "2"})
