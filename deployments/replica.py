"""The LLM replica deployment: one engine per GPU, pulling work by reporting its free capacity.

A replica reports `Engine.capacity()` to the scheduler actor every heartbeat (registering itself, and
re-registering after the actor restarts), preempts the requests the scheduler names in its answer
(their streams end with a "preempted" delta; the gateway resumes them elsewhere), and serves granted
requests as token streams. It keeps no drift statistics: the observed length reaches the scheduler
actor with the ingress's release, and the scheduler feeds the drift actor from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from ray import serve
from ray.exceptions import RayActorError

from deployments.actors import ActorNames
from deployments.engine import GenerationRequest, TokenDelta
from deployments.replica_config import ReplicaConfig, build_engine

logger = logging.getLogger(__name__)


@serve.deployment(name="LLMReplica")
class LLMReplica:
    """Serve deployment wrapping one `Engine` (see module docstring)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async __init__; mypy wants None
        self, config: dict[str, object], actors: ActorNames
    ) -> None:
        self._config = ReplicaConfig.model_validate(config)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._engine = build_engine(self._config)
        await self._engine.start()
        self._scheduler = actors.scheduler()
        self._tasks = [asyncio.get_running_loop().create_task(self._heartbeat())]
        logger.info("replica %s up: %s, %d slots", self._replica_id, self._config.model,
                    self._config.max_num_seqs)

    async def generate(
        self, request: GenerationRequest, target_replica: str | None = None
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream one granted request's tokens (`target_replica` is read by the router only)."""
        # aclosing: when the caller goes away while this generator waits at `yield`, the engine's
        # stream is closed (and the request aborted) now, not whenever the garbage collector gets to it.
        async with contextlib.aclosing(self._engine.generate(request)) as stream:
            async for delta in stream:
                yield delta

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose engine died is replaced."""
        check = getattr(self._engine, "check_health", None)
        if check is not None:
            await check()

    async def _heartbeat(self) -> None:
        while True:
            try:
                preempt = await asyncio.wait_for(
                    self._scheduler.report.remote(self._replica_id, self._engine.capacity()),
                    timeout=5.0,
                )
                for rid in preempt or ():
                    if await self._engine.preempt(rid):
                        logger.info("preempted %s for better-ranked work", rid)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("capacity report failed (%s); retrying", type(exc).__name__)
            except Exception:
                logger.exception("capacity report failed; retrying")
            await asyncio.sleep(self._config.heartbeat_s)

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._engine.stop()
