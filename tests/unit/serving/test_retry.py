"""The retry policy: which failures a client may send again (app.serving.retry), and the gateway's
own retry when a model replica dies under a call (deployments.backends)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from app.control.routing import Target
from app.serving import retry
from app.serving.errors import ModelUnavailable


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (None, b"", True),  # no answer at all
        (502, b"", True),
        (503, b'{"error": {"code": "model_unavailable"}}', True),
        (504, b"", True),
        (500, b"Internal Server Error", True),  # the proxy's own: the gateway replica died
        (500, b'{"error": {"code": "model_failed", "status": 500}}', False),
        (500, b'{"error": "model failed"}', False),  # the OIP shape of the same
        (200, b"{}", False),
        (400, b"", False),
        (404, b'{"error": {}}', False),
        (422, b"", False),
        (429, b"", False),
    ],
)
def test_should_retry(status: int | None, body: bytes, expected: bool) -> None:
    assert retry.should_retry(status, body) is expected


def test_delay_follows_retry_after_within_a_cap_else_backoff() -> None:
    assert retry.delay_s(1) == retry.BACKOFF_S[0]
    assert retry.delay_s(2) == retry.BACKOFF_S[1]
    assert retry.delay_s(9) == retry.BACKOFF_S[-1]
    assert retry.delay_s(1, "2") == 2.0
    assert retry.delay_s(1, "3600") == retry.MAX_RETRY_AFTER_S
    assert retry.delay_s(1, "Wed, 21 Oct 2015 07:28:00 GMT") == retry.BACKOFF_S[0]


class _Call:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes, self.calls = outcomes, 0

    def remote(self, *args: Any) -> Any:
        outcome = self.outcomes[self.calls]
        self.calls += 1

        async def answer() -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


class _Handle:
    def __init__(self, outcomes: list[Any]) -> None:
        self.predict = _Call(outcomes)


def _backend(monkeypatch: pytest.MonkeyPatch, outcomes: list[Any]) -> Any:
    from deployments import backends

    handle = _Handle(outcomes)
    monkeypatch.setattr(backends.serve, "get_deployment_handle", lambda *a, **k: handle)
    monkeypatch.setattr(backends, "REPLICA_DEATH_BACKOFF_S", 0.0)
    target = Target(
        model="iris", version="2", role="champion", app_name="iris-v2", source="x", loaded_at=0.0
    )
    return backends.HandleBackend(target), handle


def test_gateway_sends_a_call_again_when_its_replica_died(monkeypatch: pytest.MonkeyPatch):
    backend, handle = _backend(
        monkeypatch, [ActorDiedError(), ActorUnavailableError("gone", None), {"outputs": [1]}]
    )
    assert asyncio.run(backend.predict({"x": 1})) == {"outputs": [1]}
    assert handle.predict.calls == 3


def test_gateway_gives_up_after_its_tries_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.backends import REPLICA_DEATH_TRIES

    backend, handle = _backend(monkeypatch, [ActorDiedError()] * REPLICA_DEATH_TRIES)
    with pytest.raises(ModelUnavailable) as raised:
        asyncio.run(backend.predict({"x": 1}))
    assert raised.value.status == 503
    assert handle.predict.calls == REPLICA_DEATH_TRIES
