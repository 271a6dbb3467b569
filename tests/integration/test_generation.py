"""Text generation through the real stack with the real ``openai`` package, unchanged:
completions and chat completions, whole and streamed (server-sent events, token by
token), a client that leaves mid-stream (the replica stops: its tokens are counted), the
422 bounds, and a canary rollout of a second ``textgen`` version."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from mlflow import MlflowClient

from app import constants
from tests.helpers import PREDICT_HEADERS, PREDICT_KEY, wait_for
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration

MODEL = "textgen"
CONTEXT = 256  # scripts/register_demo_models.py's TEXTGEN_CONTEXT
#: Steps of 2 s and few requests: the rollout below takes seconds, not minutes.
FAST_POLICY = {
    "steps": [50, 100],
    "step_interval_s": 2,
    "min_requests": 6,
    "gates": {"max_error_rate_margin": 0.2, "max_p95_factor": 50.0, "min_agreement": 0.9},
}


@pytest.fixture()
def oai(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=PREDICT_KEY, max_retries=0)


@pytest.fixture(scope="module")
def generated_tokens(gateway: str) -> Iterator[Callable[[], int]]:
    """Reads the tokens textgen v1's replica generated so far (its own count, through Ray).

    Where Ray's request-path options are on, a handle lives on a running event loop: one
    of its own, in a thread, for this module."""
    from ray import serve

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def read() -> int:
        handle = serve.get_deployment_handle(
            constants.MODEL_SERVER_DEPLOYMENT, app_name=constants.version_app_name(MODEL, "1")
        )
        return int((await handle.generation_stats.remote())["generated_tokens"])

    try:
        yield lambda: asyncio.run_coroutine_threadsafe(read(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_completions_whole_and_streamed_are_the_same_answer(
    oai: openai.OpenAI, roles: Roles
) -> None:
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    ask: dict[str, Any] = {"model": MODEL, "prompt": "the registry decides", "seed": 11}
    whole = oai.completions.create(**ask, max_tokens=24, temperature=0.8)
    assert whole.model == MODEL and whole.usage is not None
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    streamed = list(oai.completions.create(**ask, max_tokens=24, temperature=0.8, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len({c.id for c in streamed}) == 1

    # Token by token: a long greedy answer's first chunk comes well before its last.
    started = time.perf_counter()
    arrivals, texts = [], []
    for chunk in oai.completions.create(**ask, max_tokens=200, temperature=0, stream=True):
        arrivals.append(time.perf_counter() - started)
        texts.append(chunk.choices[0].text)
    assert len(arrivals) >= 20, texts
    assert arrivals[0] < arrivals[-1] / 2, (arrivals[0], arrivals[-1])
    assert arrivals == sorted(arrivals)


def test_chat_completions_whole_and_streamed(oai: openai.OpenAI, roles: Roles) -> None:
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "seed": 3,
    }
    whole = oai.chat.completions.create(**ask)
    assert whole.choices[0].message.role == "assistant"
    chunks = list(
        oai.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_client_that_leaves_mid_stream_stops_generation(
    gateway: str, roles: Roles, generated_tokens: Callable[[], int]
) -> None:
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    asked = CONTEXT - 16
    # Greedy from this prompt, the demo model's every token makes text: a chunk a token.
    prompt = "the registry decides"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": asked, "temperature": 0, "stream": True}
    before = generated_tokens()
    with (
        httpx.Client(base_url=gateway, headers=PREDICT_HEADERS, timeout=60) as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [line for line, _ in zip(lines, range(6), strict=False) if line]
    # the connection is closed: the replica's count must stop growing, well short of asked
    assert got and all(line.startswith("data: ") for line in got)

    def settled() -> int | None:
        first = generated_tokens()
        time.sleep(0.5)  # two readings apart: generation has stopped when they agree
        return first - before if generated_tokens() == first else None

    generated = wait_for(settled, 30, "the replica to stop generating")
    assert generated < asked / 2, f"{generated} of {asked} tokens generated after a disconnect"
    # The whole answer, asked again, does reach max_tokens (greedy: the same tokens).
    with httpx.Client(base_url=gateway, headers=PREDICT_HEADERS, timeout=60) as client:
        full = client.post("/v1/completions", json={**body, "stream": False}).json()
    assert full["usage"]["completion_tokens"] == asked, full["usage"]


def test_bounds_and_bad_parameters_are_422s(oai: openai.OpenAI) -> None:
    long_prompt = "the registry decides which version serves " * 60
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            oai.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4, stream=stream)
        assert caught.value.body["field"] == "prompt", caught.value.body  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=CONTEXT)
    assert caught.value.body["field"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model=MODEL, prompt="hi", temperature=5)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        oai.completions.create(model="iris", prompt="hi")  # not a generative model
    assert caught.value.body["field"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="hi")


def test_a_canary_of_a_second_version_is_promoted(
    gateway: str, client: httpx.Client, roles: Roles, registry: str
) -> None:
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    MlflowClient(registry).set_model_version_tag(
        MODEL, "2", constants.TAG_ROLLOUT_POLICY, json.dumps(FAST_POLICY)
    )
    roles.set(MODEL, challenger="2")
    served: dict[str, int] = {}

    def rollout_over() -> dict[str, Any] | None:
        for i in range(4):  # a few generations, streamed and not, between two looks
            answer = httpx.post(
                f"{gateway}/v1/completions",
                headers=PREDICT_HEADERS,
                json={"model": MODEL, "prompt": f"step {i}", "max_tokens": 6, "stream": i % 2 == 1},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            version = answer.headers[constants.HEADER_MODEL_VERSION]
            served[version] = served.get(version, 0) + 1
        rollout = client.get(f"/admin/models/{MODEL}").json().get("rollout") or {}
        return rollout if rollout.get("status") in ("promoted", "rolled_back") else None

    rollout = wait_for(rollout_over, 150, "the textgen rollout to end", every_s=0.2)
    assert rollout["status"] == "promoted", json.dumps(rollout, indent=1)
    assert served.get("2", 0) > 0 and served.get("1", 0) > 0, served
    # The outcome is written as the alias moves: the switch follows within a reconcile.
    wait_for(
        lambda: client.get(f"/admin/models/{MODEL}").json()["serving_version"] == "2",
        60,
        "textgen v2 to serve as champion",
    )
