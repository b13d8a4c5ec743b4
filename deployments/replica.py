"""The LLM replica deployment: one engine per GPU, pulling work by reporting its free capacity.

A replica reports `Engine.capacity()` to the scheduler actor every heartbeat (registering itself, and
re-registering after the actor restarts) and preempts the requests the scheduler names in its answer
(their streams end with a "preempted" delta; the gateway resumes them elsewhere), serves granted
requests as a token stream, and feeds each
finished request's observed length into a local `DriftTracker` batch that it merges into the shared
drift actor about once a second (one actor call per batch, not per request). Batches are numbered
per replica process and sent one at a time: a batch whose push failed is re-sent under the same
number until the actor acknowledges it (applied now or before), so none is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import RayActorError

from deployments.actors import drift_actor, scheduler_actor
from deployments.engine import GenerationRequest, TokenDelta
from deployments.replica_config import ReplicaConfig, build_engine
from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

logger = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ActorNames:
    """Where a component finds the application's actors, and what it needs to create them.

    Names are ``<app>.<role>.<fingerprint>``; the app name is only known inside a replica.
    """

    fingerprint: str
    core_config: dict[str, Any]
    drift_snapshot_path: str | None
    replica_timeout_s: float

    def name(self, role: str) -> str:
        return f"{serve.get_replica_context().app_name}.{role}.{self.fingerprint}"

    def scheduler(self) -> Any:
        return scheduler_actor(self.name("scheduler"), self.core_config, self.replica_timeout_s)

    def drift(self) -> Any:
        drift_cfg = self.core_config.get("estimator", {}).get("drift", {})
        return drift_actor(self.name("drift"), drift_cfg, self.drift_snapshot_path)


@dataclass(slots=True, frozen=True)
class EstimateKey:
    """The ticket fields a replica needs to record a drift observation."""

    tenant: str
    category: str
    bucket: int
    raw: float
    corrected: float


@serve.deployment(name="LLMReplica")
class LLMReplica:
    """Serve deployment wrapping one `Engine` (see module docstring)."""

    async def __init__(self, config: dict[str, Any], actors: ActorNames) -> None:
        self._config = ReplicaConfig.model_validate(config)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._engine = build_engine(self._config)
        await self._engine.start()
        drift_cfg = actors.core_config.get("estimator", {}).get("drift", {})
        self._drift_config = DriftConfig.model_validate(drift_cfg)
        self._scheduler = actors.scheduler()
        self._drift = actors.drift()
        self._batch = DriftTracker(self._drift_config)
        self._batch_size = 0
        # Names this process's batches for the drift actor's de-duplication (a restarted replica
        # starts numbering again, under a new sender).
        self._drift_sender = f"{self._replica_id}:{uuid.uuid4().hex[:8]}"
        self._drift_seq = 0
        self._unacked: tuple[int, dict[str, Any]] | None = None
        self.preempted = 0
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._push_drift())]
        logger.info("replica %s up: %s, %d slots", self._replica_id, self._config.model,
                    self._config.max_num_seqs)

    async def generate(
        self, request: GenerationRequest, estimate: EstimateKey, target_replica: str | None = None
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream one granted request's tokens; records the observed length when it finishes."""
        # aclosing: when the caller goes away while this generator waits at `yield`, the engine's
        # stream is closed (and the request aborted) now, not whenever the garbage collector gets to it.
        async with contextlib.aclosing(self._engine.generate(request)) as stream:
            async for delta in stream:
                if delta.usage is not None:
                    self._batch.observe(
                        estimate.tenant, estimate.category, estimate.bucket, estimate.raw,
                        estimate.corrected, float(delta.usage.completion_tokens), time.time(),
                    )
                    self._batch_size += 1
                yield delta

    async def capacity(self) -> dict[str, Any]:
        cap = self._engine.capacity()
        return {"replica_id": self._replica_id, "max_slots": cap.max_slots,
                "free_slots": cap.free_slots, "active": len(cap.active),
                "engine_running": cap.engine_running, "engine_waiting": cap.engine_waiting,
                "kv_usage": cap.kv_usage, "aborted": getattr(self._engine, "aborted", 0)}

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
                        self.preempted += 1
                        logger.info("preempted %s for better-ranked work", rid)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("capacity report failed (%s); retrying", type(exc).__name__)
            except Exception:
                logger.exception("capacity report failed; retrying")
            await asyncio.sleep(self._config.heartbeat_s)

    async def _push_drift(self) -> None:
        while True:
            await asyncio.sleep(self._config.drift_push_s)
            try:
                await self._push_batch()
            except Exception as exc:  # the batch stays unacknowledged and is re-sent as it is
                logger.warning("drift push failed (%s); will re-send batch %d", type(exc).__name__,
                               self._drift_seq)

    async def _push_batch(self) -> None:
        """Send the unacknowledged batch, or seal the current one under the next number and send it."""
        if self._unacked is None:
            if self._batch_size == 0:
                return
            self._drift_seq += 1
            self._unacked = (self._drift_seq, self._batch.snapshot())
            self._batch, self._batch_size = DriftTracker(self._drift_config), 0
        seq, snapshot = self._unacked
        applied = await asyncio.wait_for(
            self._drift.merge.remote(self._drift_sender, seq, snapshot), timeout=10.0
        )
        if not applied:
            logger.info("drift batch %d had already been applied; not counted twice", seq)
        self._unacked = None

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._engine.stop()
