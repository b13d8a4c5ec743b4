"""Typed views of the Ray actor handles and the Serve deployment handle this application calls.

Ray's handles are untyped: ``handle.method.remote(*args)`` sends a call and returns an `ObjectRef`, an
awaitable of the method's answer. The Protocols here say, per caller, which methods it calls, with
which arguments, and what each answers, so that mypy checks every call site; a test fake is any object
of the same shape (attributes whose ``remote`` returns an awaitable), with no base class to inherit.
An untyped Ray handle becomes one of these in one place only, `deployments.actors`, where the actors
are created or looked up; tests/test_handles.py checks each Protocol against the class it stands for.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import ParamSpec, Protocol, TypeVar

import ray

from deployments.drift_actor import DriftSnapshot
from deployments.engine import GenerationRequest, PrefixCacheCounters, TokenDelta
from deployments.scheduler_actor import (
    Answers,
    Release,
    SchedulerView,
    ShownDecision,
    Submission,
)
from deployments.usage import TenantUsage
from driftsched.core.backlog import Backlog
from driftsched.core.placement import Capacity

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)


class RemoteMethod(Protocol[P, R_co]):
    """One method of an actor handle: ``remote(*args)`` sends the call; await its result for the answer."""

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]: ...


def cancel_call(ref: Awaitable[object]) -> None:
    """Cancel the actor task behind `ref`, a call's result given up on (an in-process fake's awaitable
    has no task behind it)."""
    if isinstance(ref, ray.ObjectRef):
        ray.cancel(ref)


# -- the scheduler actor (deployments/scheduler_actor.py) ------------------------------------------


class SchedulerCalls(Protocol):
    """The batched hot path, as an ingress's `SchedulerClient` calls it."""

    @property
    def submit(self) -> RemoteMethod[[str, list[Submission]], Answers]: ...

    @property
    def poll(self) -> RemoteMethod[[str, float], Answers]: ...

    @property
    def release_many(self) -> RemoteMethod[[list[Release]], None]: ...

    @property
    def cancel(self) -> RemoteMethod[[str], None]: ...


class GatewayScheduler(SchedulerCalls, Protocol):
    """What the gateway calls: the batched path (a resumption of a stopped run is a submission too)."""


class SchedulerHandle(GatewayScheduler, Protocol):
    """The scheduler actor's whole handle: the gateway's calls, the ingress's reads (health, usage,
    metrics), the replicas' reports and order poll, the autoscaling policy's backlog read and the soak
    check."""

    @property
    def ping(self) -> RemoteMethod[[], str]: ...

    @property
    def usage(self) -> RemoteMethod[[str], TenantUsage | None]: ...

    @property
    def view(self) -> RemoteMethod[[], SchedulerView]: ...

    @property
    def report(self) -> RemoteMethod[[str, Capacity, PrefixCacheCounters | None], dict[str, int]]: ...

    @property
    def orders(self) -> RemoteMethod[[str, float], dict[str, int]]: ...

    @property
    def backlog(self) -> RemoteMethod[[float, ShownDecision | None, list[str] | None], Backlog]: ...

    @property
    def table_sizes(self) -> RemoteMethod[[], dict[str, int]]: ...


# -- the drift statistics actor (deployments/drift_actor.py) ---------------------------------------


class DriftHandle(Protocol):
    """The drift actor's handle: the scheduler's batches (``merge``), the ingresses' reads and seeds."""

    @property
    def merge(self) -> RemoteMethod[[str, int, dict[str, object]], bool]: ...

    @property
    def snapshot(self) -> RemoteMethod[[], DriftSnapshot]: ...

    @property
    def seed(self) -> RemoteMethod[[dict[str, object]], bool]: ...


# -- the LLM replicas (deployments/replica.py), through Serve ---------------------------------------


class ReplicaStream(Protocol):
    """One streamed run on a replica (Serve's `DeploymentResponseGenerator`): its deltas, and `cancel`
    to stop it."""

    def __anext__(self) -> Awaitable[TokenDelta]: ...

    def cancel(self) -> None: ...


class GenerateMethod(Protocol):
    """``LLMReplica.generate`` through a streaming handle; the router reads `target_replica`."""

    def remote(self, request: GenerationRequest, *, target_replica: str) -> ReplicaStream: ...


class StreamingReplicas(Protocol):
    @property
    def generate(self) -> GenerateMethod: ...


class ReplicaHandle(Protocol):
    """The LLM replicas' `DeploymentHandle` as the gateway calls it:
    ``options(stream=True).generate.remote(request, target_replica=replica_id)``."""

    def options(self, *, stream: bool) -> StreamingReplicas: ...
