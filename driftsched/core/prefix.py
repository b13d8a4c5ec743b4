"""Prompt prefixes as chained block hashes, and an index of which replica likely holds which blocks.

**Block hashes.** A prompt is cut into blocks of `block_tokens` tokens (only whole blocks: a partial
tail block is never shared by an engine either), and block i's hash covers block i *and* the hash of
block i - 1. Two prompts therefore share their first k hashes exactly when they share their first
k x `block_tokens` tokens, so the length of a common leading run of hashes is the length of a common
prefix, and a ticket can carry its prefix as a tuple of integers, never the prompt itself. vLLM's
automatic prefix caching keys its 16-token KV blocks the same way; a hash block is a whole number of
those, so a match here is a match there.

The simulated engine has no token ids, so the ingress hashes its text instead (`text_block_hashes`),
in blocks of `block_tokens` x 4 characters (its token count is also four characters a token).

**The index** (`PrefixIndex`) is the scheduler's picture of one replica's prefix cache, built from
where it placed work: every grant inserts the ticket's blocks. An engine evicts blocks it has not used
for a while once its KV fills, so the index keeps at most the replica's KV capacity in blocks, drops
the least recently used beyond that, and forgets blocks not touched for `ttl_s` (Dynamo's router
approximates its workers' caches without KV events the same way, with a 120 s TTL). It can be wrong
both ways (an engine under pressure evicts sooner; one idle keeps blocks longer), which costs a
worse placement, never a wrong answer: the engine itself decides what it reuses.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
"""Characters per token where a prompt has no token ids (as `deployments.engine.approx_token_count`)."""


def _chain(parent: int, payload: bytes) -> int:
    digest = hashlib.blake2b(parent.to_bytes(8, "little") + payload, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: fits a signed 64-bit integer anywhere


def chain_hashes(token_ids: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of the whole `block_tokens`-token blocks of `token_ids` (module docstring)."""
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
    out: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        block = token_ids[start:start + block_tokens]
        parent = _chain(parent, b"".join(int(t).to_bytes(4, "little", signed=True) for t in block))
        out.append(parent)
    return tuple(out)


def text_block_hashes(text: str, block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of `text` in blocks of `block_tokens` x `CHARS_PER_TOKEN` characters."""
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
    width = block_tokens * CHARS_PER_TOKEN
    data = text.encode("utf-8")
    out: list[int] = []
    parent = 0
    for start in range(0, len(data) - width + 1, width):
        parent = _chain(parent, data[start:start + width])
        out.append(parent)
    return tuple(out)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of equal leading blocks of two chained-hash sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixIndex:
    """Blocks one replica is believed to hold: LRU, bounded in blocks, aged out (module docstring)."""

    __slots__ = ("_blocks", "capacity_blocks", "ttl_s")

    def __init__(self, capacity_blocks: int, ttl_s: float = 120.0) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self._blocks: OrderedDict[int, float] = OrderedDict()  # hash -> last use, oldest first

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Sequence[int], now: float) -> int:
        """How many leading `blocks` are held (stale ones, older than `ttl_s`, do not count)."""
        held, horizon = self._blocks, now - self.ttl_s
        n = 0
        for h in blocks:
            used = held.get(h)
            if used is None or used < horizon:
                break
            n += 1
        return n

    def insert(self, blocks: Sequence[int], now: float) -> None:
        """Record that the replica now holds `blocks` (used at `now`); evict beyond capacity."""
        held = self._blocks
        for h in blocks:
            held[h] = now
            held.move_to_end(h)
        self.expire(now)
        while len(held) > self.capacity_blocks:
            held.popitem(last=False)

    def expire(self, now: float) -> None:
        """Forget blocks unused for `ttl_s`."""
        held, horizon = self._blocks, now - self.ttl_s
        while held:
            h, used = next(iter(held.items()))
            if used >= horizon:
                break
            del held[h]

    def resize(self, capacity_blocks: int) -> None:
        """A new capacity (the replica reported its KV size); evicts beyond it."""
        self.capacity_blocks = max(0, capacity_blocks)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
