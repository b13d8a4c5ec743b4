"""Latency objectives: what each tenant was promised, and what one request is held to.

A tenant has two objectives, each of which a request meets or misses on its own:

* **TTFT** (time to first token): how long a person or a program waits before anything comes back. A
  request's *TTFT deadline* is its arrival plus this target; the scheduler's queueing decides it.
* **TPOT** (time per output token after the first): how fast the answer streams. A request's *finish
  target* is its TTFT deadline plus its drift-corrected output estimate times this target.

A tenant states its own targets (`TenantConfig.ttft_slo_s`, `tpot_slo_s`), or takes its tier's
(`TIER_OBJECTIVES`, overridable under `CoreConfig.tier_objectives`), so a tenant replayed from a trace
that says nothing about objectives still has some. A request may ask for stricter targets than its
tenant's, never looser-than-promised ones below the tenant's floor (`Objectives.tighten`), and OpenAI's
``service_tier`` picks a tier within what the tenant may use (`service_tier_to_tier`).
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICE_TIERS = ("auto", "default", "flex", "priority")
"""OpenAI's ``service_tier`` values this service accepts (``scale`` is OpenAI's commitment plan)."""


@dataclass(frozen=True, slots=True)
class Objectives:
    """Latency targets in seconds; `e2e_s` (end to end) is optional and reported only."""

    ttft_s: float
    tpot_s: float
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.tpot_s > 0):
            raise ValueError(f"objectives must be > 0 seconds, got ttft {self.ttft_s}, tpot {self.tpot_s}")
        if self.e2e_s is not None and not self.e2e_s > 0:
            raise ValueError(f"an end-to-end objective must be > 0 seconds, got {self.e2e_s}")

    def tighten(self, ttft_s: float | None, tpot_s: float | None, floor: Objectives) -> Objectives:
        """These objectives with a request's stricter asks, which may not go below `floor`.

        An ask looser than the tenant's objective changes nothing (the tenant's promise stands); one
        stricter than `floor` (the strictest the tenant may ask for) is refused with `ValueError`,
        naming the floor, rather than silently weakened.
        """
        for name, ask, lowest in (("ttft", ttft_s, floor.ttft_s), ("tpot", tpot_s, floor.tpot_s)):
            if ask is not None and not (ask > 0 and ask >= lowest):
                raise ValueError(
                    f"a {name} objective of {ask * 1000:g} ms is stricter than this tenant may ask for "
                    f"(at least {lowest * 1000:g} ms)"
                )
        return Objectives(
            min(self.ttft_s, ttft_s) if ttft_s is not None else self.ttft_s,
            min(self.tpot_s, tpot_s) if tpot_s is not None else self.tpot_s,
            self.e2e_s,
        )


TIER_OBJECTIVES: dict[int, Objectives] = {
    # Tier 0, a person waiting in a chat or support widget: a reply that has not started after about a
    # second reads as a stall, and 10 tokens/s streams about twice as fast as people read.
    0: Objectives(ttft_s=1.5, tpot_s=0.1),
    # Tier 1, a developer tool (IDE assistant, agent step): the user is waiting but expects some work;
    # the answer is skimmed or applied, so it may stream at the same pace as tier 0.
    1: Objectives(ttft_s=5.0, tpot_s=0.1),
    # Tier 2, a pipeline a job waits on (summaries, extraction): nobody watches the stream; the job's
    # own schedule tolerates half a minute before work starts and 5 tokens/s while it runs.
    2: Objectives(ttft_s=30.0, tpot_s=0.2),
    # Tier 3 and below, offline generation (reports, content): only completion within the queue
    # deadline matters; the stream may crawl.
    3: Objectives(ttft_s=60.0, tpot_s=0.5),
}
"""Each tier's default objectives, with the reason for each (a tenant without its own takes these)."""


def tier_objectives(tier: int, table: dict[int, Objectives] | None = None) -> Objectives:
    """The objectives of `tier`: its own entry, else that of the nearest more important tier listed
    (tier 5 takes tier 3's when 4 and 5 are not listed), else the first listed."""
    table = table or TIER_OBJECTIVES
    known = sorted(table)
    below = [t for t in known if t <= tier]
    return table[below[-1]] if below else table[known[0]]


def service_tier_to_tier(service_tier: str | None, tier: int, best_tier: int) -> int:
    """The QoS tier a request runs at, from OpenAI's ``service_tier`` and its tenant's tiers.

    ``auto``/``default``/absent: the tenant's tier. ``flex`` (cheaper, slower): one tier less
    important. ``priority``: the most important tier the tenant may use (`best_tier`, which is its own
    tier unless the config grants a better one). Anything else is a `ValueError` naming the choices.
    """
    if service_tier is None or service_tier in ("auto", "default"):
        return tier
    if service_tier == "flex":
        return min(9, tier + 1)
    if service_tier == "priority":
        return min(tier, best_tier)
    raise ValueError(f"service_tier must be one of {', '.join(SERVICE_TIERS)}, got {service_tier!r}")
