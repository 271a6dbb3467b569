"""OpenAI-compatible embeddings: ``POST /v1/embeddings``, for models that produce embeddings.

The request and answer have the shape of OpenAI's embeddings API, so its clients (the
``openai`` package among them) work unchanged with ``base_url`` pointed at the gateway.
The request follows the model's traffic policy like any other prediction.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import constants
from app.schemas import error_responses
from app.serving.dataplane import DataPlane
from app.serving.errors import InvalidInput, ModelFailed
from app.serving.guard import check_batch
from app.settings import LimitSettings


class EmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings`` (OpenAI's shape)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "minilm", "input": ["a sentence to embed"]}]},
    )

    model: str = Field(..., min_length=1, description="Registered model name, e.g. minilm.")
    input: str | list[str] = Field(
        ..., description="One text or a list of texts. Token arrays are not supported."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="'float': lists of numbers; 'base64': little-endian float32 bytes, base64.",
    )
    dimensions: int | None = Field(
        None, ge=1, description="Must equal the model's dimensions where given."
    )
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must hold at least one text")
            if not all(isinstance(v, str) for v in value):
                raise ValueError(
                    "input must be a text or a list of texts; token arrays are not supported"
                )
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(..., description="Position of the text in the request.")
    embedding: list[float] | str = Field(..., description="Numbers, or base64 of float32.")


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens the model read.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    """One vector as OpenAI sends it: numbers, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def _is_vector(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value
    )


def add_embeddings_routes(
    api: FastAPI, dataplane: DataPlane, limits: LimitSettings, routing_key_header: str
) -> None:
    @api.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=error_responses(
            {404: "Unknown model", 500: "The model raised", 503: "No healthy version of the model"}
        ),
        summary="OpenAI-compatible embeddings (models of the sentence-transformers flavor)",
        tags=["openai"],
    )
    async def embeddings(
        body: EmbeddingsRequest, response: Response, http: Request
    ) -> EmbeddingsResponse:
        http.state.modellane_model = body.model  # for the access log and metrics
        texts = [body.input] if isinstance(body.input, str) else body.input
        check_batch(len(texts), limits.max_batch_items, field="input")
        metadata = await dataplane.metadata(body.model)
        if not metadata.get("embeddings"):
            raise InvalidInput(
                f"model {body.model!r} does not produce embeddings "
                f"(its flavor is {metadata.get('platform')}); use POST "
                f"/v1/models/{body.model}/predict",
                model=body.model,
                field="model",
            )
        example = metadata.get("example_output") or [[]]
        if body.dimensions is not None and body.dimensions != len(example[0]):
            raise InvalidInput(
                f"model {body.model!r} produces {len(example[0])} dimensions, not "
                f"{body.dimensions}",
                model=body.model,
                field="dimensions",
            )
        result, target = await dataplane.predict(
            body.model,
            texts,
            routing_key=http.headers.get(routing_key_header),
            forced_version=http.headers.get(constants.HEADER_MODEL_VERSION),
        )
        if len(result.outputs) != len(texts) or not all(map(_is_vector, result.outputs)):
            raise ModelFailed(
                f"model {body.model} version {target.version} did not answer one vector per text",
                model=body.model,
                version=target.version,
            )
        response.headers[constants.HEADER_MODEL_VERSION] = target.version
        response.headers[constants.HEADER_MODEL_ROLE] = target.role
        tokens = (result.usage or {}).get("prompt_tokens")
        if tokens is None:  # a model without a tokenizer: count words, as a stand-in
            tokens = sum(len(text.split()) for text in texts)
        return EmbeddingsResponse(
            data=[
                Embedding(index=i, embedding=encode_embedding(vector, body.encoding_format))
                for i, vector in enumerate(result.outputs)
            ],
            model=body.model,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )


__all__ = ["EmbeddingsRequest", "EmbeddingsResponse", "add_embeddings_routes", "encode_embedding"]
