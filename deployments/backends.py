"""A model version reached through a Ray Serve deployment handle (the KServe adapter idea)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentResponseGenerator

from app import constants, tracing
from app.control.routing import Target
from app.serving.errors import ColdStartTimeout, ModelFailed, ModelUnavailable, Overloaded

logger = logging.getLogger("ray.serve")

#: Tries of one call when the replica that took it dies with it in flight. A prediction
#: changes nothing, so sending it again (Serve routes it to a live replica) is safe; this is
#: the server half of the retry policy in ``app.serving.retry``.
REPLICA_DEATH_TRIES = 3
REPLICA_DEATH_BACKOFF_S = 0.05
#: Retry-After of a request that found its version still starting from zero replicas.
COLD_START_RETRY_AFTER_S = 5.0


async def _awaited(response: Any) -> Any:
    return await response


class HandleBackend:
    """:class:`app.serving.dataplane.ModelBackend` over a version application's handle."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._handle = serve.get_deployment_handle(
            constants.MODEL_SERVER_DEPLOYMENT, app_name=target.app_name
        )

    @classmethod
    def for_target(cls, target: Target) -> HandleBackend:
        return cls(target)

    async def predict(self, inputs: Any) -> dict[str, Any]:
        # A traced request hands its trace context on (W3C headers) as a second argument.
        carrier = tracing.carrier()
        if carrier is None:
            return await self._call("predict", inputs)
        return await self._call("predict", inputs, carrier)

    async def metadata(self) -> dict[str, Any]:
        return await self._call("metadata")

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._call("generate", request)

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The version's events as its replica yields them (a Ray Serve streaming call).

        However this ends (the stream done, or the gateway's consumer gone with the client),
        the call is cancelled: the replica stops before its next token step."""
        stream: DeploymentResponseGenerator[dict[str, Any]]
        stream = self._handle.options(stream=True).generate_stream.remote(request)  # type: ignore[assignment]
        try:
            async for event in stream:
                yield event
        except (RayActorError, DeploymentUnavailableError) as exc:
            raise ModelUnavailable(
                f"model {self.target.model} version {self.target.version} is unavailable: "
                f"{type(exc).__name__}",
                model=self.target.model, version=self.target.version,
            ) from exc  # fmt: skip
        except BackPressureError as exc:
            raise Overloaded(
                f"model {self.target.model} version {self.target.version} is at capacity "
                "(its queue is full); retry after the Retry-After header's seconds",
                model=self.target.model, version=self.target.version,
            ) from exc  # fmt: skip
        except RayTaskError as exc:
            logger.exception("streaming call to %s failed", self.target.app_name)
            raise ModelFailed(
                f"model {self.target.model} version {self.target.version} failed: "
                f"{type(exc.cause).__name__ if exc.cause else 'error'}",
                model=self.target.model, version=self.target.version,
            ) from exc  # fmt: skip
        finally:
            stream.cancel()

    async def _answer(self, method: str, *args: Any) -> dict[str, Any]:
        """One call; for a version that scales to zero, bounded by its cold-start wait."""
        response = getattr(self._handle, method).remote(*args)
        wait_s = self.target.cold_start_timeout_s
        if wait_s is None:
            answer: dict[str, Any] = await response
            return answer
        try:
            answer = await asyncio.wait_for(_awaited(response), wait_s)
        except TimeoutError as exc:
            response.cancel()
            raise ColdStartTimeout(
                f"model {self.target.model} version {self.target.version} did not answer "
                f"within {wait_s:g}s (cold_start_timeout_s): it scales to zero when idle and "
                "its replica is still starting; retry after the Retry-After header's seconds",
                retry_after_s=COLD_START_RETRY_AFTER_S,
                model=self.target.model,
                version=self.target.version,
            ) from exc
        return answer

    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        where: dict[str, Any] = {"model": self.target.model, "version": self.target.version}
        for attempt in range(1, REPLICA_DEATH_TRIES + 1):
            try:
                return await self._answer(method, *args)
            except RayActorError as exc:  # the replica died (or vanished) under this call
                if attempt == REPLICA_DEATH_TRIES:
                    raise ModelUnavailable(
                        f"model {self.target.model} version {self.target.version} is "
                        f"unavailable: its replicas died ({type(exc).__name__})",
                        **where,
                    ) from exc
                logger.warning(
                    "a replica of %s died during %s (%s); try %d of %d",
                    self.target.app_name, method, type(exc).__name__,
                    attempt + 1, REPLICA_DEATH_TRIES,
                )  # fmt: skip
                await asyncio.sleep(REPLICA_DEATH_BACKOFF_S * attempt)
            except BackPressureError as exc:  # its queue is full: shed now, never wait
                raise Overloaded(
                    f"model {self.target.model} version {self.target.version} is at capacity "
                    "(its queue is full); retry after the Retry-After header's seconds",
                    **where,
                ) from exc
            except DeploymentUnavailableError as exc:
                raise ModelUnavailable(
                    f"model {self.target.model} version {self.target.version} is unavailable: "
                    f"{type(exc).__name__}",
                    **where,
                ) from exc
            except RayTaskError as exc:
                logger.exception("call to %s failed", self.target.app_name)
                raise ModelFailed(
                    f"model {self.target.model} version {self.target.version} failed: "
                    f"{type(exc.cause).__name__ if exc.cause else 'error'}",
                    **where,
                ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises
