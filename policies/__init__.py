"""Scheduling policies, chosen by name from `POLICIES` or as "module:Class" for out-of-tree ones."""

from __future__ import annotations

import importlib
from typing import Any

from driftsched.core.errors import UnknownPolicyError
from policies.aging import AgingPolicy
from policies.base import HeapPolicy, Policy
from policies.bounded import BoundedSjfPolicy
from policies.fifo import FifoPolicy
from policies.priority import PriorityPolicy
from policies.sjf import SjfPolicy
from policies.weighted import WeightedFairPolicy

POLICIES: dict[str, type[Any]] = {
    "fifo": FifoPolicy,
    "priority": PriorityPolicy,
    "weighted": WeightedFairPolicy,
    "sjf": SjfPolicy,
    "aging": AgingPolicy,
    "bounded": BoundedSjfPolicy,
}


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by registry name or "package.module:ClassName"."""
    cls = POLICIES.get(name)
    if cls is None and ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise UnknownPolicyError(f"cannot import policy {name!r}: {exc}") from None
    if cls is None:
        raise UnknownPolicyError(
            f"unknown policy {name!r}; choose one of {sorted(POLICIES)} or give 'module:Class'"
        )
    try:
        policy = cls(**options)
    except TypeError as exc:
        raise UnknownPolicyError(f"bad options {options!r} for policy {name!r}: {exc}") from None
    if not isinstance(policy, Policy):
        raise UnknownPolicyError(f"{name!r} does not implement the Policy interface")
    policy_typed: Policy = policy
    return policy_typed


__all__ = [
    "POLICIES",
    "AgingPolicy",
    "BoundedSjfPolicy",
    "FifoPolicy",
    "HeapPolicy",
    "Policy",
    "PriorityPolicy",
    "SjfPolicy",
    "WeightedFairPolicy",
    "make_policy",
]
