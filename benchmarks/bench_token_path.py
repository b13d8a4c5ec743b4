"""The token path's cost per chunk, hop by hop, with and without coalescing of waiting deltas.

A streamed token crosses Serve twice: replica → ingress as an item of a streaming `DeploymentHandle`
call, then ingress → HTTP proxy → client as an SSE chunk (an ASGI message to the proxy, a write to the
socket). Three measurements, each for N concurrent streams of M one-token deltas, in one private Ray +
Serve on 127.0.0.1:

* ``handle``: the replica → ingress hop alone. A replica-like deployment produces one token per stream
  per event-loop turn (an engine as fast as the CPU allows) and yields them through a streaming handle
  to an ingress-like deployment that counts them; no HTTP. The merged variant yields every delta
  already waiting as one (`deployments.coalesce.coalesced`, a replica-side coalescer).
* ``sse``: the ingress → proxy → client hop alone. The ingress-like deployment produces the tokens
  itself and streams them to the HTTP client with the ingress's own SSE writer
  (`serve_app.ingress.sse_events`), coalescing or not.
* ``driftsched``: the whole path, two DriftSched apps side by side (``gateway.coalesce_chunks`` off and
  on) on simulated replicas at a tiny time scale, so the engine outruns the path and the stream's pace
  is the path's; each request checks that its text and usage hold exactly M tokens.

Printed per hop, streams and variant: SSE or handle chunks per stream, wall time per token and per
chunk, CPU per token of each process (replica, ingress, proxy, client, other Ray processes), cores
busy, and the median time to first token. Then merged / plain ratios of wall time and CPU per token.
Plain and merged alternate within each round, so a drift of the host's speed hits both alike.

Not measured: Ray Serve 2.60's direct streaming (``RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING`` on the
HAProxy ingress), which removes the ingress hop by making the model deployment the HTTP endpoint and
pinning each client connection to one replica. It does not fit DriftSched: the scheduler picks the
replica only after the request has queued, a preempted stream resumes on another replica within the
same response, and the ingress counts the tokens it releases, so the connection stays with the
ingress and the two hops stay; what can shrink is the number of chunks crossing them.

Run: .venv/bin/python benchmarks/bench_token_path.py [--streams 1 32] [--chunks 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from deployments.coalesce import coalesced
from deployments.engine import FinishReason, TokenDelta, Usage
from driftsched import results

PORT = 8125
AUTH = {"Authorization": "Bearer sk-bench"}
ROLES = ("replica", "ingress", "proxy", "client", "other")
Run = Callable[[], Awaitable[tuple[float, int, int, float]]]
"""One measurement: (wall seconds, or 0 to take the caller's; chunks; tokens; median time to first)."""
relay_api = FastAPI()


async def tokens(m: int, step_s: float) -> AsyncGenerator[TokenDelta, None]:
    """M one-token deltas, one per event-loop turn (or per `step_s`), the last with usage."""
    for _ in range(m - 1):
        yield TokenDelta(" w", 1)
        await asyncio.sleep(step_s)
    yield TokenDelta(" w", 1, FinishReason.LENGTH, Usage(1, m))


async def produce(out: asyncio.Queue[TokenDelta | None], m: int, step_s: float) -> None:
    """`tokens` onto `out` as a gateway's pump puts them on a lease, then None."""
    async for delta in tokens(m, step_s):
        out.put_nowait(delta)
    out.put_nowait(None)


def _hops_app() -> Any:
    from ray import serve

    from serve_app.gateway import Lease
    from serve_app.ingress import sse_events
    from serve_app.protocol import ResponseShaper

    def lease_for(m: int, step_s: float) -> Lease:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        return Lease(queue, asyncio.get_running_loop().create_task(produce(queue, m, step_s)))

    @serve.deployment(max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
    class Producer:
        async def generate(self, m: int, merge: bool, step_s: float) -> AsyncIterator[TokenDelta]:
            stream = tokens(m, step_s)
            async with contextlib.aclosing(coalesced(stream) if merge else stream) as deltas:
                async for delta in deltas:
                    yield delta

    @serve.deployment(max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(relay_api)
    class Relay:
        def __init__(self, producer: Any) -> None:
            self.producer = producer

        @relay_api.post("/handle")
        async def handle_hop(self, request: Request) -> dict[str, float]:
            """N streams through the handle, consumed here; the time is taken here, without HTTP."""
            body = await request.json()
            n, m, merge, step_s = body["streams"], body["chunks"], body["merge"], body["step_s"]

            async def one() -> tuple[int, int, float]:
                chunks = tokens = 0
                first = 0.0
                t0 = time.perf_counter()
                stream = self.producer.options(stream=True).generate.remote(m, merge, step_s)
                async for delta in stream:
                    if not chunks:
                        first = time.perf_counter() - t0
                    chunks += 1
                    tokens += delta.num_tokens
                return chunks, tokens, first

            t0 = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(n)))
            return {"wall_s": time.perf_counter() - t0, "chunks": sum(r[0] for r in results),
                    "tokens": sum(r[1] for r in results),
                    "ttft_s": statistics.median(r[2] for r in results)}

        @relay_api.post("/sse")
        async def sse_hop(self, request: Request) -> StreamingResponse:
            body = await request.json()
            lease = lease_for(body["chunks"], body["step_s"])
            first = await lease.next()
            shaper = ResponseShaper(False, "bench")
            events = sse_events(shaper, lease, first, include_usage=True, coalesce=body["merge"])
            return StreamingResponse(events, media_type="text/event-stream")

    return Relay.bind(Producer.bind())


def _driftsched_args(coalesce: bool, time_scale: float) -> dict[str, Any]:
    return {
        "benchmark_mode": True,
        "auth": {"demo_keys": {"sk-bench": "bench"}, "keys_env": None},
        "core": {"tenants": [{"name": "bench", "max_queued": 10_000}], "scheduler": {"policy": "fifo"}},
        # a decode step is ~10 modelled ms: at this scale the engine outruns the path, one token a chunk
        "replicas": {"num_replicas": 1, "max_num_seqs": 256, "time_scale": time_scale,
                     "stream_interval_s": 1e-6, "model": "qwen3-0.6b-bf16", "num_cpus": 0},
        "gateway": {"coalesce_chunks": coalesce, "ingress_num_cpus": 0},
    }


# -- clients and CPU accounting ----------------------------------------------------------------------

@dataclass(slots=True)
class Stream:
    chunks: int = 0
    tokens: int = 0
    text: list[str] = field(default_factory=list)
    ttft_s: float = 0.0


async def _sse_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Stream:
    """One streamed request: its content chunks, the usage's completion tokens, time to first text."""
    out, buffer, t0 = Stream(), "", time.perf_counter()
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for piece in resp.aiter_text():
            buffer += piece
            *events, buffer = buffer.split("\n\n")
            for event in events:
                data = event.removeprefix("data: ")
                if data == "[DONE]":
                    continue
                obj = json.loads(data)
                if "error" in obj:
                    raise RuntimeError(f"stream failed: {obj['error']}")
                if obj.get("usage"):
                    out.tokens = obj["usage"]["completion_tokens"]
                for choice in obj["choices"]:
                    if not out.chunks:
                        out.ttft_s = time.perf_counter() - t0
                    out.chunks += 1
                    out.text.append(choice["text"])
    return out


def _ray_processes() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _cpu(procs: dict[int, psutil.Process], roles: dict[str, str]) -> dict[str, float]:
    """CPU seconds so far by role; `roles` maps a deployment's process title part to its role."""
    totals = dict.fromkeys(ROLES, 0.0)
    me = psutil.Process().cpu_times()
    totals["client"] = me.user + me.system
    for proc in procs.values():
        try:
            title = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role = next((r for part, r in roles.items() if part in title), "other")
        role = "proxy" if "ProxyActor" in title else role
        totals[role] += times.user + times.system
    return totals


@dataclass(slots=True)
class Result:
    wall_s: float
    chunks: int
    tokens: int
    ttft_s: float
    cpu: dict[str, float]


async def _measure(run: Run, procs: dict[int, psutil.Process],
                   roles: dict[str, str]) -> Result:
    before = _cpu(procs, roles)
    t0 = time.perf_counter()
    wall, chunks, tokens, ttft = await run()
    wall = wall or time.perf_counter() - t0
    after = _cpu(procs, roles)
    return Result(wall, chunks, tokens, ttft, {r: after[r] - before[r] for r in ROLES})


def _client_run(url: str, headers: dict[str, str], body: dict[str, Any], n: int, m: int) -> Run:
    async def run() -> tuple[float, int, int, float]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(headers=headers, timeout=120, limits=limits) as client:
            streams = await asyncio.gather(*(_sse_stream(client, url, body) for _ in range(n)))
        for s in streams:  # coalescing must not change what the client receives
            if s.tokens != m or len("".join(s.text).split()) != m:
                raise RuntimeError(f"a stream carried {s.tokens} tokens / {len(''.join(s.text).split())} "
                                   f"words, expected {m}")
        return 0.0, sum(s.chunks for s in streams), sum(s.tokens for s in streams), \
            statistics.median(s.ttft_s for s in streams)
    return run


def _handle_run(n: int, m: int, merge: bool, step_s: float) -> Run:
    async def run() -> tuple[float, int, int, float]:
        async with httpx.AsyncClient(timeout=300) as client:
            resp = await client.post(f"http://127.0.0.1:{PORT}/hops/handle",
                                     json={"streams": n, "chunks": m, "merge": merge, "step_s": step_s})
        resp.raise_for_status()
        r = resp.json()
        if r["tokens"] != n * m:
            raise RuntimeError(f"the handle hop carried {r['tokens']} tokens, expected {n * m}")
        return r["wall_s"], r["chunks"], r["tokens"], r["ttft_s"]
    return run


# -- the report --------------------------------------------------------------------------------------

HEADER = ["hop", "N", "variant", "chunks/stream", "wall µs/token", "wall µs/chunk",
          *(f"{r} CPU µs/token" for r in ROLES), "CPU µs/token", "cores busy", "TTFT p50 ms"]


def _row(hop: str, n: int, variant: str, results: list[Result]) -> tuple[list[str], float, float]:
    """One table row (medians over rounds), its wall time and its CPU per token in µs."""
    tokens = results[0].tokens
    wall = statistics.median(r.wall_s for r in results)
    chunks = statistics.median(r.chunks for r in results)
    cpu = {role: statistics.median(r.cpu[role] for r in results) / tokens * 1e6 for role in ROLES}
    total = sum(cpu.values())
    ttft = statistics.median(r.ttft_s for r in results)
    cells = [hop, str(n), variant, f"{chunks / n:.1f}", f"{wall / tokens * 1e6:.0f}",
             f"{wall / chunks * 1e6:.0f}", *(f"{cpu[r]:.0f}" for r in ROLES), f"{total:.0f}",
             f"{total * tokens / 1e6 / wall:.2f}", f"{ttft * 1e3:.1f}"]
    print(" ".join(f"{c:>{w}}" for c, w in zip(cells, _WIDTHS, strict=True)), flush=True)
    return cells, wall / tokens, total


_WIDTHS = [10, 4, 7, 9, 9, 9, *(7 for _ in ROLES), 7, 5, 8]
_SHORT = ["hop", "N", "variant", "chunks/st", "wall/tok", "wall/chk", *ROLES, "cpu/tok", "cores", "ttft ms"]


def _notes(opts: argparse.Namespace) -> list[str]:
    return [
        f"N concurrent streams of {opts.chunks} one-token deltas each; figures are medians of "
        f"{opts.rounds} rounds, plain and merged alternating. *Wall µs/token* is the time to deliver "
        "every stream divided by the tokens; *CPU µs/token* the CPU time each process spent meanwhile, "
        "divided by the same tokens (*client* is the benchmark's own process, *other* every other Ray "
        "process: GCS, raylet, controller, scheduler actor); *cores busy* their sum over the wall time. "
        "*Merged* coalesces the deltas already waiting: at the replica for the handle hop "
        "(`deployments.coalesce.coalesced`), at the ingress's SSE writer for the other two "
        "(`gateway.coalesce_chunks`). Serve settings: "
        f"{' '.join(opts.serve_env) or 'defaults'}.",
        "CPU times come from /proc in 10 ms ticks, so a run that lasts well under a second (N = 1, or "
        "a merged run that sends a handful of chunks) has coarse CPU figures; its wall time is exact.",
    ]


def _run_for(hop: str, n: int, merge: bool, opts: argparse.Namespace) -> tuple[Run, dict[str, str]]:
    """One measurement of `hop` and the roles of the processes it runs through."""
    step_s, m = opts.step_us * 1e-6, opts.chunks
    if hop == "handle":
        return _handle_run(n, m, merge, step_s), {"hops:Producer": "replica", "hops:Relay": "ingress"}
    if hop == "sse":
        body: dict[str, Any] = {"chunks": m, "merge": merge, "step_s": step_s}
        return _client_run(f"http://127.0.0.1:{PORT}/hops/sse", {}, body, n, m), {"hops:Relay": "ingress"}
    app = "merged" if merge else "plain"
    body = {"prompt": "hi", "max_tokens": m, "stream": True, "stream_options": {"include_usage": True},
            "driftsched_target_tokens": m}
    return (_client_run(f"http://127.0.0.1:{PORT}/{app}/v1/completions", AUTH, body, n, m),
            {f"{app}:LLMReplica": "replica", f"{app}:Ingress": "ingress"})


def _measure_all(opts: argparse.Namespace) -> str:
    """Every hop at every N, plain and merged; prints the table and returns the results page."""
    procs = _ray_processes()
    print(f"{opts.chunks} one-token deltas per stream; CPU in µs per token; "
          f"{psutil.cpu_count()} cores; medians of {opts.rounds} rounds; Serve settings: "
          f"{' '.join(opts.serve_env) or 'defaults'}", flush=True)
    print(" ".join(f"{c:>{w}}" for c, w in zip(_SHORT, _WIDTHS, strict=True)))
    rows: list[list[str]] = []
    ratios: list[list[str]] = []
    for hop in opts.hops:
        for n in opts.streams:
            runs: dict[bool, list[Result]] = {False: [], True: []}
            for round_ in range(opts.rounds + 1):  # round 0 warms up and is not counted
                for merge in (False, True):
                    run, roles = _run_for(hop, n, merge, opts)
                    result = asyncio.run(_measure(run, procs, roles))
                    if round_:
                        runs[merge].append(result)
            plain, plain_wall, plain_cpu = _row(hop, n, "plain", runs[False])
            merged, merged_wall, merged_cpu = _row(hop, n, "merged", runs[True])
            rows += [plain, merged]
            ratios.append([hop, str(n), f"{merged_wall / plain_wall:.2f}x", f"{merged_cpu / plain_cpu:.2f}x"])
    print("merged / plain:")
    for hop, n_, wall_ratio, cpu_ratio in ratios:
        print(f"{hop:<10} {n_:>4}  wall/token {wall_ratio:>6}  cpu/token {cpu_ratio:>6}")
    command = results.command_line("python benchmarks/bench_token_path.py", sys.argv[1:])
    source = results.provenance(command, "private Ray + Serve on 127.0.0.1, simulated replicas")
    summary = results.markdown_table(["hop", "N", "merged / plain wall per token",
                                      "merged / plain CPU per token"], ratios)
    table = results.markdown_table(HEADER, rows, "lrl" + "r" * (len(HEADER) - 3))
    return results.page(source, table, _notes(opts), summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32], help="concurrent streams (N)")
    parser.add_argument("--chunks", type=int, default=200, help="one-token deltas per stream (M)")
    parser.add_argument("--rounds", type=int, default=2, help="plain/merged pairs per setting (medians)")
    parser.add_argument("--step-us", type=float, default=0.0,
                        help="handle and sse hops: µs between a stream's tokens (0: one per loop turn)")
    parser.add_argument("--time-scale", type=float, default=1e-3, help="driftsched hop: simulated engine")
    parser.add_argument("--hops", nargs="+", default=["handle", "sse", "driftsched"],
                        choices=["handle", "sse", "driftsched"])
    parser.add_argument("--serve-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="Ray Serve settings for every process, e.g. "
                             "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="also write the Markdown results page to PATH (docs/results/token-path.md)")
    opts = parser.parse_args()
    os.environ.update(kv.split("=", 1) for kv in opts.serve_env)  # Ray's workers inherit them
    from ray import serve

    from driftsched.bench.service import LocalServe
    from serve_app.app import build_app

    with LocalServe(port=PORT):
        serve.run(_hops_app(), name="hops", route_prefix="/hops")
        if "driftsched" in opts.hops:
            for name, coalesce in (("plain", False), ("merged", True)):
                serve.run(build_app(_driftsched_args(coalesce, opts.time_scale)), name=name,
                          route_prefix=f"/{name}")
        text = _measure_all(opts)
        for path in results.write_page(text, [opts.results_md]):
            print(f"wrote {path}")

if __name__ == "__main__":
    main()
