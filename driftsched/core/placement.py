"""Replica capacity as the scheduler sees it, and the one rule that places a ticket on a replica.

Used alike by the scheduler actor (reports arrive in heartbeats) and by the simulator (reports are read
off the simulated engines after every step), so both place work by the same rule.

**What a replica reports** (`Capacity`): sequence slots, free KV tokens and the KV capacity, and the
request ids it runs. A report either lists `active` ids (a heartbeat: grants it does not list yet are
*pending*, their prompt not yet in its KV figure) or sets `active=None` (an exact, in-process report:
every grant is already counted in its figures).

**The fit rule.** A ticket fits a replica when the replica has a free slot and

    prompt + min(H, remaining estimate) + reserved growth + watermark  <=  free KV

where free KV is the replica's reported figure less the prompts of pending grants (plus, for a
preemption check, what the victim's release would free), the watermark is `kv_watermark` of its
capacity (vLLM keeps one too), H is `kv_growth_tokens`, and the replica's reserved growth is
Σ min(H, max(0, expected − generated)) over its grants: `expected` is the grant's remaining output
estimate when it was granted, `generated` what its replica last reported it has produced since
(`Capacity.progress`; 0 until a report lists it). So each running request holds KV room for its next
H tokens and the newcomer for its first H: without it, a replica admits prompts until its KV is full
and the engine then preempts (recomputes) sequences as they grow. The horizon is bounded on purpose:
reserving the *whole* estimated output would make a better (larger, honest) estimate cost concurrency;
over H tokens a better estimate only reserves what is really coming soon. H = 0 is the prompt-only
rule. The reservation is kept per replica, updated on each report, grant and release (O(running) per
report, O(1) per fit). An idle replica takes any ticket, or a head bigger than the free KV would never
run. Beyond this the estimate decides only the *order* (the policy's business).

**Placement.** Of the replicas the ticket fits, the one with the most free KV (then free slots, then
id) takes it: work spreads to the least loaded replica.

**Slots.** A slot is used from the grant until the release, and anything a replica says it runs that
the ledger did not grant counts too (grants of a scheduler instance that has since restarted). An engine
under pressure (vLLM with requests waiting inside it) reports fewer free slots than
`max_slots - len(active)`; the difference is *withheld* until its next report, so the backlog waits
here, in policy order, rather than in the engine's own queue.

**Cost.** `choose` scans the replicas, O(replicas). With a deep queue the head often fits nowhere
(it waits for KV), and the dispatcher asks again for that same head after every grant and release;
so a ticket that fit nowhere is remembered with the replicas changed since, and asking again for it
checks only those (a replica that did not change still cannot take it). Every method that changes a
replica's figures marks it changed.

**Liveness.** A replica silent for `replica_timeout_s` is dropped with its grants; a grant that its
replica has never reported running for `grant_grace_s` is presumed lost (its caller died) and released.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from driftsched.core.request import Ticket


@dataclass(slots=True, frozen=True)
class Capacity:
    """What a replica can take right now: sequence slots and KV room, plus what it is running."""

    max_slots: int
    free_slots: int
    """Slots the engine will take now; below max_slots - len(active) when the engine is under pressure."""
    free_kv_tokens: int
    active: tuple[str, ...] | None = ()
    """Request ids running there; None for an exact report that already counts every grant."""
    kv_capacity_tokens: int = 0
    """Total KV of the engine in tokens; 0 when unknown (the KV part of the fit rule is then off)."""
    progress: tuple[int, ...] | None = None
    """Output tokens each `active` request (or each of `progress_ids`) has generated in its current run
    (for the growth reservation and the preemption guards)."""
    progress_ids: tuple[str, ...] = ()
    """With an exact report (`active=None`): the request ids `progress` is given for."""
    engine_running: int = 0
    engine_waiting: int = 0
    """Sequences queued inside the engine (vLLM's waiting queue, preempted ones included)."""
    kv_usage: float = 0.0
    engine_queue_s: float = 0.0
    """Recent mean time a request waited inside the engine before it was first scheduled."""


@dataclass(slots=True)
class ReplicaState:
    """One replica as last reported, with the grants outstanding on it."""

    replica_id: str
    capacity: Capacity
    reported_at: float
    granted: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (grant time, prompt)
    pending: dict[str, int] = field(default_factory=dict)  # granted, not yet in a report: id -> prompt
    active: set[str] = field(default_factory=set)  # reported running
    progress: dict[str, int] = field(default_factory=dict)  # reported tokens generated, per running id
    in_use: int = 0
    kv_pending: int = 0
    kv_credit: int = 0  # KV of requests released since the report (freed, not yet reported)
    withheld: int = 0
    last_freed: float = 0.0  # when a request last left this replica (release)
    horizon: int = 0  # H of the growth reservation (`Placement.kv_growth_tokens`)
    expected: dict[str, float] = field(default_factory=dict)  # granted id -> remaining estimate then
    reserved: float = 0.0  # KV held back for the next `horizon` tokens of the grants (module docstring)

    def refresh(self, capacity: Capacity, now: float) -> None:
        self.capacity, self.reported_at, self.kv_credit = capacity, now, 0
        if capacity.active is None:
            self.active, self.pending = set(), {}
            self.in_use, self.withheld = len(self.granted), 0
            ids: tuple[str, ...] = capacity.progress_ids
        else:
            self.active = set(ids := capacity.active)
            self.pending = {rid: g[1] for rid, g in self.granted.items() if rid not in self.active}
            self.in_use = len(self.active) + len(self.pending)
            self.withheld = max(0, capacity.max_slots - len(capacity.active) - capacity.free_slots)
        self.progress = dict(zip(ids, capacity.progress or (), strict=False))
        self.kv_pending = sum(self.pending.values())
        if self.horizon:
            self.reserved = sum(self.growth(rid) for rid in self.expected)

    def growth(self, request_id: str) -> float:
        """KV this grant holds back: its next `horizon` tokens, or fewer near its estimated end."""
        expected = self.expected.get(request_id)
        if expected is None:
            return 0.0
        return min(self.horizon, max(0.0, expected - self.progress.get(request_id, 0)))

    def free_slots(self) -> int:
        return max(0, self.capacity.max_slots - self.in_use - self.withheld)

    def free_kv(self) -> int:
        return self.capacity.free_kv_tokens + self.kv_credit - self.kv_pending


class Placement:
    """Replica capacity from reports and grants, and the fit-and-place rule (module docstring)."""

    def __init__(
        self,
        replica_timeout_s: float = 5.0,
        grant_grace_s: float = 30.0,
        kv_watermark: float = 0.01,
        kv_growth_tokens: int = 0,
    ) -> None:
        if not 0 <= kv_watermark < 1:
            raise ValueError(f"kv_watermark must be in [0, 1), got {kv_watermark}; try 0.01")
        if kv_growth_tokens < 0:
            raise ValueError(f"kv_growth_tokens must be >= 0, got {kv_growth_tokens}; 0 reserves no growth")
        self.kv_growth_tokens = kv_growth_tokens
        self.replica_timeout_s = replica_timeout_s
        self.grant_grace_s = grant_grace_s
        self.kv_watermark = kv_watermark
        self._replicas: dict[str, ReplicaState] = {}
        # the last ticket that fit nowhere, with what of it the rule reads (prompt, remaining estimate)
        self._no_fit: tuple[Ticket, int, float] | None = None
        self._changed: set[str] = set()  # replicas changed since (module docstring, "Cost")

    # -- reports ---------------------------------------------------------------------------------

    def report(self, replica_id: str, capacity: Capacity, now: float) -> list[str]:
        """A replica's report: register it or refresh it; returns grants presumed lost."""
        state = self._replicas.get(replica_id)
        if state is None:
            state = self._replicas[replica_id] = ReplicaState(
                replica_id, capacity, now, last_freed=now, horizon=self.kv_growth_tokens
            )
        self._changed.add(replica_id)
        lost: list[str] = []
        if capacity.active is not None:
            running = set(capacity.active)
            lost = [rid for rid, (granted_at, _) in state.granted.items()
                    if rid not in running and now - granted_at > self.grant_grace_s]
            for rid in lost:
                del state.granted[rid]
                state.expected.pop(rid, None)
        state.refresh(capacity, now)
        return lost

    def expire(self, now: float) -> list[tuple[str, list[str]]]:
        """Drop silent replicas; returns (replica id, its outstanding grants) for each one dropped."""
        dead = [r for r in self._replicas.values() if now - r.reported_at > self.replica_timeout_s]
        return [(r.replica_id, self.drop(r.replica_id)) for r in dead]

    def drop(self, replica_id: str) -> list[str]:
        """Forget a replica (dead or gone); returns its outstanding grants."""
        state = self._replicas.pop(replica_id, None)
        return list(state.granted) if state is not None else []

    # -- the rule --------------------------------------------------------------------------------

    def fits(
        self, state: ReplicaState, ticket: Ticket, slots: int = 0, kv: int = 0, idle: bool = False
    ) -> bool:
        """Whether `ticket` may start on this replica now (slot, then KV for its prompt and growth),
        with `slots` and `kv` tokens more than the replica has (what a release would free)."""
        return self._room(state, ticket.prompt_tokens, ticket.remaining_estimate, slots, kv, idle) is not None

    def _room(self, state: ReplicaState, prompt: int, remaining: float, slots: int = 0, kv: int = 0,
              idle: bool = False) -> tuple[int, int] | None:
        """`fits` for a ticket's `prompt` tokens and `remaining` estimate: the replica's (free KV, free
        slots) if it fits, else None. `choose` runs it for every replica per grant and ranks by what it
        returns, so each figure is computed once."""
        free_slots = state.free_slots()
        if free_slots + slots <= 0:
            return None
        free_kv = state.free_kv()
        kv_total = state.capacity.kv_capacity_tokens
        if idle or state.in_use == 0 or kv_total <= 0:
            return free_kv, free_slots
        need = prompt + self.kv_watermark * kv_total
        if state.horizon:
            need += min(state.horizon, remaining) + state.reserved
        return (free_kv, free_slots) if need <= free_kv + kv else None

    def fits_after_release(self, replica_id: str, ticket: Ticket, request_id: str, tokens: int) -> bool:
        """Whether `ticket` would fit on `replica_id` once `request_id` (holding `tokens` of KV) left."""
        state = self._replicas.get(replica_id)
        if state is None or request_id not in state.granted:
            return False
        kv = tokens + math.ceil(state.growth(request_id))  # its reservation goes with it
        return self.fits(state, ticket, slots=1, kv=kv, idle=state.in_use <= 1)

    def stuck_since(self, replica_id: str) -> float:
        """When a request last left `replica_id` (its capacity last turned over); inf if unknown."""
        state = self._replicas.get(replica_id)
        return state.last_freed if state is not None else float("inf")

    def holds(self, replica_id: str, request_id: str) -> bool:
        """Whether `request_id` holds a grant on `replica_id`."""
        state = self._replicas.get(replica_id)
        return state is not None and request_id in state.granted

    def progress(self, request_id: str) -> int:
        """Tokens a running request has generated in its current run, as its replica last reported."""
        for state in self._replicas.values():
            if request_id in state.progress:
                return state.progress[request_id]
        return 0

    def choose(self, ticket: Ticket) -> str | None:
        """The replica `ticket` goes to now, or None when it fits none (it then waits, in order)."""
        replicas, memo = self._replicas, (ticket, ticket.prompt_tokens, ticket.remaining_estimate)
        remembered = self._no_fit == memo
        candidates: Iterable[ReplicaState] = replicas.values()
        if remembered:
            candidates = [replicas[r] for r in self._changed if r in replicas]
        best: ReplicaState | None = None
        best_key: tuple[int, int, str] | None = None
        room, prompt, remaining = self._room, memo[1], memo[2]
        for state in candidates:
            free = room(state, prompt, remaining)
            if free is not None:
                key = (free[0], free[1], state.replica_id)
                if best_key is None or key > best_key:
                    best, best_key = state, key
        if best is None or remembered:  # another ticket's choice leaves the memory as it was
            self._no_fit = memo if best is None else None
            self._changed.clear()
        return None if best is None else best.replica_id

    def grant(self, replica_id: str, ticket: Ticket, now: float) -> None:
        """Count `ticket` on `replica_id` from now until it is released."""
        state = self._replicas[replica_id]
        self._changed.add(replica_id)
        rid, prompt = ticket.request_id, ticket.prompt_tokens
        state.granted[rid] = (now, prompt)
        state.pending[rid] = prompt
        state.in_use += 1
        state.kv_pending += prompt
        if state.horizon:
            state.progress.pop(rid, None)  # a resumed request starts a new run here
            state.expected[rid] = ticket.remaining_estimate
            state.reserved += state.growth(rid)

    def release(self, replica_id: str, request_id: str, tokens: int = 0, now: float | None = None) -> bool:
        """Free a request's slot (and, until the next report, its `tokens` of KV); False if unknown.

        `now`, when given, records that capacity turned over on the replica at that time."""
        state = self._replicas.get(replica_id)
        if state is None:
            return False
        self._changed.add(replica_id)
        if now is not None and (request_id in state.granted or request_id in state.active):
            state.last_freed = max(state.last_freed, now)
        if request_id in state.expected:
            state.reserved = max(0.0, state.reserved - state.growth(request_id))
            del state.expected[request_id]
        granted = state.granted.pop(request_id, None)
        prompt = state.pending.pop(request_id, None)
        if prompt is not None:
            state.in_use -= 1
            state.kv_pending -= prompt
        elif request_id in state.active:  # do not wait for the next report to see it gone
            state.active.discard(request_id)
            state.in_use -= 1
            state.kv_credit += tokens or (granted[1] if granted else 0)
        elif granted is not None:  # exact reports: the grant was counted in `in_use` only
            state.in_use -= 1
            state.kv_credit += tokens
        return granted is not None

    # -- introspection ---------------------------------------------------------------------------

    def replicas(self) -> Iterable[ReplicaState]:
        return self._replicas.values()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per replica: slots, in use, free, KV and the engine's own state (for metrics)."""
        return {
            r.replica_id: {"slots": r.capacity.max_slots, "in_use": r.in_use, "free": r.free_slots(),
                           "free_kv_tokens": r.free_kv(), "kv_capacity_tokens": r.capacity.kv_capacity_tokens,
                           "engine_running": r.capacity.engine_running,
                           "engine_waiting": r.capacity.engine_waiting,
                           "kv_usage": r.capacity.kv_usage, "engine_queue_s": r.capacity.engine_queue_s}
            for r in self._replicas.values()
        }
