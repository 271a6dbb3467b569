"""The gateway's wait for a version at zero replicas (deployments/backends.py), over a fake
handle: answered within ``cold_start_timeout_s``, else 503 ``cold_start`` with Retry-After
and the call cancelled; a version that does not scale to zero is never cut short."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.control.routing import Target
from app.serving.errors import ColdStartTimeout


class _Response:
    """A DeploymentResponse: awaited for the answer, cancelled on a time-out."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.cancelled = delay_s, False

    def __await__(self) -> Any:
        return self._answer().__await__()

    async def _answer(self) -> dict[str, Any]:
        await asyncio.sleep(self.delay_s)
        return {"outputs": [1]}

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    def __init__(self, delay_s: float) -> None:
        self.responses: list[_Response] = []
        self.delay_s = delay_s
        self.predict = self

    def remote(self, *args: Any) -> _Response:
        self.responses.append(_Response(self.delay_s))
        return self.responses[-1]


def _backend(monkeypatch: pytest.MonkeyPatch, delay_s: float, wait_s: float | None) -> Any:
    from deployments import backends

    handle = _Handle(delay_s)
    monkeypatch.setattr(backends.serve, "get_deployment_handle", lambda *a, **k: handle)
    target = Target(
        model="wine", version="1", app_name="wine-v1", source="x", loaded_at=0.0,
        cold_start_timeout_s=wait_s,
    )  # fmt: skip
    return backends.HandleBackend(target), handle


def test_a_replica_that_starts_in_time_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, handle = _backend(monkeypatch, delay_s=0.05, wait_s=5.0)
    assert asyncio.run(backend.predict({"x": 1})) == {"outputs": [1]}
    assert not handle.responses[0].cancelled


def test_past_the_cold_start_wait_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, handle = _backend(monkeypatch, delay_s=5.0, wait_s=0.05)
    with pytest.raises(ColdStartTimeout) as raised:
        asyncio.run(backend.predict({"x": 1}))
    error = raised.value
    assert (error.status, error.code) == (503, "cold_start") and error.retry_after_s >= 1
    assert "cold_start_timeout_s" in error.message and handle.responses[0].cancelled
    assert len(handle.responses) == 1  # not sent again: the replica it asked for is starting


def test_a_version_that_never_scales_to_zero_is_not_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend, _ = _backend(monkeypatch, delay_s=0.2, wait_s=None)
    assert asyncio.run(backend.predict({"x": 1})) == {"outputs": [1]}
