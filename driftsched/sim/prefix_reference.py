"""What perfect placement could approach: the prefix-hit rate of one cache holding the pool's whole KV.

N replicas of KV capacity K cache at most N x K tokens of prefixes between them, and only if no prefix
is held twice. One LRU cache of ``capacity_tokens`` = N x K, fed every request in arrival order, is
that pool with placement out of the question: a request finds there the longest prefix any replica
could have kept for it, had every earlier request gone where it helped most. Placement rules are
judged against its hit rate.

The cache works as the simulated engines' (`driftsched.sim.engine`): whole blocks of
``Workload.block_tokens`` that a prompt covers, hits counted on leading blocks, capped at prompt - 1
(one token is always computed), and a request's blocks enter with its head most recent, so an eviction
takes a prompt's tail before its head. It holds only prefixes: the engines' KV also holds what running
requests generate and the prompts of the requests running, so the figure is a bound, not a forecast.
"""

from __future__ import annotations

import math

from driftsched.core.prefix import PrefixIndex
from driftsched.sim.workload import Workload


def single_lru_hit_rate(workload: Workload, capacity_tokens: int) -> float:
    """Cached prompt tokens / prompt tokens of `workload` replayed through one LRU of `capacity_tokens`
    (module docstring); NaN for a workload without prefix hashes or prompts."""
    block = workload.block_tokens
    if block <= 0 or capacity_tokens < 0:
        return math.nan
    cache = PrefixIndex(capacity_tokens // block, ttl_s=math.inf)
    hit = total = 0
    for item in workload.items:
        prompt = item.prompt_tokens
        blocks = item.prefix_blocks[: prompt // block]
        total += prompt
        if prompt > 0:
            hit += max(0, min(cache.match(blocks, item.arrival_s) * block, prompt - 1))
        cache.insert(blocks[::-1], item.arrival_s)
    return hit / total if total else math.nan
