"""The typed handles of deployments/handles.py against the classes they stand for.

Each handle Protocol declares its methods as `RemoteMethod[[parameter types], answer type]`. The
actor's method of the same name must take those parameters, in that order (any further ones with
defaults), and answer that type: then a call that mypy accepts through the handle is one the actor
accepts, and a handle cannot drift from its actor unnoticed.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import get_args, get_origin, get_type_hints

import pytest

from deployments.drift_actor import DriftActor
from deployments.engine import GenerationRequest, TokenDelta
from deployments.handles import (
    DriftHandle,
    GatewayScheduler,
    RemoteMethod,
    ReplicaStream,
    SchedulerCalls,
    SchedulerHandle,
)
from deployments.replica import LLMReplica
from deployments.scheduler_actor import SchedulerActor


def remote_methods(protocol: type) -> dict[str, tuple[list[object], object]]:
    """Name -> (parameter types, answer type) of every `RemoteMethod` a handle Protocol declares."""
    found = {}
    for name in dir(protocol):
        member = inspect.getattr_static(protocol, name)
        if not isinstance(member, property) or member.fget is None:
            continue
        hint = get_type_hints(member.fget)["return"]
        if get_origin(hint) is RemoteMethod:
            params, answer = get_args(hint)
            found[name] = (list(params), answer)
    return found


def mismatches(protocol: type, cls: type) -> list[str]:
    """How `cls`'s methods differ from what `protocol` declares of them (empty: they agree)."""
    problems = []
    for name, (params, answer) in sorted(remote_methods(protocol).items()):
        method = getattr(cls, name, None)
        if method is None:
            problems.append(f"{cls.__name__} has no method {name}")
            continue
        hints = get_type_hints(method)
        taken = list(inspect.signature(method).parameters.values())[1:]  # without self
        types = [hints[p.name] for p in taken[:len(params)]]
        if types != params:
            problems.append(f"{name} takes {types}, the handle sends {params}")
        if any(p.default is inspect.Parameter.empty for p in taken[len(params):]):
            problems.append(f"{name} requires parameters the handle does not send")
        if hints["return"] != answer:
            problems.append(f"{name} answers {hints['return']}, the handle expects {answer}")
    return problems


@pytest.mark.parametrize(("protocol", "cls"), [(SchedulerHandle, SchedulerActor), (DriftHandle, DriftActor)])
def test_each_handle_protocol_matches_its_actor(protocol, cls):
    assert remote_methods(protocol)
    assert mismatches(protocol, cls) == []


def test_the_narrower_scheduler_views_are_parts_of_the_whole_handle():
    whole = remote_methods(SchedulerHandle)
    for part in (SchedulerCalls, GatewayScheduler):
        methods = remote_methods(part)
        assert methods and all(whole[name] == sig for name, sig in methods.items())
    assert set(remote_methods(SchedulerCalls)) == {"submit", "poll", "release_many", "cancel"}


def test_a_handle_that_drifted_from_its_actor_is_named():
    class Drifted:
        async def submit(self, client_id: str, items: list[int]) -> None: ...

        async def poll(self, client_id: str, wait_s: float, extra: int) -> object: ...

    problems = mismatches(SchedulerCalls, Drifted)
    assert any(p.startswith("submit takes") for p in problems)
    assert any(p.startswith("submit answers") for p in problems)
    assert "poll requires parameters the handle does not send" in problems
    assert "Drifted has no method release_many" in problems


def test_the_replica_handle_matches_the_replicas_generate():
    generate = LLMReplica.func_or_class.generate
    hints = get_type_hints(generate)
    assert list(inspect.signature(generate).parameters)[1:] == ["request", "target_replica"]
    assert hints["request"] is GenerationRequest
    assert str in get_args(hints["target_replica"])
    assert get_origin(hints["return"]) is AsyncGenerator and get_args(hints["return"])[0] is TokenDelta
    assert get_args(get_type_hints(ReplicaStream.__anext__)["return"]) == (TokenDelta,)
