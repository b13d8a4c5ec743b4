"""The synthetic multi-tenant workloads ``paper`` and ``saas``, and the arrival-rate helper for traces.

(The ``sessions`` workload, whose conversations grow turn by turn, is in `driftsched.sim.sessions`.)

## paper

Four API applications share one pool of L4 replicas (tier 0 is the highest QoS tier):

================  ====  ======  =====  =====================================================================
tenant            tier  weight  share  story
================  ====  ======  =====  =====================================================================
support-bot       0     4       35%    customer-support assistant in a SaaS product; short answers, chats
code-assist       1     3       25%    IDE coding assistant; code edits with explanations
docs-pipeline     2     2       20%    back-office document pipeline; summaries of long tickets, submitted
                                       in bursts by a batch job (mean burst of 8 requests, 50 ms apart)
content-studio    3     1       20%    marketing content generator; long articles and reports
================  ====  ======  =====  =====================================================================

True output lengths are lognormal per category (median, sigma), scaled per (tenant, category) by the
tenant's prompt style, then clipped to ``[1, max_tokens]``. Their means differ from the estimator's
admission-time priors (qa 64, chat 256, code 384, summarize 192, longform 768) the way deployed models do:
Q&A answers are terser (mean ~50), code answers carry explanations (~1.6x the prior), long-form runs into
the cap. Two mid-run template changes (runtime drift) act from the middle of the run on: code-assist starts
asking for unit tests with every edit (code outputs x2) and support-bot adds "be concise" to its chat
system prompt (chat outputs x0.6).

Arrivals: Poisson per tenant (docs-pipeline: Poisson bursts), generated at unit total rate and then stretched
so that the offered work is ``load`` times the measured saturated capacity of ``replicas``
replicas on this mix (``scale_to_load``), as greedy vLLM-style admission sustains it. Around 1.1 the GPUs
stay saturated and queues build in bursts; the code-assist shift makes the second half heavier.

## saas

A second product on the same pool, with other applications, other sizes and other bursts:

================  ====  ======  =====  =====================================================================
tenant            tier  weight  share  story
================  ====  ======  =====  =====================================================================
assistant         0     4       40%    consumer chat app: multi-turn chats carrying their history (long
                                       prompts, medium answers) and quick factual questions
tool-agent        1     3       35%    an agent's tool calls: a JSON call or a one-line decision read off a
                                       long transcript with tool schemas; sessions of about 6 calls 1.5 s
                                       apart (each call follows the previous tool's result)
eval-harness      2     2       15%    evaluation runs: benchmark questions (a letter or a number, some with
                                       reasoning) and coding problems, in bursts of about 32 requests 20 ms
                                       apart
nightly-reports   3     1       10%    report generator: long reports, and summaries of long inputs, in
                                       bursts of about 4 requests 0.5 s apart
================  ====  ======  =====  =====================================================================

Lengths are lognormal per (tenant, category) (``SAAS_PROFILES``). Against the estimator's priors the
agent's answers are far shorter (code ~90 tokens against a prior of 384, qa ~25 against 64) and its
prompts far longer than the paper's; the harness's answers are shorter still; the reports are longer.
The workload is stationary (no template change): its bias is static, learned once. Each tenant's
latency objectives are its tier's (`driftsched.core.slo.TIER_OBJECTIVES`), as for any tenant that
states none. Arrivals and load scaling as for ``paper``; a burst is spread at its tenant's own gap.

## Prefix blocks

Every tenant of both workloads opens each prompt with its own system prompt, of a stated length per
tenant (``_Profile.system_tokens``, the reason beside each). A request's ``prefix_blocks`` are the chained
block hashes of its prompt in ``block_tokens`` (default `BLOCK_TOKENS`, the placement's): the tenant's
system-prompt blocks for the whole blocks of its first ``min(system, prompt)`` tokens, then blocks of its
own. The lengths do not change (a prompt's length already includes its system prompt) and the ids come
from `BlockIds`, not from the generator's random stream, so arrivals and lengths are the same with or
without hashes (``block_tokens=0``: none); only a prefix cache changes what a run measures.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from driftsched.core.config import PlacementConfig
from driftsched.sim.perf_model import PerfModel

CATEGORIES = ("qa", "chat", "code", "summarize", "longform")
BURST_GAP_S = 0.05  # default spacing inside a burst, in seconds at the final rate (not rescaled)
BLOCK_TOKENS: int = PlacementConfig.model_fields["block_tokens"].default
"""Tokens per prefix block of the synthetic workloads: the placement's default hash block."""


@dataclass(frozen=True, slots=True)
class WorkloadItem:
    """One request to replay: arrival, who sent it, sizes known at admission, and the true output length."""

    arrival_s: float
    tenant: str
    category: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int  # TRUE length: only the simulated engine may read it
    prompt_text: str | None = None
    prefix_blocks: tuple[int, ...] = ()
    """Chained hashes of the prompt's whole blocks of `Workload.block_tokens` tokens (as
    `driftsched.core.prefix` makes them): equal leading ids mean an equal prefix."""
    session_id: str | None = None
    """The conversation or agent run the request belongs to, where the workload has sessions."""


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant application: QoS tier (0 = highest), fair-share weight, optional rate limits."""

    name: str
    tier: int
    weight: float
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests sorted by arrival, with the tenants that send them."""

    name: str
    items: list[WorkloadItem]
    tenants: tuple[TenantSpec, ...]
    phase_starts: tuple[float, ...] = ()
    """Fractions of the run (by arrival index) where the generating distribution changes (drift
    phases); used only to score estimates afterwards (the group oracle), never by the scheduler."""
    shock_s: float | None = None
    """The modelled instant of a drift shock (`driftsched.sim.shock`): requests arriving at or after it
    are changed. Used only to report around it, never by the scheduler."""
    block_tokens: int = 0
    """Tokens per block of the items' `prefix_blocks` (0: the items carry none)."""

    def phases(self) -> list[int]:
        """The drift phase of every item (0 before the first phase start)."""
        n = len(self.items)
        return [sum(i >= f * n for f in self.phase_starts) for i in range(n)]


@dataclass(frozen=True, slots=True)
class _Profile:
    """How one tenant sends traffic: share, category mix, per-category max_tokens and length scale."""

    spec: TenantSpec
    share: float
    mix: dict[str, float]
    max_tokens: dict[str, int]
    length_scale: dict[str, float]
    burst_size: float = 1.0  # mean requests per arrival event (geometric)
    burst_gap_s: float = BURST_GAP_S  # spacing inside a burst (seconds at the final rate)
    output: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(median, sigma) of output tokens per category, over `OUTPUT_LENGTH` (before `length_scale`)."""
    prompt: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(median, sigma) of prompt tokens per category, over `PROMPT_LENGTH`."""
    system_tokens: int = 0
    """Length of the system prompt that opens every prompt of the tenant (module docstring)."""


# (median, sigma) of lognormal token counts; prompt lengths are clipped to [8, 8000].
OUTPUT_LENGTH = {
    "qa": (36, 0.8),
    "chat": (190, 0.7),
    "code": (520, 0.6),
    "summarize": (160, 0.5),
    "longform": (900, 0.45),
}
PROMPT_LENGTH = {
    "qa": (180, 0.6),  # question + short system prompt
    "chat": (600, 0.7),  # system prompt + conversation history
    "code": (900, 0.6),  # file context + instruction
    "summarize": (2000, 0.5),  # a document
    "longform": (250, 0.5),  # a brief and an outline
}
SHIFT_AT = 0.5  # fraction of the run (by arrival order) from which the template changes act
SHIFTS = {("code-assist", "code"): 2.0, ("support-bot", "chat"): 0.6}

PROFILES = (
    _Profile(
        TenantSpec("support-bot", tier=0, weight=4.0),
        0.35,
        {"qa": 0.6, "chat": 0.35, "summarize": 0.05},
        {"qa": 512, "chat": 512, "summarize": 512},
        {"qa": 0.8},
        system_tokens=500,  # persona, tone and policy excerpts; most of a short support chat
    ),
    _Profile(
        TenantSpec("code-assist", tier=1, weight=3.0),
        0.25,
        {"code": 0.7, "qa": 0.2, "chat": 0.1},
        {"code": 2048, "qa": 512, "chat": 1024},
        {},
        system_tokens=700,  # editing rules and output format; the file context follows
    ),
    _Profile(
        TenantSpec("docs-pipeline", tier=2, weight=2.0, requests_per_minute=600.0),
        0.20,
        {"summarize": 0.8, "qa": 0.2},
        {"summarize": 400, "qa": 256},
        {"summarize": 0.7},  # bullet-point template
        burst_size=8.0,
        system_tokens=300,  # the batch job's one summarisation template; the document follows
    ),
    _Profile(
        TenantSpec("content-studio", tier=3, weight=1.0),
        0.20,
        {"longform": 0.7, "chat": 0.2, "summarize": 0.1},
        {"longform": 1536, "chat": 1024, "summarize": 1024},
        {"longform": 1.2},
        system_tokens=200,  # house style rules: its briefs are short, so barely a block is shared
    ),
)

_TEXT = {
    "qa": ("What is the refund window for annual plans?", "Which port does the API use?"),
    "chat": ("Hi! I need help setting up my account, can we go through it?", "Thanks, and then?"),
    "code": ("```python\ndef parse(rows):\n    ...\n```\nFix the bug in this function.",),
    "summarize": ("Summarize the following ticket thread in a few bullet points:\n...",),
    "longform": ("Write a report on our Q3 product launch, with sections and a conclusion.",),
}

# The saas workload (module docstring); lengths per (tenant, category) as (median, sigma).
SAAS_PROFILES = (
    _Profile(
        TenantSpec("assistant", tier=0, weight=4.0),
        0.40,
        {"chat": 0.65, "qa": 0.35},
        {"chat": 1024, "qa": 512},
        {},
        output={"chat": (240, 0.8), "qa": (70, 0.7)},
        prompt={"chat": (1200, 0.8), "qa": (120, 0.5)},  # history grows over a conversation
        system_tokens=1000,  # persona, safety and formatting rules, the user's saved memory
    ),
    _Profile(
        TenantSpec("tool-agent", tier=1, weight=3.0),
        0.35,
        {"code": 0.6, "qa": 0.4},
        {"code": 512, "qa": 256},
        {},
        burst_size=6.0,
        burst_gap_s=1.5,
        output={"code": (90, 0.5), "qa": (25, 0.6)},  # a tool call's arguments; a one-line decision
        prompt={"code": (3500, 0.4), "qa": (3000, 0.4)},  # transcript + tool schemas
        system_tokens=1500,  # the tool schemas and agent instructions, the same in every call
    ),
    _Profile(
        TenantSpec("eval-harness", tier=2, weight=2.0),
        0.15,
        {"qa": 0.7, "code": 0.3},
        {"qa": 256, "code": 1024},
        {},
        burst_size=32.0,
        burst_gap_s=0.02,
        output={"qa": (12, 1.0), "code": (260, 0.6)},
        prompt={"qa": (450, 0.5), "code": (300, 0.5)},  # few-shot question; problem statement
        system_tokens=256,  # the harness's instructions and answer format, before each question
    ),
    _Profile(
        TenantSpec("nightly-reports", tier=3, weight=1.0),
        0.10,
        {"longform": 0.6, "summarize": 0.4},
        {"longform": 2048, "summarize": 512},
        {},
        burst_size=4.0,
        burst_gap_s=0.5,
        output={"longform": (1100, 0.35), "summarize": (220, 0.5)},
        prompt={"longform": (1800, 0.5), "summarize": (5000, 0.4)},
        system_tokens=600,  # report template and formatting instructions
    ),
)


def capacity_rps(perf: PerfModel, items: Sequence[WorkloadItem]) -> float:
    """Requests/s one replica sustains on this mix when kept full (see ``saturated_throughput_rps``)."""
    n = len(items)
    prompt = sum(it.prompt_tokens for it in items) / n
    output = sum(it.output_tokens for it in items) / n
    # Time-averaged KV of a resident sequence: weight each request by its residence (output steps).
    weighted = sum(it.output_tokens * (it.prompt_tokens + it.output_tokens / 2) for it in items)
    return perf.saturated_throughput_rps(prompt, output, weighted / (output * n))


def measured_capacity_rps(perf: PerfModel, items: Sequence[WorkloadItem], sample: int = 2000) -> float:
    """Requests/s one replica completes on this mix when saturated, measured on a simulated engine.

    ``sample`` requests are taken evenly across the run (so every phase of a drifting workload counts)
    and fed greedily, as vLLM admits them, into one ``ContinuousBatchEngine`` (prompt KV free and a slot
    free); the rate is read between the 20% and 80% completion marks, away from warm-up and drain.
    It is lower than ``capacity_rps`` on KV-bound models, whose estimate assumes ideal KV packing.
    """
    from driftsched.sim.engine import ContinuousBatchEngine, EngineSequence  # engine imports perf only

    stride = max(1, len(items) // sample)
    picked = [it for it in items[::stride] if it.prompt_tokens + it.output_tokens <= perf.kv_capacity_tokens]
    if len(picked) < 10:
        raise ValueError(
            f"need at least 10 requests that fit the KV cache to measure capacity, got {len(picked)}"
        )
    engine = ContinuousBatchEngine(perf)
    lo_mark, hi_mark = len(picked) // 5, len(picked) * 4 // 5
    now, nxt, done, t_lo = 0.0, 0, 0, 0.0
    while done < hi_mark:
        while (
            nxt < len(picked) and engine.free_seq_slots and engine.free_kv_tokens >= picked[nxt].prompt_tokens
        ):
            it = picked[nxt]
            engine.add(EngineSequence(nxt, max(1, it.prompt_tokens), max(1, it.output_tokens)))
            nxt += 1
        duration, events = engine.step(horizon_s=1e9)
        now += duration
        before, done = done, done + len(events.finished)
        if before < lo_mark <= done:
            t_lo = now
    return (hi_mark - lo_mark) / (now - t_lo)


def scale_to_load(
    items: Sequence[WorkloadItem], perf: PerfModel, replicas: int, load: float
) -> list[WorkloadItem]:
    """Stretch the time axis so the mean arrival rate is ``load`` x the measured capacity of ``replicas``."""
    if len(items) < 2 or load <= 0 or replicas < 1:
        raise ValueError(f"need >= 2 items, load > 0 and replicas >= 1 (got load={load})")
    start, span = items[0].arrival_s, items[-1].arrival_s - items[0].arrival_s
    target = load * replicas * measured_capacity_rps(perf, items)
    factor = (len(items) - 1) / target / span if span > 0 else 0.0
    return [replace(it, arrival_s=(it.arrival_s - start) * factor) for it in items]


class BlockIds:
    """Fresh prefix-block ids for synthetic prompts; an id never drawn before is a block nobody shares.

    Ids count up from a start derived from (`salt`, `seed`), 62 bits wide: two workloads merged into one
    run (an adversary tenant beside a base workload, say) do not share blocks by accident, and nothing
    is drawn from a generator's random stream."""

    __slots__ = ("_next",)

    def __init__(self, salt: str, seed: int) -> None:
        digest = hashlib.blake2b(f"{salt}:{seed}".encode(), digest_size=8).digest()
        self._next = int.from_bytes(digest, "little") >> 2

    def fresh(self, n: int) -> tuple[int, ...]:
        """``n`` new ids (none for ``n <= 0``)."""
        start = self._next
        self._next += max(0, n)
        return tuple(range(start, self._next))


def with_system_prompts(
    items: Sequence[WorkloadItem], system_tokens: Mapping[str, int], block_tokens: int, ids: BlockIds
) -> list[WorkloadItem]:
    """`items` with `prefix_blocks`: their tenant's system-prompt blocks, then their own (module doc)."""
    if block_tokens <= 0:
        return list(items)
    heads = {name: ids.fresh(tokens // block_tokens) for name, tokens in system_tokens.items()}
    out = []
    for it in items:
        whole = it.prompt_tokens // block_tokens
        head = heads.get(it.tenant, ())[:whole]  # the whole blocks of min(system, prompt) tokens
        out.append(replace(it, prefix_blocks=head + ids.fresh(whole - len(head))))
    return out


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.asarray(np.exp(rng.normal(math.log(median), sigma, n)))


def paper_workload(
    num_requests: int,
    seed: int = 0,
    replicas: int = 4,
    load: float = 1.2,
    perf: PerfModel | None = None,
    with_text: bool = True,
    drift: bool = True,
    block_tokens: int = BLOCK_TOKENS,
) -> Workload:
    """Generate the ``paper`` workload: ``num_requests`` requests offering ``load`` x capacity.

    ``drift=False`` leaves out the two mid-run template changes (a stationary run of the same tenants,
    the base of the drift-shock workload); ``block_tokens=0`` leaves out the prefix blocks."""
    shifts = SHIFTS if drift else {}
    items = generate(PROFILES, num_requests, seed, replicas, load, perf, with_text, shifts)
    items = _system_prompts(items, PROFILES, block_tokens, BlockIds("paper", seed))
    phases = (SHIFT_AT,) if drift else ()
    return Workload("paper", items, tuple(p.spec for p in PROFILES), phases, block_tokens=block_tokens)


def saas_workload(
    num_requests: int,
    seed: int = 0,
    replicas: int = 4,
    load: float = 1.2,
    perf: PerfModel | None = None,
    with_text: bool = True,
    block_tokens: int = BLOCK_TOKENS,
) -> Workload:
    """Generate the ``saas`` workload (module docstring): stationary, ``load`` x capacity."""
    items = generate(SAAS_PROFILES, num_requests, seed, replicas, load, perf, with_text)
    items = _system_prompts(items, SAAS_PROFILES, block_tokens, BlockIds("saas", seed))
    return Workload("saas", items, tuple(p.spec for p in SAAS_PROFILES), block_tokens=block_tokens)


HOT_TENANT, HOT_SHARE, HOT_PREFIX_TOKENS = "tool-agent", 0.5, 3000
"""The ``hot-prefix`` workload's adversary: which saas tenant, its share of requests, its common prefix."""


def hot_prefix_workload(
    num_requests: int,
    seed: int = 0,
    replicas: int = 4,
    load: float = 0.9,
    perf: PerfModel | None = None,
    with_text: bool = True,
    block_tokens: int = BLOCK_TOKENS,
) -> Workload:
    """``saas`` with one hot prefix: its tool agent sends `HOT_SHARE` of the requests, every one opening
    with the same `HOT_PREFIX_TOKENS` tokens (nearly all of its ~3,000-3,500-token prompts), and the other
    tenants share the rest in their saas proportions. A placement that follows the prefix alone piles
    half the traffic on one replica; this is the case its release rule exists for."""
    rest = sum(p.share for p in SAAS_PROFILES if p.spec.name != HOT_TENANT)
    profiles = [
        replace(p, share=HOT_SHARE, system_tokens=HOT_PREFIX_TOKENS) if p.spec.name == HOT_TENANT
        else replace(p, share=(1 - HOT_SHARE) * p.share / rest)
        for p in SAAS_PROFILES
    ]
    items = generate(profiles, num_requests, seed, replicas, load, perf, with_text)
    items = _system_prompts(items, profiles, block_tokens, BlockIds("hot-prefix", seed))
    return Workload("hot-prefix", items, tuple(p.spec for p in profiles), block_tokens=block_tokens)


def _system_prompts(
    items: list[WorkloadItem], profiles: Sequence[_Profile], block_tokens: int, ids: BlockIds
) -> list[WorkloadItem]:
    if block_tokens < 0:
        raise ValueError(f"block_tokens must be >= 0 (0: no prefix blocks), got {block_tokens}")
    return with_system_prompts(items, {p.spec.name: p.system_tokens for p in profiles}, block_tokens, ids)


def generate(
    profiles: Sequence[_Profile],
    num_requests: int,
    seed: int,
    replicas: int,
    load: float,
    perf: PerfModel | None = None,
    with_text: bool = True,
    shifts: dict[tuple[str, str], float] | None = None,
) -> list[WorkloadItem]:
    """Requests of `profiles`' tenants, sorted by arrival, offering ``load`` x the measured capacity.

    ``shifts`` multiplies a (tenant, category)'s median output from `SHIFT_AT` of the run on."""
    shifts = shifts or {}
    rng = np.random.default_rng(seed)
    horizon = num_requests * 1.2 + 50.0  # unit total rate: enough arrivals to cut at num_requests
    arrivals: list[tuple[float, int]] = []
    for index, prof in enumerate(profiles):
        events = rng.poisson(prof.share * horizon / prof.burst_size)
        starts = np.sort(rng.uniform(0.0, horizon, events))
        sizes = rng.geometric(1.0 / prof.burst_size, events)
        for start, size in zip(starts.tolist(), sizes.tolist(), strict=True):
            arrivals.extend((start, index) for _ in range(size))
    arrivals.sort()
    arrivals = arrivals[:num_requests]
    n = len(arrivals)
    tenant_of = np.array([index for _, index in arrivals], dtype=np.int64)
    cat_of = np.zeros(n, dtype=np.int64)
    out_median, out_sigma = np.zeros(n), np.zeros(n)
    p_median, p_sigma = np.zeros(n), np.zeros(n)
    cap = np.zeros(n, dtype=np.int64)
    shifted = np.arange(n) >= SHIFT_AT * n
    for index, prof in enumerate(profiles):
        mask = tenant_of == index
        cats = [CATEGORIES.index(c) for c in prof.mix]
        cat_of[mask] = rng.choice(cats, size=int(mask.sum()), p=list(prof.mix.values()))
        for cat in prof.mix:
            sel = mask & (cat_of == CATEGORIES.index(cat))
            median, sigma = prof.output.get(cat, OUTPUT_LENGTH[cat])
            out_median[sel] = median * prof.length_scale.get(cat, 1.0)
            out_median[sel & shifted] *= shifts.get((prof.spec.name, cat), 1.0)
            out_sigma[sel] = sigma
            p_median[sel], p_sigma[sel] = prof.prompt.get(cat, PROMPT_LENGTH[cat])
            cap[sel] = prof.max_tokens[cat]
    outputs = np.clip(np.rint(out_median * np.exp(out_sigma * rng.standard_normal(n))), 1, cap)
    prompts = np.clip(np.rint(p_median * np.exp(p_sigma * rng.standard_normal(n))), 8, 8000)
    pick = rng.integers(0, 1 << 30, n)
    items = [
        WorkloadItem(
            t,
            profiles[ti].spec.name,
            CATEGORIES[ci],
            int(pt),
            int(mt),
            int(ot),
            _TEXT[CATEGORIES[ci]][pk % len(_TEXT[CATEGORIES[ci]])] if with_text else None,
        )
        for (t, _), ti, ci, pt, mt, ot, pk in zip(
            arrivals,
            tenant_of.tolist(),
            cat_of.tolist(),
            prompts.tolist(),
            cap.tolist(),
            outputs.tolist(),
            pick.tolist(),
            strict=True,
        )
    ]
    items = scale_to_load(items, perf or PerfModel(), replicas, load)
    return _tighten_bursts(items, {p.spec.name: p.burst_gap_s for p in profiles})


def _tighten_bursts(items: list[WorkloadItem], gaps: dict[str, float]) -> list[WorkloadItem]:
    """Spread requests that share an arrival instant (a burst) their tenant's gap apart, keeping order."""
    out: list[WorkloadItem] = []
    last: dict[str, tuple[float, float]] = {}  # tenant -> (burst start, last assigned time)
    for it in items:
        start, assigned = last.get(it.tenant, (-1.0, -1.0))
        t = assigned + gaps.get(it.tenant, BURST_GAP_S) if it.arrival_s == start else it.arrival_s
        last[it.tenant] = (it.arrival_s, t)
        out.append(replace(it, arrival_s=t) if t != it.arrival_s else it)
    out.sort(key=lambda it: it.arrival_s)
    return out
