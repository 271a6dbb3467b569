"""/v1/completions and /v1/chat/completions in-process: the gateway's HTTP layer and
generation path over the model server's own generation methods on a tiny model (no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import constants
from app.control.routing import ModelRoutes, RoutingTable, Target
from app.generation.engine import TextGenerator
from app.quality.compare import compare_texts
from app.serving.dataplane import DataPlane
from app.serving.generating import GenerationRecord, Generations
from app.serving.http import create_api
from app.serving.http_generate import add_generation_routes
from deployments.generation import GenerationMethods
from tests.unit.generation.tiny import CONTEXT, tiny_generator
from tests.unit.serving.test_http import LIMIT, assert_error, target


class GenerativeBackend(GenerationMethods):
    """A version that generates: the model server's methods over an in-process model."""

    def __init__(self, where: Target, generator: TextGenerator | None) -> None:
        self.model_name, self.version, self._generator = where.model, where.version, generator
        self.calls = 0

    async def predict(self, inputs: Any) -> dict[str, Any]:
        return {"outputs": ["x"] * len(inputs)}

    async def metadata(self) -> dict[str, Any]:
        return {"platform": "mlflow.transformers", "generation": self.generation_metadata()}

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return await super().generate(request)


@pytest.fixture
def generator() -> TextGenerator:
    return tiny_generator()


@pytest.fixture
def setup(generator: TextGenerator) -> tuple[FastAPI, dict[str, GenerativeBackend], list[Any]]:
    backends: dict[str, GenerativeBackend] = {}

    def backend_for(where: Target) -> GenerativeBackend:
        if where.app_name not in backends:
            generative = where.model == "textgen"
            backends[where.app_name] = GenerativeBackend(where, generator if generative else None)
        return backends[where.app_name]

    dataplane = DataPlane(backend_for=backend_for)  # type: ignore[arg-type]
    dataplane.update_table(
        RoutingTable(
            epoch=1,
            models={
                "textgen": ModelRoutes(
                    name="textgen",
                    champion=target("textgen", "1"),
                    shadow=target("textgen", "2", constants.ROLE_SHADOW),
                    shadow_fraction=1.0,
                ),
                "iris": ModelRoutes(name="iris", champion=target("iris", "2")),
            },
        )
    )
    records: list[GenerationRecord] = []
    api = create_api(dataplane, max_body_bytes=LIMIT * 1024)
    add_generation_routes(api, Generations(dataplane, records.append), "X-Routing-Key")
    return api, backends, [dataplane, records]


async def _post(api: FastAPI, url: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(url, json=body)
        await asyncio.sleep(0.05)  # let the background mirror finish
        return response


def post(api: FastAPI, url: str, body: dict[str, Any]) -> httpx.Response:
    return asyncio.run(_post(api, url, body))


def events(response: httpx.Response) -> list[Any]:
    frames = [f for f in response.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[6:] if f == "data: [DONE]" else json.loads(f[6:]) for f in frames]


BODY = {"model": "textgen", "prompt": "the registry", "max_tokens": 12, "seed": 4}


def test_a_completion_with_usage_and_the_version_that_answered(setup: Any) -> None:
    api, _, (_, records) = setup
    resp = post(api, "/v1/completions", BODY)
    assert resp.status_code == 200, resp.text
    assert resp.headers[constants.HEADER_MODEL_VERSION] == "1"
    body = resp.json()
    assert body["object"] == "text_completion" and body["model"] == "textgen"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    assert records[0].tokens == usage["completion_tokens"] and records[0].role == "champion"


def test_a_stream_is_the_same_answer_in_chunks_ending_with_done(setup: Any) -> None:
    api, _, (_, records) = setup
    whole = post(api, "/v1/completions", BODY).json()["choices"][0]["text"]
    resp = post(
        api, "/v1/completions", {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    got = events(resp)
    assert got[-1] == "[DONE]"
    assert got[-2]["choices"] == [] and got[-2]["usage"]["completion_tokens"] >= 1
    assert got[-3]["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "".join(c["choices"][0]["text"] for c in got[:-2]) == whole
    assert records[-1].time_to_first_token_s is not None


def test_a_chat_stream_names_the_role_first(setup: Any) -> None:
    api, _, _ = setup
    body = {"model": "textgen", "messages": [{"role": "user", "content": "hi"}], "seed": 2}
    whole = post(api, "/v1/chat/completions", body).json()
    assert whole["object"] == "chat.completion"
    got = events(post(api, "/v1/chat/completions", {**body, "stream": True}))
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in got[:-1])
    assert text == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_too_long_for_the_context_is_a_422_before_any_stream(
    setup: Any, stream: bool
) -> None:
    api, _, _ = setup
    body = {**BODY, "prompt": "the registry " * CONTEXT, "max_tokens": 1, "stream": stream}
    assert_error(post(api, "/v1/completions", body), 422, "invalid_input", field="prompt")


def test_max_tokens_over_the_context_and_bad_parameters_are_422s(setup: Any) -> None:
    api, _, _ = setup
    too_many = post(api, "/v1/completions", {**BODY, "max_tokens": CONTEXT})
    assert_error(too_many, 422, "invalid_input", field="max_tokens")
    assert_error(post(api, "/v1/completions", {**BODY, "top_p": 0}), 422, "invalid_input")
    no_stream = post(api, "/v1/completions", {**BODY, "stream_options": {"include_usage": True}})
    assert_error(no_stream, 422, "invalid_input", field="stream")


def test_a_model_that_does_not_generate_and_an_unknown_model(setup: Any) -> None:
    api, _, _ = setup
    iris = post(api, "/v1/completions", {**BODY, "model": "iris"})
    assert_error(iris, 422, "invalid_input", field="model")
    assert_error(post(api, "/v1/completions", {**BODY, "model": "nope"}), 404, "model_not_found")


def test_the_shadow_gets_the_prompt_and_is_compared_by_text(setup: Any) -> None:
    api, backends, (dataplane, _) = setup
    assert post(api, "/v1/completions", {**BODY, "stream": True}).status_code == 200
    shadow = backends[constants.version_app_name("textgen", "2")]
    assert shadow.calls == 1
    stats = dataplane.comparisons["textgen"]["2"]
    # the same model and seed: the same text
    assert stats.compared == 1 and stats.kind == "text" and stats.agreement == 1.0


def test_texts_compare_by_the_jaccard_similarity_of_their_words() -> None:
    assert compare_texts(["a b c"], ["a b c"]).value == 1.0
    assert compare_texts(["a b"], ["b c"]).value == pytest.approx(1 / 3)
    assert compare_texts(["", "x"], ["", "y"]).value == pytest.approx(0.5)
    assert compare_texts(["a"], []).kind == "mismatch"


def test_the_traffic_policy_applies_a_full_weight_challenger_answers(setup: Any) -> None:
    api, _, (dataplane, records) = setup
    routes = dataplane.table.models["textgen"]
    table = dataplane.table.model_copy(
        update={
            "epoch": 2,
            "models": {
                **dataplane.table.models,
                "textgen": routes.model_copy(
                    update={
                        "challenger": target("textgen", "3", constants.ROLE_CHALLENGER),
                        "challenger_weight": 100.0,
                        "shadow": None,
                    }
                ),
            },
        }
    )
    assert dataplane.update_table(table)
    for stream in (False, True):
        resp = post(api, "/v1/completions", {**BODY, "stream": stream})
        assert resp.headers[constants.HEADER_MODEL_VERSION] == "3"
        assert resp.headers[constants.HEADER_MODEL_ROLE] == constants.ROLE_CHALLENGER
    assert dataplane.arms["textgen"]["3"].requests == 2
    assert {r.role for r in records} == {constants.ROLE_CHALLENGER}


def test_a_client_that_leaves_closes_the_stream_at_once(setup: Any) -> None:
    """Sending fails mid-stream (the client left): the events are closed before the
    request ends, not whenever the garbage collector gets to them, so the version's call
    is cancelled and generation stops within a step."""
    api, _, (_, records) = setup
    body = json.dumps({**BODY, "max_tokens": 40, "temperature": 0, "stream": True}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"",
        "query_string": b"", "root_path": "", "server": ("test", 80), "client": ("c", 1),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and len(sent) >= 3:
            raise OSError("the client went away")
        sent.append(message)

    async def go() -> list[GenerationRecord]:
        with contextlib.suppress(Exception):
            await api(scope, receive, send)
        return list(records)  # before the event loop ends (and finalises generators)

    seen = asyncio.run(go())
    assert len(seen) == 1, "the stream was left open after the client left"
    assert 0 < seen[0].tokens < 40
