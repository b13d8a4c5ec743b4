"""The ``sessions`` workload: conversations and an agent whose prompts grow turn by turn, and one-shot work.

Four tenants share the pool (tier 0 is the highest QoS tier); shares are of requests:

================  ====  ======  =====  ==================================================================
tenant            tier  weight  share  story
================  ====  ======  =====  ==================================================================
chat-app          0     4       40%    consumer assistant: conversations of about 6 turns, a person
                                       reading the answer and typing between turns
coding-agent      1     3       35%    coding agent: a task, then short tool calls whose results (a file,
                                       a test log) join the context, until the context is full (about
                                       7 calls)
support-desk      2     2       15%    help desk: a pasted ticket or log, then two or three follow-ups
batch-summaries   3     1       10%    one-shot summaries of documents; no sessions
================  ====  ======  =====  ==================================================================

**Growing context.** Turn k+1's prompt is turn k's prompt, turn k's answer and a new message (for the
agent, the tool's result): ``prompt[k+1] = prompt[k] + output[k] + message[k+1]``, the first prompt being
the tenant's system prompt and an opening message. A turn's ``prefix_blocks`` therefore extend the
previous turn's: the tenant's system-prompt blocks (shared by all its sessions, as in ``paper``), then
the session's own, drawn from `BlockIds` as the context grows. A session ends after its drawn number of
turns (geometric with the tenant's mean), or before a turn whose prompt plus ``max_tokens`` would not fit
`CONTEXT_TOKENS` (a client then starts over or compacts; an opening message is clipped to fit).

**Arrivals.** Sessions start as a Poisson process per tenant. The next turn comes once the previous
answer has streamed (its length x the step time of a replica decoding `DECODE_BATCH` sequences of
`DECODE_CONTEXT` tokens) and a think time has passed (a person reading and typing; for the agent, the
tool running). These gaps are real seconds, not stretched with the load: a person's pace does not depend
on the pool. Arrivals are open-loop, so under overload a turn can arrive before the previous answer is
done, as from a client that does not wait. The start rates make requests arrive at ``load`` x the
measured capacity of ``replicas`` replicas on this mix (`measured_capacity_rps`, which runs without a
prefix cache, so a load means the same work under every placement). Sessions start well before the
window, which therefore opens on sessions in progress whose earlier turns no cache has seen.

Lengths are lognormal per tenant (`SESSION_PROFILES`), drawn from one seeded stream per tenant and
session start times from another, so the mix does not depend on the load. Latency objectives are the
tiers' (`driftsched.core.slo.TIER_OBJECTIVES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.workload import (
    BLOCK_TOKENS,
    BlockIds,
    TenantSpec,
    Workload,
    WorkloadItem,
    measured_capacity_rps,
)

CONTEXT_TOKENS = 8192
"""Context length of the served model: a turn's prompt + max_tokens stays within it."""
DECODE_BATCH, DECODE_CONTEXT = 32, 2000
"""The busy replica whose decode step paces an answer's streaming (module docstring)."""
CAPACITY_SAMPLE = 3000
"""Requests drawn, across tenants by share, to measure the mix's capacity."""
WARMUP_QUANTILE = 0.99
"""Sessions start this quantile of session durations before the window opens."""


@dataclass(frozen=True, slots=True)
class SessionProfile:
    """How one tenant's sessions go; token counts and think times are (median, sigma) of lognormals."""

    spec: TenantSpec
    share: float
    category: str
    system_tokens: int
    opening: tuple[float, float]
    """The first message after the system prompt (a question, a task, a pasted document)."""
    message: tuple[float, float]
    """Each later message (the agent's: a tool's result)."""
    output: tuple[float, float]
    max_tokens: int
    mean_turns: float
    think_s: tuple[float, float]

    @property
    def has_sessions(self) -> bool:
        return self.mean_turns > 1


SESSION_PROFILES = (
    SessionProfile(
        TenantSpec("chat-app", tier=0, weight=4.0),
        0.40,
        "chat",
        system_tokens=1000,  # persona, safety and formatting rules, the user's saved memory
        opening=(80, 1.0),
        message=(60, 1.0),
        output=(260, 0.7),
        max_tokens=1024,
        mean_turns=6.0,
        think_s=(20.0, 0.8),
    ),
    SessionProfile(
        TenantSpec("coding-agent", tier=1, weight=3.0),
        0.35,
        "code",
        system_tokens=2500,  # a dozen tool schemas and the repository's instructions
        opening=(400, 0.6),  # the task, with the files it names
        message=(300, 0.9),  # a tool's result: a file, a diff, a test log
        output=(90, 0.6),  # a tool call's JSON arguments
        max_tokens=512,
        mean_turns=12.0,
        think_s=(1.5, 0.8),  # the tool running
    ),
    SessionProfile(
        TenantSpec("support-desk", tier=2, weight=2.0),
        0.15,
        "chat",
        system_tokens=600,  # help-desk policies and answer templates
        opening=(1500, 0.6),  # a pasted ticket thread or log
        message=(50, 0.8),
        output=(200, 0.6),
        max_tokens=768,
        mean_turns=3.0,
        think_s=(40.0, 0.7),
    ),
    SessionProfile(
        TenantSpec("batch-summaries", tier=3, weight=1.0),
        0.10,
        "summarize",
        system_tokens=400,  # the summarisation instructions, one template for every document
        opening=(2500, 0.5),  # the document
        message=(1, 0.0),  # unused: one turn
        output=(180, 0.5),
        max_tokens=512,
        mean_turns=1.0,
        think_s=(1.0, 0.0),  # unused
    ),
)


@dataclass(frozen=True, slots=True)
class _Turn:
    offset_s: float  # from the session's start
    prompt_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]


class _Tenant:
    """One tenant's sessions, drawn on demand (so every caller sees the same i-th session)."""

    def __init__(
        self, prof: SessionProfile, index: int, seed: int, ids: BlockIds, block_tokens: int, token_s: float
    ) -> None:
        self.prof, self.ids, self.block_tokens, self.token_s = prof, ids, block_tokens, token_s
        self.rng = np.random.default_rng([seed, index, 0])  # lengths and think times
        self.head = ids.fresh(prof.system_tokens // block_tokens) if block_tokens else ()
        self.sessions: list[list[_Turn]] = []

    def session(self, i: int) -> list[_Turn]:
        while len(self.sessions) <= i:
            self.sessions.append(self._draw())
        return self.sessions[i]

    def _tokens(self, median_sigma: tuple[float, float]) -> int:
        median, sigma = median_sigma
        return max(1, round(math.exp(self.rng.normal(math.log(median), sigma))))

    def _draw(self) -> list[_Turn]:
        prof, rng = self.prof, self.rng
        wanted = int(rng.geometric(1.0 / prof.mean_turns))
        room = CONTEXT_TOKENS - prof.max_tokens
        prompt = min(room, prof.system_tokens + self._tokens(prof.opening))
        offset = 0.0
        own: list[int] = []
        turns: list[_Turn] = []
        for k in range(wanted):
            if k:
                prev = turns[-1].output_tokens
                prompt += prev + self._tokens(prof.message)
                if prompt > room:
                    break
                think = math.exp(rng.normal(math.log(prof.think_s[0]), prof.think_s[1]))
                offset += prev * self.token_s + think
            output = min(prof.max_tokens, self._tokens(prof.output))
            turns.append(_Turn(offset, prompt, output, self._blocks(prompt, own)))
        return turns

    def _blocks(self, prompt: int, own: list[int]) -> tuple[int, ...]:
        """The tenant's head, then the session's own blocks, extended to cover ``prompt``'s whole blocks."""
        if not self.block_tokens:
            return ()
        whole = prompt // self.block_tokens
        head = self.head[:whole]
        need = whole - len(head)
        if need > len(own):
            own.extend(self.ids.fresh(need - len(own)))
        return head + tuple(own[:need])


def sessions_workload(
    num_requests: int,
    seed: int = 0,
    replicas: int = 4,
    load: float = 1.0,
    perf: PerfModel | None = None,
    block_tokens: int = BLOCK_TOKENS,
) -> Workload:
    """Generate the ``sessions`` workload (module docstring): ``num_requests`` requests at ``load``."""
    if num_requests < 2 or load <= 0 or replicas < 1 or block_tokens < 0:
        raise ValueError(
            f"need >= 2 requests, load > 0, replicas >= 1 and block_tokens >= 0 (got {num_requests}, "
            f"load={load}, replicas={replicas}, block_tokens={block_tokens})"
        )
    perf = perf or PerfModel()
    ids = BlockIds("sessions", seed)
    token_s = perf.decode_step_s(DECODE_BATCH, DECODE_CONTEXT)
    tenants = [_Tenant(p, i, seed, ids, block_tokens, token_s) for i, p in enumerate(SESSION_PROFILES)]

    # The mix's capacity, on the first sessions of each tenant in proportion to its share of requests.
    sample: list[WorkloadItem] = []
    turns_per_session: list[float] = []
    durations: list[float] = []
    for t in tenants:
        count = k = 0
        while count < t.prof.share * CAPACITY_SAMPLE:
            turns = t.session(k)
            sample += [_item(0.0, t.prof, tu, None) for tu in turns]
            count, k = count + len(turns), k + 1
        turns_per_session.append(count / k)
        durations += [t.session(i)[-1].offset_s for i in range(k)]
    rate = load * replicas * measured_capacity_rps(perf, sample)
    warmup = float(np.quantile(durations, WARMUP_QUANTILE))

    horizon = 1.2 * num_requests / rate + 10.0
    while True:
        arrivals = _arrivals(tenants, turns_per_session, rate, seed, warmup, horizon)
        if len(arrivals) >= num_requests:
            break
        horizon *= 1.5
    arrivals = arrivals[:num_requests]
    t0 = arrivals[0][0]
    items = [
        _item(t - t0, tenants[ti].prof, turn, f"{tenants[ti].prof.spec.name}/{si}" if sid else None)
        for t, ti, si, _, turn, sid in arrivals
    ]
    specs = tuple(p.spec for p in SESSION_PROFILES)
    return Workload("sessions", items, specs, block_tokens=block_tokens)


def _arrivals(
    tenants: list[_Tenant],
    turns_per_session: list[float],
    rate: float,
    seed: int,
    warmup: float,
    horizon: float,
) -> list[tuple[float, int, int, int, _Turn, bool]]:
    """Every turn arriving in [0, horizon], sorted: (time, tenant, session, turn, the turn, has a session)."""
    out: list[tuple[float, int, int, int, _Turn, bool]] = []
    for ti, (t, per) in enumerate(zip(tenants, turns_per_session, strict=True)):
        clock = np.random.default_rng([seed, ti, 1])  # session starts, apart from the lengths
        mean_gap = per / (t.prof.share * rate)
        start, si = -warmup, 0
        while True:
            start += float(clock.exponential(mean_gap))
            if start > horizon:
                break
            for k, turn in enumerate(t.session(si)):
                at = start + turn.offset_s
                if 0.0 <= at <= horizon:
                    out.append((at, ti, si, k, turn, t.prof.has_sessions))
            si += 1
    out.sort(key=lambda a: a[:4])
    return out


def _item(arrival_s: float, prof: SessionProfile, turn: _Turn, session_id: str | None) -> WorkloadItem:
    return WorkloadItem(
        arrival_s,
        prof.spec.name,
        prof.category,
        turn.prompt_tokens,
        prof.max_tokens,
        turn.output_tokens,
        prefix_blocks=turn.blocks,
        session_id=session_id,
    )
