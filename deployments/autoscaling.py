"""Ray Serve's custom autoscaling policy for the LLM replicas, scaling on the scheduler's backlog.

Serve calls the policy (`QueueAwarePolicy.__call__(ctx)`) about every 0.1 s inside its controller's
event loop, so the call must not block. The backlog lives in the scheduler actor; the policy reads it
with one actor call every ``poll_interval_s``, started as a one-shot task from ``__call__`` and
bounded by a timeout (the pattern of Ray's `AsyncInferenceAutoscalingPolicy`), and decides on the
latest answer. The decision itself is the core's `QueueAwareScaler` (the simulator runs the same one);
this class only fetches and hands over. The next read carries the previous decision to the scheduler,
which shows it on /metrics (`driftsched_autoscale_desired_replicas`), and the replicas Serve routes to:
one Serve is stopping (or has not finished starting) gets no new grant, since Serve's router would
not reach it, while what already runs there finishes during Serve's graceful shutdown.

The policy never creates the scheduler actor (the ingress and the replicas do): until it exists, or
when its answers are older than ``_STALE_POLLS`` intervals, the policy holds the current target.
Delays live in the scaler, so the Serve `AutoscalingConfig` built here sets Serve's own delays to 0.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from deployments.actors import ActorRole, actor_name, lookup_scheduler
from deployments.handles import SchedulerHandle
from deployments.scheduler_actor import ShownDecision
from driftsched.core.autoscale import AutoscaleConfig, QueueAwareScaler, ScaleDecision
from driftsched.core.backlog import Backlog

logger = logging.getLogger(__name__)

_STALE_POLLS = 5  # answers older than this many poll intervals are not acted on
_TIMEOUT_FRACTION = 0.8  # of the poll interval: one read at a time, never piling up


class QueueAwarePolicy:
    """Serve's class-based autoscaling policy: backlog from the scheduler actor, decision by the core."""

    def __init__(self, fingerprint: str, config: dict[str, object]) -> None:
        self._fingerprint = fingerprint
        self._config = AutoscaleConfig.model_validate(config)
        self._scaler = QueueAwareScaler(self._config)
        self._handle: SchedulerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_poll = -float("inf")
        self._backlog: Backlog | None = None
        self._received = -float("inf")
        self._decision: ScaleDecision | None = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, object]]:
        now = time.monotonic()
        if self._task is not None and self._task.done():
            self._task = None
        if (self._task is None and ctx.app_name is not None
                and now - self._last_poll >= self._config.poll_interval_s):
            self._last_poll = now
            name = actor_name(ctx.app_name, ActorRole.SCHEDULER, self._fingerprint)
            serving = [replica.unique_id for replica in ctx.running_replicas]
            self._task = asyncio.get_running_loop().create_task(self._poll(name, serving))
        fresh = now - self._received <= _STALE_POLLS * self._config.poll_interval_s
        decision = self._scaler.decide(now, self._backlog if fresh else None, ctx.target_num_replicas)
        if decision.replicas != ctx.target_num_replicas:
            logger.info("autoscaling %s: %d -> %d replicas (%s, demand %.2f)", ctx.deployment_name,
                        ctx.target_num_replicas, decision.replicas, decision.reason, decision.raw)
        self._decision = decision
        return decision.replicas, {"desired": decision.desired, "reason": decision.reason}

    async def _poll(self, name: str, serving: list[str]) -> None:
        """One read of the backlog (and a lookup of the actor first, off the event loop); tells the
        scheduler which replicas Serve routes to, so that one being stopped or started gets no grant."""
        timeout = _TIMEOUT_FRACTION * self._config.poll_interval_s
        try:
            handle = self._handle
            if handle is None:
                loop = asyncio.get_running_loop()
                handle = self._handle = await asyncio.wait_for(
                    loop.run_in_executor(None, lambda: lookup_scheduler(name)), timeout)
            decision = self._decision
            shown: ShownDecision | None = None if decision is None else {
                "replicas": decision.replicas, "desired": decision.desired, "reason": decision.reason}
            self._backlog = await asyncio.wait_for(
                handle.backlog.remote(self._config.rate_window_s, shown, serving), timeout)
            self._received = time.monotonic()
        except ValueError:  # not created yet (no ingress or replica has started)
            logger.debug("scheduler actor %s not found yet", name)
        except Exception as exc:  # a slow or restarting actor: hold, try again next interval
            logger.warning("backlog read from %s failed (%s); holding the replica count",
                           name, type(exc).__name__)
            self._handle = None if not isinstance(exc, TimeoutError) else self._handle


def serve_autoscaling_config(config: AutoscaleConfig, fingerprint: str) -> AutoscalingConfig:
    """LLMReplica's Serve `AutoscalingConfig` with this policy; Serve's own delays are 0 (the scaler
    applies the configured ones) and its bounds are the configured ones."""
    return AutoscalingConfig(
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        initial_replicas=config.initial_replicas,
        upscale_delay_s=0.0,
        downscale_delay_s=0.0,
        policy=AutoscalingPolicy(  # type: ignore[no-untyped-call]  # Ray's __init__(self, **kwargs)
            policy_function=f"{__name__}:{QueueAwarePolicy.__name__}",
            policy_kwargs={"fingerprint": fingerprint, "config": config.model_dump(mode="json")},
        ),
    )
