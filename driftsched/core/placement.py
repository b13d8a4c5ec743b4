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

**Placement.** Of the replicas the ticket fits, a rule picks one (`PlacementConfig.rule`,
`driftsched.core.placement_rules`): ours (`driftsched`: to the replica holding its prefix while its
first token can be expected there within its objective, within a bound on each replica's share of the
work) or a peer's. A bare `Placement()` places by the most free KV (then free
slots, then id), the rule from before the prefix cache; `Placement.from_config` takes the configured
one. The rule only says *where*: the ticket is the policy's head, so no rule can overtake its order.

**The prefix cache as the scheduler sees it.** Each replica has a `PrefixIndex` (capacity: its KV in
blocks, entries aged out after `index_ttl_s`), and every grant inserts the ticket's prefix hashes there
(head last, so the head of a prompt is the last part of it an eviction takes, as vLLM frees a request's
blocks tail first). A ticket's *cached* tokens on a replica are its leading blocks found there, capped
at prompt - 1 (the engine computes at least one token). A ticket with no hashes but a session id is
taken to find its session's previous prompt on the replica that served that session last.

**Uncached work in flight.** Each grant records its uncached prompt tokens as prefill in flight on its
replica until the replica reports a token generated for it (`Capacity.progress`) or it is released.
Between reports that are busy with prefill, the tokens whose prefill finished over the seconds it took
measure the replica's prefill rate (decayed, half-life `RATE_HALF_LIFE_S`; the configured
`prefill_tokens_per_s` until `MIN_RATE_S` of it are measured). Each grant also adds its whole prompt
and output estimate to the replica's *recent work* (halved every `WORK_HALF_LIFE_S`), its share of
what the pool was given lately: the whole prompt, because a cached prefix saves only its prefill, and
the prompt's KV is still read at every decode step of that request, slowing every request running
beside it. The rules read all three.

**Cached prompts and KV.** A prefix hit saves the prefill; it saves KV only where the blocks are held
by a request running on that replica: vLLM counts cached blocks no request holds as free (they are
evictable) and takes them from the free pool when a request reuses them. So the fit rule's prompt
term is the prompt less the leading blocks that the replica's outstanding grants already hold; with
`shared_kv=False` (an engine that charges each running request its whole prompt, as the simulator's
does) it is the whole prompt.

**Slots.** A slot is used from the grant until the release, and anything a replica says it runs that
the ledger did not grant counts too (grants of a scheduler instance that has since restarted). An engine
under pressure (vLLM with requests waiting inside it) reports fewer free slots than
`max_slots - len(active)`; the difference is *withheld* until its next report, so the backlog waits
here, in policy order, rather than in the engine's own queue.

**Grants ahead.** A replica may take `Capacity.running_slots` running requests and a few more held
in its engine's queue (`max_slots` counts both), so that a freed slot is refilled at the engine's next
step. A grant made while every running slot is taken is *ahead* until a report says whether it
started (`Capacity.waiting_ids`: granted, held by the engine, not started); one that has not started
is `revocable`, at no cost (`driftsched.core.dispatch`). A waiting request holds no KV in the engine,
so its release credits none back.

**Cost.** `choose` scans the replicas, O(replicas) plus the prefix match, O(blocks matched + 1) on
each. With a deep queue the head often fits nowhere
(it waits for KV), and the dispatcher asks again for that same head after every grant and release;
so a ticket that fit nowhere is remembered with the replicas changed since, and asking again for it
checks only those (a replica that did not change still cannot take it). Every method that changes a
replica's figures marks it changed. (An index entry that ages out only lowers a match, which never lets
a ticket fit where it did not.)

**TPOT guard** (`PlacementConfig.tpot_guard`, on by default). A decode step reads the KV of every
request running on the replica, so how full its KV is sets the pace of every stream there, and a
stream's TPOT is that pace. Each report gives the tokens each running request has generated; between
two reports the most any of them advanced is the steps taken, and over at least `PACE_WINDOW_S` of
busy time the seconds per step is the replica's measured pace. While the pace is above `GUARD_HIGH` of
the tightest TPOT objective among the grants there, the share of the KV new grants may fill
(`ReplicaState.kv_cap`) is cut by `CAP_CUT`; while it is below `GUARD_LOW`, the share is raised by
`CAP_STEP` back towards all of it. The guard only refuses a grant (the ticket waits, in order, or goes
to another replica); it never stops a running request, and an idle replica takes any ticket. It trades
tokens for objectives: a replica held below a full KV serves fewer tokens a second, and the streams it
serves keep their pace (measured: docs/scheduling.md, "The TPOT guard").

**Liveness.** A replica silent for `replica_timeout_s` is dropped with its grants; a grant that its
replica has never reported running for `grant_grace_s` is presumed lost (its caller died) and released.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from driftsched.core.config import SchedulerConfig
from driftsched.core.placement_rules import Candidate, PlacementRule, Pool, make_rule
from driftsched.core.prefix import PrefixIndex
from driftsched.core.request import Ticket

DEFAULT_PREFILL_TOKENS_PER_S = 4096.0
"""A replica's prefill rate before one is configured or measured (about an 8B model on an L4)."""
RATE_HALF_LIFE_S = 60.0
MIN_RATE_S = 5.0
WORK_HALF_LIFE_S = 60.0
"""Half-life of each replica's recent work (`ReplicaState.recent_work`), the balance rules' measure."""
PACE_WINDOW_S = 1.0
"""Busy seconds of reports over which the TPOT guard measures a replica's pace."""
GUARD_HIGH, GUARD_LOW = 1.0, 0.8
"""The guard cuts the KV share above GUARD_HIGH of the tightest objective and raises it below GUARD_LOW."""
CAP_CUT, CAP_STEP, CAP_FLOOR = 0.9, 0.05, 0.3
"""Multiplicative cut, additive raise and the lowest KV share the guard sets."""
MAX_SESSIONS = 65_536
"""Sessions whose last replica is remembered (least recently used forgotten first)."""


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
    (for the growth reservation, the preemption guards and the prefill in flight)."""
    progress_ids: tuple[str, ...] = ()
    """With an exact report (`active=None`): the request ids `progress` is given for."""
    engine_running: int = 0
    engine_waiting: int = 0
    """Sequences queued inside the engine (vLLM's waiting queue, preempted ones included)."""
    kv_usage: float = 0.0
    engine_queue_s: float = 0.0
    """Recent mean time a request waited inside the engine before it was first scheduled."""
    running_slots: int = 0
    """Of `max_slots`, those that run at once (``max_num_seqs``); the rest hold granted requests
    queued inside the engine, ready for the next freed slot (grant-ahead). 0: all of them run."""
    waiting_ids: tuple[str, ...] = ()
    """Granted requests the engine holds but has not started: revoking one costs nothing."""


@dataclass(slots=True)
class ReplicaState:
    """One replica as last reported, with the grants outstanding on it."""

    replica_id: str
    capacity: Capacity
    reported_at: float
    granted: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (grant time, KV charged)
    pending: dict[str, int] = field(default_factory=dict)  # granted, not yet in a report: id -> KV
    active: set[str] = field(default_factory=set)  # reported running
    progress: dict[str, int] = field(default_factory=dict)  # reported tokens generated, per running id
    generated: int = 0  # their sum
    in_use: int = 0
    kv_pending: int = 0
    kv_credit: int = 0  # KV of requests released since the report (freed, not yet reported)
    withheld: int = 0
    last_freed: float = 0.0  # when a request last left this replica (release)
    horizon: int = 0  # H of the growth reservation (`Placement.kv_growth_tokens`)
    expected: dict[str, float] = field(default_factory=dict)  # granted id -> remaining estimate then
    reserved: float = 0.0  # KV held back for the next `horizon` tokens of the grants (module docstring)
    decode_left: float = 0.0  # Σ max(0, expected - generated) over the grants: output tokens still to come
    index: PrefixIndex = field(default_factory=lambda: PrefixIndex(0))  # blocks believed cached here
    prefill: dict[str, int] = field(default_factory=dict)  # granted id -> uncached tokens, no token yet
    prefill_tokens: int = 0  # their sum: the uncached work in flight
    pins: dict[int, int] = field(default_factory=dict)  # block -> grants here holding it
    pinned: dict[str, tuple[int, ...]] = field(default_factory=dict)  # granted id -> blocks it holds
    rate_tokens: float = 0.0  # decayed prefill tokens finished / decayed seconds busy with prefill
    rate_seconds: float = 0.0
    prefill_since: float = 0.0  # when the prefill in flight last rose from none
    placed: float = 0.0  # work granted here (prompt + output estimate), decayed to `placed_at`
    placed_at: float = 0.0
    waiting: set[str] = field(default_factory=set)  # reported held by the engine, not started
    ahead: set[str] = field(default_factory=set)  # granted beyond the running slots, not yet reported
    tpot: dict[str, float] = field(default_factory=dict)  # granted id -> its TPOT objective (finite ones)
    pace_s: float = 0.0  # busy seconds and steps measured since the guard last judged the pace
    pace_steps: int = 0
    kv_cap: float = 1.0  # share of the KV new grants may fill (the TPOT guard)
    step_s: float = 0.0  # the pace last measured: seconds per decode step (0 until measured)

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
        self.generated = sum(self.progress.values())
        self.waiting = set(capacity.waiting_ids)
        if self.ahead:
            reported = self.active if capacity.active is not None else set(ids)
            self.ahead -= reported  # once reported, `waiting` says whether it started
        self.kv_pending = sum(self.pending.values())
        progress = self.progress
        self.decode_left = sum(max(0.0, e - progress.get(rid, 0)) for rid, e in self.expected.items())
        if self.horizon:
            self.reserved = sum(self.growth(rid) for rid in self.expected)

    def growth(self, request_id: str) -> float:
        """KV this grant holds back: its next `horizon` tokens, or fewer near its estimated end."""
        expected = self.expected.get(request_id)
        if expected is None:
            return 0.0
        return min(self.horizon, max(0.0, expected - self.progress.get(request_id, 0)))

    def left(self, request_id: str) -> float:
        """Output tokens this grant is still expected to produce (0 if not granted here)."""
        expected = self.expected.get(request_id)
        return 0.0 if expected is None else max(0.0, expected - self.progress.get(request_id, 0))

    def free_slots(self) -> int:
        return max(0, self.capacity.max_slots - self.in_use - self.withheld)

    def free_kv(self) -> int:
        return self.capacity.free_kv_tokens + self.kv_credit - self.kv_pending

    def prefilled(self, request_id: str) -> int:
        """The grant's prefill is done (or moot): it leaves the work in flight; its tokens."""
        tokens = self.prefill.pop(request_id, 0)
        self.prefill_tokens -= tokens
        return tokens

    def forget(self, request_id: str) -> None:
        """The grant left this replica: no prefill in flight, no blocks held."""
        self.prefilled(request_id)
        self.waiting.discard(request_id)
        self.ahead.discard(request_id)
        self.tpot.pop(request_id, None)
        pins = self.pins
        for h in self.pinned.pop(request_id, ()):
            left = pins[h] - 1
            if left:
                pins[h] = left
            else:
                del pins[h]

    def shared(self, blocks: tuple[int, ...]) -> int:
        """Leading `blocks` held by grants outstanding here."""
        pins, n = self.pins, 0
        for h in blocks:
            if h not in pins:
                break
            n += 1
        return n

    def load(self) -> float:
        """Work in flight here, in tokens: prompt tokens still to prefill and output tokens still to come
        (by the grants' estimates)."""
        return self.prefill_tokens + self.decode_left

    def recent_work(self, now: float) -> float:
        """Work granted here lately, in tokens (prompt and output estimate of each grant,
        halved every `WORK_HALF_LIFE_S`): this replica's recent share of the pool's work."""
        if now <= self.placed_at:
            return self.placed
        return self.placed * math.pow(0.5, (now - self.placed_at) / WORK_HALF_LIFE_S)

    def add_work(self, tokens: float, now: float) -> None:
        if now >= self.placed_at:
            self.placed, self.placed_at = self.recent_work(now) + tokens, now
        else:  # an earlier time than the last grant's (clocks of two shells): decay it to that one
            self.placed += tokens * math.pow(0.5, (self.placed_at - now) / WORK_HALF_LIFE_S)

    def pace(self, capacity: Capacity, now: float) -> None:
        """The TPOT guard's measurement and control, from a report before it is applied (module
        docstring): steps are the most any request listed in both reports advanced."""
        ids = capacity.active if capacity.active is not None else capacity.progress_ids
        before, steps = self.progress, 0
        for rid, done in zip(ids, capacity.progress or (), strict=False):
            was = before.get(rid)
            if was is not None and done - was > steps:
                steps = done - was
        if steps <= 0 or now <= self.reported_at:
            return
        self.pace_s += now - self.reported_at
        self.pace_steps += steps
        if self.pace_s < PACE_WINDOW_S:
            return
        step_s, tight = self.pace_s / self.pace_steps, min(self.tpot.values(), default=math.inf)
        self.pace_s, self.pace_steps, self.step_s = 0.0, 0, step_s
        if step_s > GUARD_HIGH * tight:
            self.kv_cap = max(CAP_FLOOR, self.kv_cap * CAP_CUT)
        elif step_s < GUARD_LOW * tight or not math.isfinite(tight):
            self.kv_cap = min(1.0, self.kv_cap + CAP_STEP)

    def rate(self, prior: float) -> float:
        """Prefill tokens/s measured here, or `prior` until `MIN_RATE_S` busy seconds are measured."""
        if self.rate_seconds < MIN_RATE_S or self.rate_tokens <= 0:
            return prior
        return self.rate_tokens / self.rate_seconds


class Placement:
    """Replica capacity from reports and grants, the fit filter and a placement rule (module docstring)."""

    def __init__(
        self,
        replica_timeout_s: float = 5.0,
        grant_grace_s: float = 30.0,
        kv_watermark: float = 0.01,
        kv_growth_tokens: int = 0,
        *,
        rule: str | PlacementRule = "most-free-kv",
        block_tokens: int = 256,
        index_ttl_s: float = 120.0,
        prefill_tokens_per_s: float = 0.0,
        shared_kv: bool = True,
        seed: int = 0,
        tpot_guard: bool = False,
    ) -> None:
        """`rule`: a `PLACEMENT_RULES` name (its default parameters) or a rule object (`make_rule`);
        `block_tokens`: tokens per prefix hash of the tickets; `prefill_tokens_per_s`: a replica's
        prefill rate until measured (0: `DEFAULT_PREFILL_TOKENS_PER_S`); `shared_kv`: whether the engines
        store a prefix shared by running requests once (module docstring); `seed`: for rules that draw."""
        if not 0 <= kv_watermark < 1:
            raise ValueError(f"kv_watermark must be in [0, 1), got {kv_watermark}; try 0.01")
        if kv_growth_tokens < 0:
            raise ValueError(f"kv_growth_tokens must be >= 0, got {kv_growth_tokens}; 0 reserves no growth")
        if block_tokens < 1 or not index_ttl_s > 0 or prefill_tokens_per_s < 0:
            raise ValueError(
                f"need block_tokens >= 1, index_ttl_s > 0 and prefill_tokens_per_s >= 0, got {block_tokens}, "
                f"{index_ttl_s} and {prefill_tokens_per_s}"
            )
        self.kv_growth_tokens = kv_growth_tokens
        self.replica_timeout_s = replica_timeout_s
        self.grant_grace_s = grant_grace_s
        self.kv_watermark = kv_watermark
        self.rule = make_rule(rule, seed=seed) if isinstance(rule, str) else rule
        self.block_tokens = block_tokens
        self.index_ttl_s = index_ttl_s
        self.prefill_prior = prefill_tokens_per_s or DEFAULT_PREFILL_TOKENS_PER_S
        self.shared_kv = shared_kv
        self.tpot_guard = tpot_guard
        self._replicas: dict[str, ReplicaState] = {}
        # the last ticket that fit nowhere, with what of it the rule reads (prompt, remaining estimate)
        self._no_fit: tuple[Ticket, int, float] | None = None
        self._changed: set[str] = set()  # replicas changed since (module docstring, "Cost")
        self._sessions: OrderedDict[str, tuple[str, int, float]] = OrderedDict()  # -> (replica, prompt, t)
        self._now = 0.0  # latest time given by a report, grant or release

    @classmethod
    def from_config(
        cls,
        scheduler: SchedulerConfig,
        *,
        replica_timeout_s: float = 5.0,
        grant_grace_s: float = 30.0,
        block_tokens: int | None = None,
        prefill_tokens_per_s: float | None = None,
        shared_kv: bool = True,
        seed: int = 0,
    ) -> Placement:
        """The placement a service (or simulation) configured with `scheduler` uses: its rule, block
        size, index TTL and prior prefill rate (`scheduler.placement`), watermark and growth horizon.
        `block_tokens` and `prefill_tokens_per_s` override the configured ones where the shell knows
        better (the simulator: the workload's hash block, the performance model's rate)."""
        cfg = scheduler.placement
        rate = cfg.prefill_tokens_per_s if prefill_tokens_per_s is None else prefill_tokens_per_s
        return cls(
            replica_timeout_s,
            grant_grace_s,
            scheduler.kv_watermark,
            scheduler.kv_growth_tokens,
            rule=make_rule(cfg.rule, cfg, seed),
            block_tokens=block_tokens or cfg.block_tokens,
            index_ttl_s=cfg.index_ttl_s,
            prefill_tokens_per_s=rate,
            shared_kv=shared_kv,
            tpot_guard=cfg.tpot_guard,
        )

    @property
    def needs_progress(self) -> bool:
        """Whether reports should carry `Capacity.progress` (growth reservation, prefill in flight,
        the TPOT guard's pace)."""
        return bool(self.kv_growth_tokens) or self.rule.reads_load or self.tpot_guard

    # -- reports ---------------------------------------------------------------------------------

    def report(self, replica_id: str, capacity: Capacity, now: float) -> list[str]:
        """A replica's report: register it or refresh it; returns grants presumed lost."""
        self._now = max(self._now, now)
        state = self._replicas.get(replica_id)
        if state is None:
            state = self._replicas[replica_id] = ReplicaState(
                replica_id, capacity, now, last_freed=now, horizon=self.kv_growth_tokens,
                index=PrefixIndex(capacity.kv_capacity_tokens // self.block_tokens, self.index_ttl_s),
            )
        self._changed.add(replica_id)
        if state.index.capacity_blocks != capacity.kv_capacity_tokens // self.block_tokens:
            state.index.resize(capacity.kv_capacity_tokens // self.block_tokens)
        lost: list[str] = []
        if capacity.active is not None:
            running = set(capacity.active)
            lost = [rid for rid, (granted_at, _) in state.granted.items()
                    if rid not in running and now - granted_at > self.grant_grace_s]
            for rid in lost:
                del state.granted[rid]
                state.expected.pop(rid, None)  # `refresh` sums what is left anew
                state.forget(rid)
        busy_s = now - max(state.reported_at, state.prefill_since) if state.prefill_tokens > 0 else 0.0
        if self.tpot_guard and capacity.progress:
            state.pace(capacity, now)
        state.refresh(capacity, now)
        if state.prefill:
            progress = state.progress
            done = sum(state.prefilled(rid) for rid in [r for r in state.prefill if progress.get(r, 0) > 0])
        else:
            done = 0
        if busy_s > 0:
            decay = 0.5 ** (busy_s / RATE_HALF_LIFE_S)
            state.rate_tokens = state.rate_tokens * decay + done
            state.rate_seconds = state.rate_seconds * decay + busy_s
        return lost

    def expire(self, now: float) -> list[tuple[str, list[str]]]:
        """Drop silent replicas; returns (replica id, its outstanding grants) for each one dropped."""
        dead = [r for r in self._replicas.values() if now - r.reported_at > self.replica_timeout_s]
        return [(r.replica_id, self.drop(r.replica_id)) for r in dead]

    def drop(self, replica_id: str) -> list[str]:
        """Forget a replica (dead or gone); returns its outstanding grants."""
        state = self._replicas.pop(replica_id, None)
        return list(state.granted) if state is not None else []

    # -- the prefix cache ------------------------------------------------------------------------

    def _cached(self, state: ReplicaState, ticket: Ticket, now: float) -> int:
        """Tokens of `ticket`'s prompt believed cached on `state` (module docstring)."""
        prompt, blocks = ticket.prompt_tokens, ticket.prefix_blocks
        if blocks:
            held = state.index.match(blocks, now) * self.block_tokens
        elif ticket.session_id is not None and (last := self._sessions.get(ticket.session_id)) is not None:
            replica, held, at = last
            if replica != state.replica_id or now - at > self.index_ttl_s:
                return 0
        else:
            return 0
        return max(0, min(held, prompt - 1))

    def _kv_need(self, state: ReplicaState, ticket: Ticket) -> int:
        """KV tokens the ticket's prompt takes on `state`: less what its grants already hold there."""
        prompt = ticket.prompt_tokens
        if not self.shared_kv or not ticket.prefix_blocks or not state.pins:
            return prompt
        return max(1, prompt - state.shared(ticket.prefix_blocks) * self.block_tokens)

    def cached_tokens(self, ticket: Ticket, now: float | None = None) -> int:
        """The most tokens of `ticket`'s prompt any replica is believed to hold (its cheapest prefill)."""
        at = self._now if now is None else now
        return max((self._cached(s, ticket, at) for s in self._replicas.values()), default=0)

    def replica_cached_tokens(self, replica_id: str, ticket: Ticket, now: float | None = None) -> int:
        """Tokens of `ticket`'s prompt `replica_id` is believed to hold (0 for an unknown replica)."""
        state = self._replicas.get(replica_id)
        return 0 if state is None else self._cached(state, ticket, self._now if now is None else now)

    # -- the rule --------------------------------------------------------------------------------

    def fits(
        self, state: ReplicaState, ticket: Ticket, slots: int = 0, kv: int = 0, idle: bool = False
    ) -> bool:
        """Whether `ticket` may start on this replica now (slot, then KV for its prompt and growth),
        with `slots` and `kv` tokens more than the replica has (what a release would free)."""
        need = self._kv_need(state, ticket)
        return self._room(state, need, ticket.remaining_estimate, slots, kv, idle) is not None

    def _room(self, state: ReplicaState, prompt: int, remaining: float, slots: int = 0, kv: int = 0,
              idle: bool = False) -> tuple[int, int] | None:
        """`fits` for a ticket whose prompt takes `prompt` KV tokens there and with `remaining` estimate:
        the replica's (free KV, free slots) if it fits, else None. `choose` runs it for every replica
        per grant and ranks by what it returns, so each figure is computed once."""
        free_slots = state.free_slots()
        if free_slots + slots <= 0:
            return None
        free_kv = state.free_kv()
        kv_total = state.capacity.kv_capacity_tokens
        if idle or state.in_use == 0 or kv_total <= 0:
            return free_kv, free_slots
        need = prompt + self.kv_watermark * kv_total
        if state.kv_cap < 1.0:  # the TPOT guard holds part of the KV back from new grants
            need += (1.0 - state.kv_cap) * kv_total
        if state.horizon:
            need += min(state.horizon, remaining) + state.reserved
        return (free_kv, free_slots) if need <= free_kv + kv else None

    def fits_after_release(self, replica_id: str, ticket: Ticket, request_id: str, tokens: int) -> bool:
        """Whether `ticket` would fit on `replica_id` once `request_id` (holding `tokens` of KV) left."""
        state = self._replicas.get(replica_id)
        if state is None or request_id not in state.granted:
            return False
        # What `release` gives back: a pending grant's charge, nothing for one the engine holds
        # waiting (it has no KV there yet), else `tokens`; its reservation goes with it.
        freed = state.pending.get(request_id, 0 if request_id in state.waiting else tokens)
        kv = freed + math.ceil(state.growth(request_id))
        return self.fits(state, ticket, slots=1, kv=kv, idle=state.in_use <= 1)

    def stuck_since(self, replica_id: str) -> float:
        """When a request last left `replica_id` (its capacity last turned over); inf if unknown."""
        state = self._replicas.get(replica_id)
        return state.last_freed if state is not None else float("inf")

    def running_slot_free(self, replica_id: str) -> bool:
        """Whether a grant to `replica_id` now would start at once: a running slot is free there, not
        only a slot ahead."""
        state = self._replicas.get(replica_id)
        if state is None:
            return False
        running = state.capacity.running_slots or state.capacity.max_slots
        return state.in_use < running and state.free_slots() > 0

    def starts_at_once(self, replica_id: str, ticket: Ticket) -> bool:
        """Whether `ticket` would start at once on `replica_id`: a running slot is free and it fits."""
        state = self._replicas.get(replica_id)
        return state is not None and self.running_slot_free(replica_id) and self.fits(state, ticket)

    def revocable(self, replica_id: str, request_id: str) -> bool:
        """Whether `request_id`'s grant on `replica_id` is not started yet: queued inside the engine by
        its last report, or granted beyond the running slots and not reported since (grant-ahead)."""
        state = self._replicas.get(replica_id)
        if state is None or request_id not in state.granted:
            return False
        return request_id in state.waiting or request_id in state.ahead

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

    def choose(self, ticket: Ticket, now: float | None = None) -> str | None:
        """The replica `ticket` goes to now, or None when it fits none (it then waits, in order)."""
        at = self._now if now is None else now
        replicas, memo = self._replicas, (ticket, ticket.prompt_tokens, ticket.remaining_estimate)
        remembered = self._no_fit == memo
        states: Iterable[ReplicaState] = replicas.values()
        if remembered:
            states = [replicas[r] for r in self._changed if r in replicas]
        fitting: list[Candidate] = []
        room, remaining, prompt, prior = self._room, memo[2], memo[1], self.prefill_prior
        cached = self._cached if ticket.prefix_blocks or ticket.session_id is not None else None
        for state in states:
            free = room(state, self._kv_need(state, ticket), remaining)
            if free is not None:
                hit = cached(state, ticket, at) if cached is not None else 0
                fitting.append(Candidate(state, free[0], free[1], hit, prompt - hit, state.rate(prior)))
        if not fitting or remembered:  # another ticket's choice leaves the memory as it was
            self._no_fit = None if fitting else memo
            self._changed.clear()
        if not fitting:
            return None
        if len(fitting) == 1:
            return fitting[0].replica_id
        pool = Pool(at, len(replicas), sum(s.recent_work(at) for s in replicas.values()))
        return self.rule.pick(ticket, fitting, pool).replica_id

    def grant(self, replica_id: str, ticket: Ticket, now: float) -> None:
        """Count `ticket` on `replica_id` from now until it is released: its slot, KV, prefill in
        flight, and its prefix in that replica's index (and its session's last replica)."""
        self._now = max(self._now, now)
        state = self._replicas[replica_id]
        self._changed.add(replica_id)
        rid, prompt, blocks = ticket.request_id, ticket.prompt_tokens, ticket.prefix_blocks
        kv = self._kv_need(state, ticket)
        uncached = prompt - self._cached(state, ticket, now)
        state.forget(rid)  # a request granted here again (resumed) replaces its old figures
        running_slots = state.capacity.running_slots
        if running_slots and state.in_use >= running_slots:
            state.ahead.add(rid)  # every running slot is taken: it waits in the engine's queue
        state.granted[rid] = (now, kv)
        state.pending[rid] = kv
        state.in_use += 1
        state.kv_pending += kv
        if uncached > 0:
            if not state.prefill_tokens:
                state.prefill_since = now
            state.prefill[rid] = uncached
            state.prefill_tokens += uncached
        if blocks:
            state.index.insert(blocks[::-1], now)  # head last: the last part an eviction takes
            if self.shared_kv:
                state.pinned[rid] = blocks
                for h in blocks:
                    state.pins[h] = state.pins.get(h, 0) + 1
        if ticket.session_id is not None:
            sessions = self._sessions
            sessions[ticket.session_id] = (replica_id, prompt, now)
            sessions.move_to_end(ticket.session_id)
            if len(sessions) > MAX_SESSIONS:
                sessions.popitem(last=False)
        state.generated -= state.progress.pop(rid, 0)  # a resumed request starts a new run here
        state.decode_left -= state.left(rid)
        state.expected[rid] = ticket.remaining_estimate
        state.decode_left += ticket.remaining_estimate
        state.add_work(prompt + ticket.remaining_estimate, now)
        if math.isfinite(ticket.tpot_slo_s):
            state.tpot[rid] = ticket.tpot_slo_s
        if state.horizon:
            state.reserved += state.growth(rid)

    def release(self, replica_id: str, request_id: str, tokens: int = 0, now: float | None = None) -> bool:
        """Free a request's slot (and, until the next report, its `tokens` of KV); False if unknown.

        `now`, when given, records that capacity turned over on the replica at that time."""
        state = self._replicas.get(replica_id)
        if state is None:
            return False
        self._changed.add(replica_id)
        if now is not None:
            self._now = max(self._now, now)
            if request_id in state.granted or request_id in state.active:
                state.last_freed = max(state.last_freed, now)
        waiting = request_id in state.waiting  # held by the engine without KV: nothing to credit
        if request_id in state.expected:
            state.reserved = max(0.0, state.reserved - state.growth(request_id))
            state.decode_left = max(0.0, state.decode_left - state.left(request_id))
            del state.expected[request_id]
        state.forget(request_id)
        granted = state.granted.pop(request_id, None)
        prompt = state.pending.pop(request_id, None)
        if prompt is not None:
            state.in_use -= 1
            state.kv_pending -= prompt
        elif request_id in state.active:  # do not wait for the next report to see it gone
            state.active.discard(request_id)
            state.in_use -= 1
            if not waiting:
                state.kv_credit += tokens or (granted[1] if granted else 0)
        elif granted is not None:  # exact reports: the grant was counted in `in_use` only
            state.in_use -= 1
            state.kv_credit += tokens
        return granted is not None

    # -- introspection ---------------------------------------------------------------------------

    def replicas(self) -> Iterable[ReplicaState]:
        return self._replicas.values()

    def generated(self) -> int:
        """Output tokens the running requests have generated in their current runs, as last reported."""
        return sum(state.generated for state in self._replicas.values())

    def prefill_rate(self) -> float | None:
        """One replica's prefill tokens/s, the mean over the replicas of each one's measured rate (its
        prior until measured); None with no replica."""
        rates = [r.rate(self.prefill_prior) for r in self._replicas.values()]
        return sum(rates) / len(rates) if rates else None

    def summary(self) -> dict[str, dict[str, float]]:
        """Per replica: slots, in use, free, KV, prefill in flight, prefix index size, the engine's
        own state, and the TPOT guard's measured pace and KV share (for metrics)."""
        return {
            r.replica_id: {"slots": r.capacity.max_slots, "in_use": r.in_use, "free": r.free_slots(),
                           "free_kv_tokens": r.free_kv(), "kv_capacity_tokens": r.capacity.kv_capacity_tokens,
                           "prefill_in_flight_tokens": r.prefill_tokens,
                           "prefill_tokens_per_s": r.rate(self.prefill_prior),
                           "prefix_index_blocks": len(r.index),
                           "engine_running": r.capacity.engine_running,
                           "engine_waiting": r.capacity.engine_waiting,
                           "kv_usage": r.capacity.kv_usage, "engine_queue_s": r.capacity.engine_queue_s,
                           "step_s": r.step_s, "kv_share": r.kv_cap}
            for r in self._replicas.values()
        }
