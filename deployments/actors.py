"""Finding (or creating) the application's named scheduler and drift actors, and calling them safely.

Both actors are named, detached Ray actors with ``max_restarts=-1``: Ray restarts a dead one, and a
handle stays valid across the restart (calls made while it restarts wait for it). Whichever component
starts first creates them (``get_if_exists``), so the application builder has no side effects. Their
names (`actor_name`) carry the application name, the role and a fingerprint of the configuration, so
a redeploy with a new configuration gets fresh actors.

The scheduler actor sends drift observations to the drift actor through a `DriftActorLink`, which it
is given at creation: the drift actor's name and what creating it needs.

`call` wraps one remote call with a deadline: a call that fails because the actor died is retried
until the deadline, then raises `ActorUnavailable`.

Ray's handles are untyped; this module is where they become the typed handles of
`deployments.handles` (`SchedulerHandle`, `DriftHandle`), which every caller uses.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError

from deployments.drift_actor import DriftActor
from deployments.handles import DriftHandle, SchedulerHandle, cancel_call
from deployments.scheduler_actor import SchedulerActor

logger = logging.getLogger(__name__)

NAMESPACE = "driftsched"
T = TypeVar("T")


class ActorUnavailable(Exception):
    """A scheduler or drift actor did not answer before the caller's deadline."""


class ActorRole(enum.StrEnum):
    """The application's named actors."""

    SCHEDULER = "scheduler"
    DRIFT = "drift"


def actor_name(app: str, role: ActorRole, fingerprint: str) -> str:
    """The Ray name of `app`'s `role` actor under the configuration `fingerprint` (in `NAMESPACE`)."""
    return f"{app}.{role}.{fingerprint}"


@dataclass(slots=True)
class DriftActorLink:
    """How the scheduler actor reaches the drift actor: its name, and what creating it needs.

    A `deployments.drift_feed.DriftSink`. The handle is looked up (or the actor created) at the first
    ``merge``, inside the scheduler actor's process."""

    name: str
    drift_config: dict[str, object]
    snapshot_path: str | None
    _handle: DriftHandle | None = field(default=None, repr=False, compare=False)

    async def merge(self, sender: str, seq: int, snapshot: dict[str, object]) -> bool:
        if self._handle is None:
            self._handle = drift_actor(self.name, self.drift_config, self.snapshot_path)
        return await self._handle.merge.remote(sender, seq, snapshot)


@dataclass(slots=True, frozen=True)
class ActorNames:
    """Where a component finds the application's actors, and what it needs to create them.

    The app name is only known inside a Serve replica, so the names are made there."""

    fingerprint: str
    core_config: dict[str, object]
    drift_snapshot_path: str | None
    replica_timeout_s: float
    shared_kv: bool = True
    """Whether the replicas' engine stores a prefix shared by running requests once (`SchedulerActor`)."""
    prefill_tokens_per_s: float | None = None
    """A replica's prefill rate until the scheduler measures it (None: the configured one)."""

    def name(self, role: ActorRole) -> str:
        return actor_name(serve.get_replica_context().app_name, role, self.fingerprint)

    def scheduler(self) -> SchedulerHandle:
        drift = DriftActorLink(self.name(ActorRole.DRIFT), self._drift_config(), self.drift_snapshot_path)
        return scheduler_actor(self.name(ActorRole.SCHEDULER), self.core_config, self.replica_timeout_s,
                               drift=drift, shared_kv=self.shared_kv,
                               prefill_tokens_per_s=self.prefill_tokens_per_s)

    def drift(self) -> DriftHandle:
        return drift_actor(self.name(ActorRole.DRIFT), self._drift_config(), self.drift_snapshot_path)

    def _drift_config(self) -> dict[str, object]:
        """`core_config`'s ``estimator.drift`` section ({} where absent: the defaults)."""
        estimator = self.core_config.get("estimator", {})
        drift = estimator.get("drift", {}) if isinstance(estimator, dict) else {}
        return drift if isinstance(drift, dict) else {}


def _named(cls: type, name: str, *args: object, **kwargs: object) -> object:
    """The named, detached actor `name` of `cls`, created with `args` and `kwargs` unless it exists: an
    untyped Ray handle, which the callers below type."""
    return ray.remote(cls).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, max_concurrency=100_000, num_cpus=0,
    ).remote(*args, **kwargs)


def scheduler_actor(name: str, core_config: dict[str, object], replica_timeout_s: float,
                    client_grace_s: float | None = None,
                    drift: DriftActorLink | None = None, *, shared_kv: bool = True,
                    prefill_tokens_per_s: float | None = None) -> SchedulerHandle:
    """The application's scheduler actor (created on first use); `drift`: where it sends observations;
    `shared_kv`, `prefill_tokens_per_s`: what its placement knows of the replicas (`SchedulerActor`)."""
    handle = _named(SchedulerActor, name, core_config, replica_timeout_s, client_grace_s, drift,
                    shared_kv=shared_kv, prefill_tokens_per_s=prefill_tokens_per_s)
    return cast(SchedulerHandle, handle)


def lookup_scheduler(name: str) -> SchedulerHandle:
    """The scheduler actor named `name` if it exists (never creates it); ValueError if it does not."""
    return cast(SchedulerHandle, ray.get_actor(name, namespace=NAMESPACE))


def drift_actor(name: str, drift_config: dict[str, object], snapshot_path: str | None) -> DriftHandle:
    """The application's drift statistics actor (created on first use)."""
    return cast(DriftHandle, _named(DriftActor, name, drift_config, snapshot_path))


async def call(
    make_ref: Callable[[], Awaitable[T]], deadline: float, *, retry_s: float = 0.2, what: str = "actor"
) -> T:
    """Await ``make_ref()`` (an actor call's ObjectRef), retrying actor failures until ``deadline``
    (monotonic)."""
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
            cancel_call(ref)
            raise ActorUnavailable(f"{what} did not answer in time") from None
        await asyncio.sleep(min(retry_s, max(0.0, deadline - time.monotonic())))
