"""Coalescing of waiting token deltas: `deployments.coalesce` (its replica-side `coalesced` too),
`Lease.next_merged` and the ingress's SSE
writer (the real `Ingress._sse`, driven with a lease filled by hand, no Ray).

What a client sees must not change but for the chunking: the same text, the same token count, the same
final usage, a valid OpenAI chunk stream; a lone delta goes out at once, and nothing is merged past the
end of a stream or into an error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.coalesce import coalesced, ends_merge, merge_deltas
from deployments.engine import EngineErrorCode, EngineFailure, FinishReason, TokenDelta, Usage
from serve_app.errors import ErrorCode, GatewayError
from serve_app.gateway import Lease
from serve_app.ingress import sse_events as write_sse
from serve_app.protocol import ResponseShaper

Item = TokenDelta | GatewayError | None


def tok(text: str, n: int = 1, ids: tuple[int, ...] | None = None) -> TokenDelta:
    return TokenDelta(text, n, token_ids=ids)


def final(text: str, n: int, usage: Usage) -> TokenDelta:
    return TokenDelta(text, n, FinishReason.STOP, usage)


async def _idle() -> None:
    await asyncio.Event().wait()


def lease_of(items: list[Item]) -> Lease:
    """A lease with `items` already queued (must run inside a loop: the lease's task is a real one)."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return Lease(queue, asyncio.get_running_loop().create_task(_idle()))


def drain(items: list[Item], merged: bool = True) -> list[Item]:
    """Every item a reader gets from a lease holding `items`, through `next_merged` (or `next`)."""

    async def scenario() -> list[Item]:
        lease = lease_of(items)
        out: list[Item] = []
        while True:
            item = await asyncio.wait_for(lease.next_merged() if merged else lease.next(), 1.0)
            out.append(item)
            if item is None or isinstance(item, GatewayError):
                lease.cancel()
                return out

    return asyncio.run(scenario())


def test_merge_keeps_text_tokens_ids_and_the_last_deltas_end():
    usage = Usage(7, 4, 2)
    merged = merge_deltas([tok("a", ids=(1,)), tok("bc", 2, (2, 3)), final("d", 1, usage)])
    assert (merged.text, merged.num_tokens, merged.token_ids) == ("abcd", 4, (1, 2, 3))
    assert merged.finish_reason is FinishReason.STOP and merged.usage == usage
    assert merge_deltas([tok("a"), tok("b")]).token_ids is None  # the simulated engine has no ids


def test_waiting_deltas_become_one_and_the_final_usage_is_kept_exactly():
    usage = Usage(5, 4)
    got = drain([tok("a"), tok("b"), tok("c"), final("d", 1, usage), None])
    assert len(got) == 2 and got[1] is None
    first = got[0]
    assert isinstance(first, TokenDelta)
    assert (first.text, first.num_tokens, first.usage, first.finish_reason) == ("abcd", 4, usage, "stop")


def test_a_lone_delta_is_not_held_for_company():
    async def scenario() -> None:
        lease = lease_of([])
        reader = asyncio.ensure_future(lease.next_merged())
        await asyncio.sleep(0)
        lease.deltas.put_nowait(tok("only"))
        got = await asyncio.wait_for(reader, 0.05)  # no timer: it comes with the next loop turn
        assert got == tok("only")
        lease.deltas.put_nowait(tok("next"))  # arrives later: the next read, not merged back
        assert await asyncio.wait_for(lease.next_merged(), 0.05) == tok("next")
        lease.cancel()

    asyncio.run(scenario())


def test_nothing_is_merged_past_the_end_of_a_stream():
    usage = Usage(3, 2)
    # a pump puts nothing after a final delta but None; were it to, the final delta still ends the merge
    got = drain([tok("a"), final("b", 1, usage), tok("late"), None])
    assert [(i.text, i.usage) for i in got if isinstance(i, TokenDelta)] == [("ab", usage), ("late", None)]


@pytest.mark.parametrize("terminal", [
    GatewayError(ErrorCode.REPLICA_FAILED, "lost"),
    TokenDelta("", 0, FinishReason.ERROR, error=EngineFailure(EngineErrorCode.ENGINE_DEAD, "dead")),
])
def test_an_error_is_never_merged_and_comes_alone_after_the_text_before_it(terminal):
    got = drain([tok("a"), tok("b"), terminal, tok("c"), None])
    assert got[0] == tok("ab", 2)
    assert got[1] is terminal
    if isinstance(terminal, TokenDelta):  # not terminal for the lease: reading goes on
        assert got[2:] == [tok("c"), None]


def test_next_without_merging_gives_every_delta():
    items: list[Item] = [tok("a"), tok("b"), final("c", 1, Usage(1, 3)), None]
    assert drain(items, merged=False) == items


_delta = st.builds(tok, st.text(max_size=3), st.integers(0, 3),
                   st.none() | st.tuples(st.integers(0, 9)))


@settings(max_examples=60, deadline=None)  # each example runs an event loop
@given(st.lists(st.lists(_delta, max_size=5), max_size=6), st.integers(1, 9))
def test_merging_any_arrival_pattern_keeps_what_the_client_sees(bursts, prompt):
    """Deltas arrive in bursts (each burst lands while the reader is busy); whatever the pattern, the
    merged stream carries the same text, tokens and ids, and the final delta's usage unchanged."""
    stream = [d for burst in bursts for d in burst]
    end = final("!", 1, Usage(prompt, sum(d.num_tokens for d in stream) + 1))

    async def scenario() -> list[Item]:
        lease = lease_of([])
        out: list[Item] = []
        arrivals = [*bursts[:-1], [*(bursts[-1] if bursts else []), end, None]]
        for burst in arrivals:
            for item in burst:
                lease.deltas.put_nowait(item)
            while not lease.deltas.empty():
                out.append(await lease.next_merged())
        lease.cancel()
        return out

    out = asyncio.run(scenario())
    assert out[-1] is None
    merged = [d for d in out if isinstance(d, TokenDelta)]
    assert "".join(d.text for d in merged) == "".join(d.text for d in [*stream, end])
    assert sum(d.num_tokens for d in merged) == end.usage.completion_tokens  # type: ignore[union-attr]
    assert [i for d in merged for i in d.token_ids or ()] == [i for d in stream for i in d.token_ids or ()]
    assert merged[-1].usage == end.usage and not any(ends_merge(d) for d in merged[:-1])
    assert len(merged) <= max(1, len(bursts))  # one chunk per burst at most


# -- the replica-side generator ------------------------------------------------------------------------

async def _source(feed: asyncio.Queue[TokenDelta | Exception], closed: list[bool]) -> Any:
    """An engine's stream: what the test puts on `feed` (an exception is raised), as it comes."""
    try:
        while True:
            item = await feed.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        closed.append(True)


def test_coalesced_merges_what_gathered_while_its_consumer_was_busy_and_closes_the_source():
    usage = Usage(2, 4)

    async def scenario() -> list[TokenDelta]:
        closed: list[bool] = []
        feed: asyncio.Queue[TokenDelta | Exception] = asyncio.Queue()
        gen = coalesced(_source(feed, closed))
        feed.put_nowait(tok("a"))
        got = [await asyncio.wait_for(gen.__anext__(), 1.0)]  # alone: nothing else had come
        for item in (tok("b"), tok("c"), final("d", 1, usage), tok("x")):  # while the consumer is busy
            feed.put_nowait(item)
            await asyncio.sleep(0.001)
        got += [await asyncio.wait_for(gen.__anext__(), 1.0), await asyncio.wait_for(gen.__anext__(), 1.0)]
        await gen.aclose()
        assert closed == [True]  # the engine's stream is closed with the generator
        return got

    got = asyncio.run(scenario())
    assert [d.text for d in got] == ["a", "bcd", "x"]  # nothing merged past the final delta
    assert got[1].usage == usage and got[1].num_tokens == 3


def test_coalesced_raises_the_sources_error_after_the_text_before_it():
    async def scenario() -> list[str]:
        texts: list[str] = []
        with pytest.raises(ValueError, match="too long"):
            feed: asyncio.Queue[TokenDelta | Exception] = asyncio.Queue()
            feed.put_nowait(tok("a"))
            feed.put_nowait(ValueError("too long"))
            async for delta in coalesced(_source(feed, [])):
                texts.append(delta.text)
        return texts

    assert asyncio.run(scenario()) == ["a"]


# -- the SSE writer ------------------------------------------------------------------------------------

def sse_events(items: list[Item], chat: bool, coalesce: bool, include_usage: bool = True) -> list[Any]:
    """The SSE events the ingress writes for a lease holding `items` (the first already taken)."""
    shaper = ResponseShaper(chat, "m", "default")

    async def scenario() -> list[str]:
        lease = lease_of(items[1:])
        return [e async for e in write_sse(shaper, lease, items[0], include_usage, coalesce)]

    events = asyncio.run(scenario())
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    return [e[6:-2] if e == "data: [DONE]\n\n" else json.loads(e[6:-2]) for e in events]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("coalesce", [False, True])
def test_the_sse_stream_is_valid_openai_chunks_with_or_without_coalescing(chat, coalesce):
    usage = Usage(6, 4)
    events = sse_events([tok(" a"), tok(" b"), tok(" c"), final(" d", 1, usage), None], chat, coalesce)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert len(chunks) == (1 if coalesce else 4)  # all four were waiting: one chunk
    obj = "chat.completion.chunk" if chat else "text_completion"
    assert {c["object"] for c in events[:-1]} == {obj} and len({c["id"] for c in events[:-1]}) == 1
    texts = [c["choices"][0]["delta"]["content"] if chat else c["choices"][0]["text"] for c in chunks]
    assert "".join(texts) == " a b c d"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    if chat:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        "prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}


def test_an_error_mid_stream_follows_the_text_before_it_as_its_own_event():
    events = sse_events([tok("a"), tok("b"), GatewayError(ErrorCode.REPLICA_FAILED, "lost")],
                        chat=False, coalesce=True)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["ab"]
    assert events[-1]["error"]["code"] == ErrorCode.REPLICA_FAILED
