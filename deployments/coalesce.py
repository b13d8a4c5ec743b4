"""Merging token deltas that are already waiting, so that a busy stream sends fewer, bigger chunks.

Every chunk of a stream costs the same on each hop (a Serve streaming-handle item, an ASGI message, an
SSE write), whatever its size; a reader that fell behind its producer finds several deltas waiting and
can send them as one. Only what is already there is merged, nothing is waited for: a stream that keeps
up sends each delta alone and as soon as it arrives, so coalescing adds no latency at low load.

Merging keeps what the client sees: the text is the concatenation, `num_tokens` the sum, `token_ids`
the concatenation. A delta that ends its stream (`ends_merge`: a finish reason or usage) closes the
merge and lends it its finish reason, usage and timing; nothing after it is merged in. A delta that
carries an engine error is never merged with anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
from typing import TypeVar

from deployments.engine import TokenDelta

_Item = TypeVar("_Item")


def ends_merge(delta: TokenDelta) -> bool:
    """True for a delta after which nothing may be merged: the end of its stream or an error."""
    return delta.finish_reason is not None or delta.usage is not None or delta.error is not None


def mergeable(delta: TokenDelta) -> bool:
    """True for a delta that may join a merge (at its end, if `ends_merge`): any but an error."""
    return delta.error is None


def merge_deltas(parts: Sequence[TokenDelta]) -> TokenDelta:
    """One delta carrying `parts` in order; every part but the last must not `ends_merge`."""
    if len(parts) == 1:
        return parts[0]
    last = parts[-1]
    ids = None
    if any(p.token_ids is not None for p in parts):
        ids = tuple(i for p in parts for i in p.token_ids or ())
    return replace(last, text="".join(p.text for p in parts),
                   num_tokens=sum(p.num_tokens for p in parts), token_ids=ids)


def merge_waiting(item: TokenDelta, waiting: asyncio.Queue[_Item], held: list[_Item]) -> TokenDelta:
    """`item` with the deltas already in `waiting` merged in, without waiting for any; the first item
    that may not join (not a delta, or an error) is moved to `held`, to be taken before `waiting`."""
    if ends_merge(item) or held:
        return item
    parts = [item]
    while not waiting.empty():
        nxt = waiting.get_nowait()
        if not isinstance(nxt, TokenDelta) or not mergeable(nxt):
            held.append(nxt)
            break
        parts.append(nxt)
        if ends_merge(nxt):
            break
    return merge_deltas(parts)


async def coalesced(stream: AsyncIterator[TokenDelta]) -> AsyncGenerator[TokenDelta, None]:
    """`stream`'s deltas, those that arrived while the consumer was busy merged into one.

    A reader task pulls `stream` as fast as it yields; this generator hands on what has gathered each
    time it is resumed. The first delta is taken inline, before the reader starts, so `stream` begins
    (an engine takes its request) before this generator first yields to the event loop.

    It merges only when its consumer applies backpressure. A Serve deployment's streaming method does
    under ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``; by default Serve drains the generator into
    its own queue as fast as it yields and ships every item separately, so nothing ever gathers here
    (benchmarks/bench_token_path.py measures both). An exception of `stream` is raised here after the
    deltas before it; closing this generator closes `stream` before it returns.
    """
    waiting: asyncio.Queue[TokenDelta | BaseException | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for delta in stream:
                waiting.put_nowait(delta)
            waiting.put_nowait(None)
        except Exception as exc:  # handed to the consumer, raised there
            waiting.put_nowait(exc)

    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return
    reader = asyncio.get_running_loop().create_task(read())
    held: list[TokenDelta | BaseException | None] = []
    try:
        yield first
        while True:
            item = held.pop() if held else await waiting.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield merge_waiting(item, waiting, held)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
