"""Finding (or creating) the application's named scheduler and drift actors, and calling them safely.

Both actors are named, detached Ray actors with ``max_restarts=-1``: Ray restarts a dead one within
about a second, and a handle stays valid across the restart (calls made while it restarts wait for
it). Whichever component starts first creates them (``get_if_exists``), so the application builder has
no side effects. Their names carry the application name and a fingerprint of the configuration, so a
redeploy with a new configuration gets fresh actors.

`call` wraps one remote call with a deadline: a call that fails because the actor died is retried
until the deadline, then raises `ActorUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from deployments.drift_actor import DriftActor
from deployments.scheduler_actor import SchedulerActor

logger = logging.getLogger(__name__)

NAMESPACE = "driftsched"
T = TypeVar("T")


class ActorUnavailable(Exception):
    """A scheduler or drift actor did not answer before the caller's deadline."""


def _named(cls: type, name: str, *args: Any) -> Any:
    remote_cls = ray.remote(cls)
    return remote_cls.options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, max_concurrency=100_000, num_cpus=0,
    ).remote(*args)


def scheduler_actor(name: str, core_config: dict[str, Any], replica_timeout_s: float,
                    client_grace_s: float | None = None) -> Any:
    """The application's scheduler actor (created on first use)."""
    return _named(SchedulerActor, name, core_config, replica_timeout_s, client_grace_s)


def drift_actor(name: str, drift_config: dict[str, Any], snapshot_path: str | None) -> Any:
    """The application's drift statistics actor (created on first use)."""
    return _named(DriftActor, name, drift_config, snapshot_path)


async def call(
    make_ref: Callable[[], Any], deadline: float, *, retry_s: float = 0.2, what: str = "actor"
) -> Any:
    """Await ``make_ref()`` (an ObjectRef), retrying actor failures until ``deadline`` (monotonic)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ActorUnavailable(f"{what} did not answer in time")
        ref = make_ref()
        try:
            return await asyncio.wait_for(ref, remaining)
        except (RayActorError, GetTimeoutError) as exc:
            logger.warning("%s call failed (%s); retrying until the deadline", what, type(exc).__name__)
        except TimeoutError:
            ray.cancel(ref)
            raise ActorUnavailable(f"{what} did not answer in time") from None
        await asyncio.sleep(min(retry_s, max(0.0, deadline - time.monotonic())))
