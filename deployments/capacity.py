"""The scheduler actor's ledger of replica capacity: who reported what, and which grants are outstanding.

Replicas *pull*: each one reports its capacity (slots, KV room, the request ids it is running) every
heartbeat. The ledger counts a slot as used from the moment the scheduler grants it until the ingress
releases it, and also counts anything the replica says it is running that the ledger did not grant
(requests granted by a scheduler instance that has since restarted). So a grant goes only to a replica
whose reported slots exceed what is granted or running there.

An engine under pressure (vLLM with requests waiting inside it, or its KV cache nearly full) reports
fewer free slots than `max_slots - len(active)`; the difference is *withheld* until its next report, so
the backlog waits here, in policy order, rather than in the engine's own queue.

A replica silent for `replica_timeout_s` is dropped with its grants. A grant that its replica has never
reported running for `grant_grace_s` is presumed lost (its ingress died) and released.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from deployments.engine import Capacity


@dataclass(slots=True)
class ReplicaState:
    """One replica as last reported, with the grants outstanding on it."""

    replica_id: str
    capacity: Capacity
    reported_at: float
    granted: dict[str, float] = field(default_factory=dict)  # request id -> grant time
    withheld: int = 0  # slots the engine declined at its last report (see module docstring)

    def in_use(self) -> int:
        return len(self.granted.keys() | set(self.capacity.active))

    def free(self) -> int:
        return max(0, self.capacity.max_slots - self.in_use() - self.withheld)


def _withheld(capacity: Capacity) -> int:
    return max(0, capacity.max_slots - len(capacity.active) - capacity.free_slots)


class CapacityLedger:
    """Free slots per replica, from heartbeats and grants (see module docstring)."""

    def __init__(self, replica_timeout_s: float = 5.0, grant_grace_s: float = 30.0) -> None:
        self.replica_timeout_s = replica_timeout_s
        self.grant_grace_s = grant_grace_s
        self._replicas: dict[str, ReplicaState] = {}

    def report(self, replica_id: str, capacity: Capacity, now: float) -> list[str]:
        """A replica's heartbeat: register it or refresh what it runs; returns grants presumed lost."""
        state = self._replicas.get(replica_id)
        if state is None:
            self._replicas[replica_id] = ReplicaState(replica_id, capacity, now, withheld=_withheld(capacity))
            return []
        state.capacity, state.reported_at, state.withheld = capacity, now, _withheld(capacity)
        active = set(capacity.active)
        lost = [rid for rid, granted_at in state.granted.items()
                if rid not in active and now - granted_at > self.grant_grace_s]
        for rid in lost:
            del state.granted[rid]
        return lost

    def take(self, request_id: str, now: float) -> str | None:
        """Grant one slot on the replica with the most free slots; None when all are full."""
        best = max(self._replicas.values(), key=lambda r: (r.free(), r.replica_id), default=None)
        if best is None or best.free() <= 0:
            return None
        best.granted[request_id] = now
        return best.replica_id

    def release(self, replica_id: str, request_id: str) -> bool:
        """Return a granted slot; False if the ledger did not hold it."""
        state = self._replicas.get(replica_id)
        if state is None:
            return False
        if request_id in state.capacity.active:  # do not wait for the next heartbeat to see it gone
            active = tuple(a for a in state.capacity.active if a != request_id)
            state.capacity = dataclasses.replace(state.capacity, active=active)
        return state.granted.pop(request_id, None) is not None

    def expire(self, now: float) -> list[tuple[str, list[str]]]:
        """Drop silent replicas; returns (replica id, its outstanding grants) for each one dropped."""
        dead = [r for r in self._replicas.values() if now - r.reported_at > self.replica_timeout_s]
        for state in dead:
            del self._replicas[state.replica_id]
        return [(state.replica_id, list(state.granted)) for state in dead]

    def has_free(self) -> bool:
        return any(r.free() > 0 for r in self._replicas.values())

    def replicas(self) -> Iterable[ReplicaState]:
        return self._replicas.values()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per replica: slots, in use, free, and the engine's own state (for metrics)."""
        return {
            r.replica_id: {"slots": r.capacity.max_slots, "in_use": r.in_use(), "free": r.free(),
                           "engine_running": r.capacity.engine_running,
                           "engine_waiting": r.capacity.engine_waiting,
                           "kv_usage": r.capacity.kv_usage, "engine_queue_s": r.capacity.engine_queue_s}
            for r in self._replicas.values()
        }
