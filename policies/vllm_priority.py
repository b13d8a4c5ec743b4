"""vLLM's ``--scheduling-policy priority``, as a peer to compare with: strict priority, preemptive.

Source: vllm-project/vllm ``vllm/v1/core/sched/scheduler.py`` (``Scheduler.schedule``) and
``vllm/v1/core/sched/request_queue.py`` (the priority queue). Waiting requests are served by
``(priority, arrival_time)``, a lower value first; when the KV cache has no room, vLLM preempts the running
request with the largest ``(priority, arrival_time)``, so a more important request gets the room of a less
important one at once, and the victim recomputes later. vLLM's priority is the request's ``priority``
field; here it is the tier (0 the most important).

What emulating it needs besides the order is its preemption: at once, with no near-end exception, once
a request has run one engine step (the class's `preemption`, which `driftsched.core.policy.preemption_for`
hands to the dispatcher in place of the configured `PreemptionConfig`). vLLM puts no cap on how often
one request is preempted; the cap here only guards against a livelock the real engine would show as
endless recomputation. The dispatcher picks the victim as vLLM does: the worst-ranked running request,
the largest ``(tier, arrival)``. Two differences remain: the dispatcher preempts for a waiting head that
fits no replica, where vLLM preempts when a running request cannot grow (both give the least important
request's room to a more important one), and it also does so when the replica's slots, not its KV, are
the limit, which vLLM cannot (vllm-project/vllm issue 40004).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from driftsched.core.request import Ticket
from policies.base import HeapPolicy


class VllmPriorityPolicy(HeapPolicy):
    """Lowest tier first, then arrival; preempts at once (module docstring)."""

    name: ClassVar[str] = "vllm-priority"
    admission: ClassVar[Mapping[str, Any]] = {"enabled": False}
    """It models a system without DriftSched's SLO-aware admission: everything that arrives queues."""
    preemption: ClassVar[Mapping[str, Any]] = {
        "enabled": True,
        "wait_s": 0.0,
        "min_run_s": 0.01,  # one engine step: vLLM never evicts what it admitted in the same step
        "near_end_tokens": 0,
        "max_per_request": 64,
    }

    def key(self, ticket: Ticket) -> tuple[float, ...]:
        return (ticket.tier, ticket.arrival_time)
