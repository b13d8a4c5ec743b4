"""Placement rules: which of the replicas a ticket fits takes it. Ours, and the peers' to compare with.

`Placement` (`driftsched.core.placement`) filters the replicas by the fit rule and hands the ones that
fit to a rule as `Candidate`s; the rule picks one. A rule never sees the queue: the policy has already
decided *who* goes (the head); the rule decides only *where*, so no rule can overtake the policy's order.

What a rule may read of a candidate (the scheduler's own picture, kept from grants and reports):

* ``cached``: tokens of the ticket's prompt that replica is believed to hold (its prefix index, or the
  session hint), ``uncached`` = prompt - cached;
* ``inflight``: uncached prompt tokens of the grants there that have not produced a token yet (the
  prefill queued or running on that replica), and ``rate``: that replica's prefill rate in tokens/s
  (measured from its reports, else the configured figure);
* ``queue``: requests granted or running there; ``kv_used`` / ``free_kv``: its KV; ``held_blocks``:
  blocks in its prefix index; ``work``: the work granted to it lately (prompt and output estimate
  of each grant, decayed), beside the pool's (`Pool`, over every replica, not only those the
  request fits).

Each peer rule cites the source it emulates. All of them see the same prefix index (the approximation
Dynamo and Ray use without engine KV events), so the comparison is of the rules, not of the indexes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from driftsched.core.config import PlacementConfig
from driftsched.core.request import Ticket

if TYPE_CHECKING:
    from driftsched.core.placement import ReplicaState


@dataclass(slots=True)
class Candidate:
    """A replica the ticket fits, with what the rules score it by (module docstring)."""

    state: ReplicaState
    free_kv: int
    free_slots: int
    cached: int
    uncached: int
    rate: float
    """Prefill tokens/s of this replica (measured, else the configured prior)."""

    @property
    def replica_id(self) -> str:
        return self.state.replica_id

    @property
    def inflight(self) -> int:
        return self.state.prefill_tokens

    @property
    def queue(self) -> int:
        return self.state.in_use

    @property
    def kv_used(self) -> int:
        return max(0, self.state.capacity.kv_capacity_tokens - self.free_kv)

    def work(self, now: float) -> float:
        """Work granted to this replica lately, tokens (`ReplicaState.recent_work`)."""
        return self.state.recent_work(now)

    @property
    def held_blocks(self) -> int:
        return len(self.state.index)

    def hit(self, prompt: int) -> float:
        """Share of a `prompt`-token prompt cached here."""
        return self.cached / prompt if prompt > 0 else 0.0

    def ttft_s(self) -> float:
        """Expected seconds to this ticket's first token here: the prefill queued ahead, then its own."""
        return (self.inflight + self.uncached) / self.rate


@dataclass(slots=True, frozen=True)
class Pool:
    """What a rule may know of the whole pool when it picks: the time and the work granted lately."""

    now: float
    replicas: int
    work: float
    """Work granted lately over every replica, tokens (`Candidate.work`)."""


class PlacementRule(Protocol):
    """Picks one of the candidates (never empty) for `ticket` in `pool`. `reads_load`: whether it reads
    the prefill in flight (the replicas must then report their requests' progress)."""

    name: ClassVar[str]
    reads_load: ClassVar[bool]

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate: ...


def _most_free(c: Candidate) -> tuple[int, int, str]:
    return c.free_kv, c.free_slots, c.replica_id


class MostFreeKv:
    """The most free KV, then free slots, then id: work spreads to the least loaded replica; the prefix
    cache is ignored (DriftSched before cache-aware placement)."""

    name: ClassVar[str] = "most-free-kv"
    reads_load: ClassVar[bool] = False

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del config, seed

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        return max(candidates, key=_most_free)


class RoundRobin:
    """The next replica (in id order) after the last one chosen that the ticket fits: Dynamo's and
    Kubernetes Services' default, blind to load and cache."""

    name: ClassVar[str] = "round-robin"
    reads_load: ClassVar[bool] = False

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del config, seed
        self._last = ""

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.replica_id)
        chosen = next((c for c in ordered if c.replica_id > self._last), ordered[0])
        self._last = chosen.replica_id
        return chosen


class RayPrefix:
    """Ray Serve LLM's `PrefixCacheAffinityRouter` (ray-project/ray,
    python/ray/llm/_internal/serve/request_router/prefix_aware/prefix_aware_router.py): when the queues
    (requests ongoing) differ by at most `IMBALANCE`, the replicas with the longest prefix match if it
    covers at least `MATCH_RATE` of the prompt, else the replicas holding the least in their prefix tree;
    the shortest queue of those. When the queues differ by more, power of two choices (two at random,
    the shorter queue), seeded here."""

    name: ClassVar[str] = "ray-prefix"
    reads_load: ClassVar[bool] = False
    IMBALANCE: ClassVar[int] = 10
    MATCH_RATE: ClassVar[float] = 0.1

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del config
        self._rng = random.Random(seed)

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        queues = [c.queue for c in candidates]
        if max(queues) - min(queues) > self.IMBALANCE:
            pair = self._rng.sample(list(candidates), 2) if len(candidates) > 1 else list(candidates)
            return min(pair, key=lambda c: c.queue)
        best = max(c.cached for c in candidates)
        if best > 0 and best >= self.MATCH_RATE * ticket.prompt_tokens:
            chosen = [c for c in candidates if c.cached == best]
        else:
            least = min(c.held_blocks for c in candidates)
            chosen = [c for c in candidates if c.held_blocks == least]
        return min(chosen, key=lambda c: (c.queue, c.replica_id))


class LlmdSticky:
    """llm-d's default since Aug 2026, "sticky until saturated" (llm-d/llm-d-router; ../shared/PEERS.md):
    a prefix-affinity filter keeps the replicas holding at least `AFFINITY_HIT` of the prompt, unless
    their uncached work in flight exceeds tau = peak prefill throughput x `TTFT_PENALTY_S` (then they are
    saturated and affinity is released); the token-load scorer ``uncached_in_flight + prompt x (1 - hit)``
    picks the lowest among the kept replicas, or among all when none is kept. Peak prefill throughput is
    the replica's rate; tau is fixed per replica, whatever the request's own objective."""

    name: ClassVar[str] = "llmd-sticky"
    reads_load: ClassVar[bool] = True
    AFFINITY_HIT: ClassVar[float] = 0.8
    TTFT_PENALTY_S: ClassVar[float] = 14.0  # their example: 20,480 tok/s x 14 s

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del config, seed

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        prompt = ticket.prompt_tokens
        sticky = [
            c for c in candidates
            if c.cached > 0 and c.hit(prompt) >= self.AFFINITY_HIT
            and c.inflight <= c.rate * self.TTFT_PENALTY_S  # tau
        ]
        return min(sticky or candidates, key=lambda c: (c.inflight + c.uncached, c.replica_id))


class DynamoKv:
    """NVIDIA Dynamo's KV router (ai-dynamo/dynamo, docs/components/router, "Routing Concepts"): per
    worker ``cost = overlap_weight x prefill_blocks + decode_blocks``, prefill blocks being the prompt work
    already assigned and not yet prefilled plus this request's uncached blocks, decode blocks the KV
    blocks in use plus this request's; the lowest cost wins (router temperature 0, the default)."""

    name: ClassVar[str] = "dynamo-kv"
    reads_load: ClassVar[bool] = True
    OVERLAP_WEIGHT: ClassVar[float] = 1.0

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del config, seed

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        prompt = ticket.prompt_tokens

        def cost(c: Candidate) -> tuple[float, str]:  # in tokens: the block size divides both terms
            return self.OVERLAP_WEIGHT * (c.inflight + c.uncached) + c.kv_used + prompt, c.replica_id

        return min(candidates, key=cost)


class DriftSched:
    """Ours: a request follows its prefix to the replica that holds it while that replica can still give
    it its first token within its own objective; a new context goes to the replica running the fewest
    requests; no replica is given more than its share of the work.

    **Balance.** A replica takes the request only while the work granted to it lately (prompt and
    output estimate of its grants, halved every minute) is within (1 + `balance_slack`) of the
    pool's mean with this request counted: bounded-load consistent hashing's rule (Mirrokni, Thorup,
    Zadimoghaddam, SODA 2018) over a sliding window, which keeps a hot prefix or a tenant's system
    prompt from piling its requests onto the replicas that hold it. When no replica the request fits is
    within the bound, all of them are considered.

    **Affinity.** The holder is the replica with the longest cached prefix of the prompt (then the
    fewest requests). It is followed when it holds at least `affinity_min_share` of the prompt more than
    the replica holding least: a prefix every replica holds, or a short system prompt before a long
    document, is not worth concentrating a tenant's work for (Ray's router sets such a floor at 10 % of
    the prompt). On each replica r the request's expected time to first token is

        T_r = (inflight_r + uncached_r) / rate_r

    the prefill queued there (granted, no token yet) plus its own uncached prompt, at that replica's
    measured prefill rate. The holder keeps the request unless it is *saturated for this request*:
    T_holder exceeds `affinity_slack` of the request's TTFT objective (all of it by default) and another
    replica is sooner; then the soonest replica takes it (and holds the prefix from then on). So an
    interactive request leaves a busy holder early and a batch request waits its turn where its context
    lives. llm-d's
    release point is one threshold in tokens for every request (tau, ../shared/PEERS.md); expected TTFT
    alone, with no slack, moves a session whenever some other replica is momentarily sooner, copying its
    context from replica to replica, and the copies evict other sessions' prefixes (measured: a lower
    hit rate and, from it, a slower median TTFT than keeping it).

    **Popular prefixes.** A prefix worth following that at least two replicas, and at least `POPULAR` of
    those the request fits, already hold (a hot tenant's long common prefix) is no context to keep in
    one place: copying it to one more replica costs one prefill, while every request that follows it
    holds its whole prompt in KV, read at every decode step, on the replicas that hold it. Such a
    request goes to the replica with the most free KV among those where its first token is expected
    within `spread_window_s` of the soonest, as `most-free-kv` would place it. (Followed as a context,
    the holders took all of that tenant's requests, the replicas without the prefix never got one to
    copy it, and the tenant met its objectives about 6 points less often than under `most-free-kv`
    on `hot-prefix` at 8 replicas and full load, all of it time per output token.)

    **New contexts** (no holder worth following) go to the replica running the fewest requests among
    those where the first token is expected within `spread_window_s` of the soonest (then the soonest):
    each request holds KV for its whole stay, so evening the count evens the engines' KV, and with it
    their room for cached blocks, for the contexts that later requests will follow; the window keeps
    that from costing the request more than a fraction of even an interactive objective. (The soonest
    alone sends new sessions wherever a prefill queue just emptied, however many requests run there,
    and their later turns find their prefix evicted; the free KV of the last report, which swings as
    prompts are prefilled, balanced worse than the count in our runs.)
    """

    name: ClassVar[str] = "driftsched"
    reads_load: ClassVar[bool] = True
    POPULAR: ClassVar[float] = 0.5
    """Share of the replicas a request fits that must hold its longest prefix for it to be popular."""

    def __init__(self, config: PlacementConfig, seed: int = 0) -> None:
        del seed
        self.affinity_slack = config.affinity_slack
        self.affinity_min_share = config.affinity_min_share
        self.balance_slack = config.balance_slack
        self.spread_window_s = config.spread_window_s

    def pick(self, ticket: Ticket, candidates: Sequence[Candidate], pool: Pool) -> Candidate:
        work = ticket.prompt_tokens + ticket.remaining_estimate
        bound = (1 + self.balance_slack) * (pool.work + work) / pool.replicas  # the mean with this request
        within = [c for c in candidates if c.work(pool.now) <= bound] or candidates
        times = {c.replica_id: c.ttft_s() for c in within}
        holder = max(within, key=lambda c: (c.cached, -c.queue, -times[c.replica_id], c.replica_id))
        gain = holder.cached - min(c.cached for c in within)
        soonest = min(within, key=lambda c: (times[c.replica_id], c.queue, c.replica_id))
        near = times[soonest.replica_id] + self.spread_window_s
        worth = self.affinity_min_share * ticket.prompt_tokens
        held_by = sum(c.cached >= holder.cached for c in within)
        if 0 < holder.cached >= worth and held_by >= max(2.0, self.POPULAR * len(within)):  # popular
            return max((c for c in within if times[c.replica_id] <= near),
                       key=lambda c: (c.free_kv, c.free_slots, c.replica_id))
        if gain <= 0 or gain < worth:  # a new context
            return min((c for c in within if times[c.replica_id] <= near),
                       key=lambda c: (c.queue, times[c.replica_id], -c.free_kv, c.replica_id))
        objective = ticket.ttft_slo_s if math.isfinite(ticket.ttft_slo_s) else 0.0
        patience = max(self.affinity_slack * objective, times[soonest.replica_id])
        return holder if times[holder.replica_id] <= patience else soonest


RULES: dict[str, type[MostFreeKv | RoundRobin | RayPrefix | LlmdSticky | DynamoKv | DriftSched]] = {
    rule.name: rule for rule in (DriftSched, MostFreeKv, RoundRobin, RayPrefix, LlmdSticky, DynamoKv)
}
"""The rules by the names `PlacementConfig.rule` takes (`PLACEMENT_RULES`, in its order)."""


def make_rule(name: str, config: PlacementConfig | None = None, seed: int = 0) -> PlacementRule:
    """The rule called `name`, with its parameters from `config` (defaults if None)."""
    rule = RULES.get(name)
    if rule is None:
        raise ValueError(f"unknown placement rule {name!r}; choose one of {', '.join(RULES)}")
    return rule(config if config is not None else PlacementConfig(), seed)
