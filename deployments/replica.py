"""The LLM replica deployment: one engine per GPU, pulling work by reporting its free capacity.

A replica reports `Engine.capacity()` and its prefix-cache counters to the scheduler actor every
heartbeat (registering itself, and re-registering after the actor restarts), preempts the requests the
scheduler names in its answer (their streams end with a "preempted" delta; the gateway resumes them
elsewhere), and serves granted requests as token streams. It keeps no drift statistics: the observed
length reaches the scheduler actor with the ingress's release, and the scheduler feeds the drift actor
from there.

A request's first token also brings the next report forward (`ReportPacer`): the placement counts a
grant's prompt as prefill in flight on its replica until a report shows it generating, and a prefill
that ended long before the heartbeat would otherwise keep the replica looking busy, and the requests
whose prefix it holds going elsewhere.
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


class ReportPacer:
    """When a replica reports next: `heartbeat_s` after its last report, or sooner, `min_gap_s` after
    it, once a request it runs has produced its first token (module docstring). The gap bounds the
    reports a busy replica sends to `1 / min_gap_s` a second (default: four per heartbeat)."""

    def __init__(self, heartbeat_s: float, min_gap_s: float | None = None) -> None:
        self.heartbeat_s = heartbeat_s
        self.min_gap_s = heartbeat_s / 4 if min_gap_s is None else min(min_gap_s, heartbeat_s)
        self._started = asyncio.Event()

    def first_token(self) -> None:
        """A request produced its first token: report soon."""
        self._started.set()

    def reporting(self) -> None:
        """A report is being sent now: first tokens from here on bring the next one forward."""
        self._started.clear()

    async def wait(self) -> None:
        """Until the next report is due."""
        await asyncio.sleep(self.min_gap_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), self.heartbeat_s - self.min_gap_s)


@serve.deployment(name="LLMReplica")
class LLMReplica:
    """Serve deployment wrapping one `Engine` (see module docstring)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async __init__; mypy wants None
        self, config: dict[str, object], actors: ActorNames, block_tokens: int = 0
    ) -> None:
        """`block_tokens`: the placement's prefix block, the simulated engine's cache block
        (`build_engine`)."""
        self._config = ReplicaConfig.model_validate(config)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._engine = build_engine(self._config, block_tokens)
        await self._engine.start()
        self._scheduler = actors.scheduler()
        self._pacer = ReportPacer(self._config.heartbeat_s)
        self._tasks = [asyncio.get_running_loop().create_task(self._heartbeat())]
        logger.info("replica %s up: %s, %d slots", self._replica_id, self._config.model,
                    self._config.max_num_seqs)

    async def generate(
        self, request: GenerationRequest, target_replica: str | None = None
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream one granted request's tokens (`target_replica` is read by the router only)."""
        # aclosing: when the caller goes away while this generator waits at `yield`, the engine's
        # stream is closed (and the request aborted) now, not whenever the garbage collector gets to it.
        started = False
        async with contextlib.aclosing(self._engine.generate(request)) as stream:
            async for delta in stream:
                if not started and (delta.num_tokens or delta.text):
                    started = True
                    self._pacer.first_token()
                yield delta

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose engine died is replaced."""
        check = getattr(self._engine, "check_health", None)
        if check is not None:
            await check()

    async def _heartbeat(self) -> None:
        while True:
            self._pacer.reporting()
            try:
                preempt = await asyncio.wait_for(
                    self._scheduler.report.remote(self._replica_id, self._engine.capacity(),
                                                  self._engine.prefix_cache()),
                    timeout=5.0,
                )
                for rid in preempt or ():
                    if await self._engine.preempt(rid):
                        logger.info("preempted %s for better-ranked work", rid)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("capacity report failed (%s); retrying", type(exc).__name__)
            except Exception:
                logger.exception("capacity report failed; retrying")
            await self._pacer.wait()

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._engine.stop()
