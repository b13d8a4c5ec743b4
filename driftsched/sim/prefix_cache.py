"""The blocks one simulated engine holds for reuse: pinned ones with reference counts, evictable ones LRU.

A block is a chained hash (`driftsched.core.prefix`) standing for ``block_tokens`` tokens of KV. A block
that some running sequence references is *pinned* and never evicted. A block nobody references stays
*evictable* in least-recently-released order until free KV is needed: the engine calls `evict` with its
free KV after every allocation, and the evictable blocks are cut, oldest first, to what fits. `unpin`
releases a sequence's blocks tail first, so that its head, the part other prompts share, is evicted
last (vLLM's KV cache manager frees a request's blocks in reverse order for the same reason). The engine
(`driftsched.sim.engine`) decides when blocks are matched, pinned and released.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """Pinned and evictable prompt blocks of one engine (module docstring)."""

    __slots__ = ("block_tokens", "evictable", "pinned")

    def __init__(self, block_tokens: int) -> None:
        if block_tokens < 0:
            raise ValueError(f"block_tokens must be >= 0 (0 turns prefix caching off), got {block_tokens}")
        self.block_tokens = block_tokens
        self.pinned: dict[int, int] = {}  # block -> running sequences referencing it
        self.evictable: OrderedDict[int, None] = OrderedDict()  # nobody's, least recently released first

    def __len__(self) -> int:
        return len(self.pinned) + len(self.evictable)

    def match(self, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` are held, pinned or evictable."""
        pinned, evictable = self.pinned, self.evictable
        n = 0
        for h in blocks:
            if h not in pinned and h not in evictable:
                break
            n += 1
        return n

    def pin(self, blocks: Sequence[int]) -> None:
        """One more reference to each of ``blocks`` (held already or new); none of them is evictable."""
        pinned, evictable = self.pinned, self.evictable
        for h in blocks:
            if h in evictable:
                del evictable[h]
            pinned[h] = pinned.get(h, 0) + 1

    def unpin(self, blocks: Sequence[int]) -> None:
        """Drop a reference to each of ``blocks``; those left unreferenced become evictable, head last."""
        pinned, evictable = self.pinned, self.evictable
        for h in reversed(blocks):
            count = pinned[h] - 1
            if count:
                pinned[h] = count
            else:
                del pinned[h]
                evictable[h] = None

    def evict(self, free_tokens: int) -> None:
        """Evict the oldest evictable blocks until the rest fit in ``free_tokens`` of KV."""
        evictable = self.evictable
        for _ in range(len(evictable) - free_tokens // self.block_tokens):
            evictable.popitem(last=False)
