"""The LLM replica deployment: one engine per GPU, pulling work by reporting its free capacity.

A replica reports `Engine.capacity()` and its prefix-cache counters to the scheduler actor every
heartbeat (registering itself, and re-registering after the actor restarts) and serves granted requests
as token streams. It keeps one long ``orders`` poll open to the scheduler: an order to stop a run (a
preemption, or a revoked grant that has not started) comes back the moment the scheduler decides it,
and the run's stream ends with a "preempted" delta (the gateway resumes it, elsewhere or later). An order
names the grant it stops; one that arrives before its run does (the grant was revoked while the
gateway was still sending it) is kept for `STOP_KEEP_S`, and that run ends "preempted" as it starts.
It keeps no drift statistics: the observed length reaches the scheduler actor with the ingress's
release, and the scheduler feeds the drift actor from there.

A run's start, first token and end also bring the next report forward (`ReportPacer`): the placement
counts a grant's prompt as prefill in flight on its replica until a report shows it generating (a
prefill that ended long before the heartbeat would otherwise keep the replica looking busy, and the
requests whose prefix it holds going elsewhere), and knows which grants ahead have started (only one
that has not can be revoked at no cost) from the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

from ray import serve
from ray.exceptions import RayActorError

from deployments.actors import ActorNames
from deployments.engine import FinishReason, GenerationRequest, TokenDelta
from deployments.replica_config import ReplicaConfig, build_engine

logger = logging.getLogger(__name__)

ORDERS_POLL_S = 5.0
"""How long one ``orders`` poll waits for an order before it is renewed."""
STOP_KEEP_S = 60.0
"""How long an order to stop a run that has not arrived here is kept (longer than any grant's trip)."""


class ReportPacer:
    """When a replica reports next: `heartbeat_s` after its last report, or sooner, `min_gap_s` after
    it, once a request it runs has produced its first token (module docstring). The gap bounds the
    reports a busy replica sends to `1 / min_gap_s` a second (default: four per heartbeat)."""

    def __init__(self, heartbeat_s: float, min_gap_s: float | None = None) -> None:
        self.heartbeat_s = heartbeat_s
        self.min_gap_s = heartbeat_s / 4 if min_gap_s is None else min(min_gap_s, heartbeat_s)
        self._started = asyncio.Event()

    def first_token(self) -> None:
        """A request produced its first token (or a run started or ended here): report soon."""
        self._started.set()

    def reporting(self) -> None:
        """A report is being sent now: first tokens from here on bring the next one forward."""
        self._started.clear()

    async def wait(self) -> None:
        """Until the next report is due."""
        await asyncio.sleep(self.min_gap_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), self.heartbeat_s - self.min_gap_s)


class RunStops:
    """The runs in progress on a replica, by the grant each holds, and orders to stop runs that have not
    arrived yet (module docstring). Times are `time.monotonic()` seconds."""

    def __init__(self, keep_s: float = STOP_KEEP_S) -> None:
        self.keep_s = keep_s
        self._runs: dict[str, int] = {}  # request id -> grant serial of its run here
        self._early: dict[tuple[str, int], float] = {}  # (request, grant) ordered stopped -> until

    def start(self, request_id: str, grant: int, now: float) -> bool:
        """A run arrives; False if it was ordered stopped already (it must end "preempted" at once)."""
        until = self._early.pop((request_id, grant), None)
        if until is not None and until > now:
            return False
        self._runs[request_id] = grant
        return True

    def end(self, request_id: str, grant: int) -> None:
        if self._runs.get(request_id) == grant:
            del self._runs[request_id]

    def order(self, request_id: str, grant: int, now: float) -> bool:
        """An order to stop `request_id`'s run holding `grant` (0: whichever): True if that run is here
        (stop it in the engine now); else it is kept, to stop the run when it comes."""
        if self._early:
            self._early = {key: until for key, until in self._early.items() if until > now}
        running = self._runs.get(request_id)
        if running is not None and grant in (0, running):
            return True
        if grant:
            self._early[(request_id, grant)] = now + self.keep_s
        return False

    def __len__(self) -> int:
        return len(self._runs) + len(self._early)


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
        self._stops = RunStops()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._take_orders())]
        logger.info("replica %s up: %s, %d slots", self._replica_id, self._config.model,
                    self._config.max_num_seqs)

    async def generate(
        self, request: GenerationRequest, target_replica: str | None = None
    ) -> AsyncGenerator[TokenDelta, None]:
        """Stream one granted request's tokens (`target_replica` is read by the router only)."""
        rid, grant = request.request_id, request.grant
        if not self._stops.start(rid, grant, time.monotonic()):  # revoked on its way here
            yield TokenDelta("", 0, FinishReason.PREEMPTED)
            return
        # No await between registering the run and the engine's stream taking the request: an order
        # to stop it finds it in the engine.
        self._pacer.first_token()
        # aclosing: when the caller goes away while this generator waits at `yield`, the engine's
        # stream is closed (and the request aborted) now, not whenever the garbage collector gets to it.
        started = False
        try:
            async with contextlib.aclosing(self._engine.generate(request)) as stream:
                async for delta in stream:
                    if not started and (delta.num_tokens or delta.text):
                        started = True
                        self._pacer.first_token()
                    yield delta
        finally:
            self._stops.end(rid, grant)
            self._pacer.first_token()

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose engine died is replaced."""
        check = getattr(self._engine, "check_health", None)
        if check is not None:
            await check()

    async def _heartbeat(self) -> None:
        while True:
            self._pacer.reporting()
            try:
                orders = await asyncio.wait_for(
                    self._scheduler.report.remote(self._replica_id, self._engine.capacity(),
                                                  self._engine.prefix_cache()),
                    timeout=5.0,
                )
                await self._obey(orders)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("capacity report failed (%s); retrying", type(exc).__name__)
            except Exception:
                logger.exception("capacity report failed; retrying")
            await self._pacer.wait()

    async def _take_orders(self) -> None:
        """Keep one ``orders`` poll open and stop what each answer names (module docstring)."""
        while True:
            try:
                orders = await asyncio.wait_for(
                    self._scheduler.orders.remote(self._replica_id, ORDERS_POLL_S), ORDERS_POLL_S + 5.0)
                await self._obey(orders)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("orders poll failed (%s); polling again", type(exc).__name__)
                await asyncio.sleep(0.2)
            except Exception:
                logger.exception("orders poll failed; polling again")
                await asyncio.sleep(0.2)

    async def _obey(self, orders: dict[str, int] | None) -> None:
        """Stop each run ordered stopped that is here; the others as they come (`RunStops`)."""
        now = time.monotonic()
        for rid, grant in (orders or {}).items():
            if self._stops.order(rid, grant, now) and await self._engine.preempt(rid):
                logger.info("stopped %s (grant %d) for better-ranked work", rid, grant)

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._engine.stop()
