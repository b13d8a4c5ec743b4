"""Gateway overhead: DriftSched's ingress + scheduler path vs a bare Ray Serve pass-through app.

Both apps run in one private Ray instance on 127.0.0.1 and answer `POST /v1/completions` with one
token: DriftSched through auth, intake, the scheduler actor's batched submit/poll/release calls and the
granted replica's stream (simulated engine, time scale 1e-4, so engine time is ~0); the bare app through
a FastAPI ingress that streams from a one-token replica via a `DeploymentHandle`. Printed: sequential
latency p50/p99 and the highest sustained request rate found by closed-loop clients at a few
concurrencies.

Run: .venv/bin/python benchmarks/bench_gateway.py [--requests 300] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

bare = FastAPI()


def _bare_app() -> Any:
    from ray import serve

    @serve.deployment(max_ongoing_requests=10_000)
    class Echo:
        async def generate(self, prompt: str) -> AsyncIterator[str]:
            yield " lorem"

    @serve.deployment(max_ongoing_requests=10_000)
    @serve.ingress(bare)
    class PassThrough:
        def __init__(self, echo: Any) -> None:
            self.echo = echo

        @bare.post("/v1/completions")
        async def completions(self, body: dict) -> StreamingResponse:  # type: ignore[type-arg]
            stream = self.echo.options(stream=True).generate.remote(body.get("prompt", ""))

            async def events() -> AsyncIterator[str]:
                async for text in stream:
                    yield f'data: {{"choices": [{{"text": "{text}"}}]}}\n\n'
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

    return PassThrough.bind(Echo.bind())


def _driftsched_args() -> dict[str, Any]:
    return {
        "benchmark_mode": True,
        "auth": {"demo_keys": {"sk-bench": "bench"}, "keys_env": None},
        "core": {"tenants": [{"name": "bench", "max_queued": 10_000}],
                 "scheduler": {"policy": "sjf"}},
        "replicas": {"num_replicas": 2, "max_num_seqs": 256, "time_scale": 1e-4,
                     "model": "qwen3-0.6b-bf16"},
    }


async def _one(client: httpx.AsyncClient, url: str) -> float:
    body = {"prompt": "hi", "max_tokens": 1, "stream": True, "driftsched_target_tokens": 1}
    t0 = time.perf_counter()
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for _ in resp.aiter_bytes():
            pass
    return time.perf_counter() - t0


async def _latency(url: str, headers: dict[str, str], n: int) -> tuple[float, float]:
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for _ in range(20):
            await _one(client, url)
        samples = sorted([await _one(client, url) for _ in range(n)])
    return statistics.median(samples) * 1e3, samples[int(0.99 * (len(samples) - 1))] * 1e3


async def _rate(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        done, stop = 0, time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await _one(client, url)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    opts = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from serve_app.app import build_app

    temp_dir = tempfile.mkdtemp(prefix="dsbench-", dir="/tmp")
    ray.init(_temp_dir=temp_dir, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, num_cpus=8)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    try:
        serve.run(build_app(_driftsched_args()), name="driftsched", route_prefix="/")
        serve.run(_bare_app(), name="bare", route_prefix="/bare")
        apps = {
            "driftsched": ("http://127.0.0.1:8123/v1/completions", {"Authorization": "Bearer sk-bench"}),
            "bare serve": ("http://127.0.0.1:8123/bare/v1/completions", {}),
        }
        print(f"{'app':<12} {'p50 ms':>8} {'p99 ms':>8}  " +
              "  ".join(f"{'rps@' + str(c):>8}" for c in opts.concurrency) + f"  {'best rps':>8}")
        results = {}
        for name, (url, headers) in apps.items():
            p50, p99 = asyncio.run(_latency(url, headers, opts.requests))
            rates = [asyncio.run(_rate(url, headers, c, opts.seconds)) for c in opts.concurrency]
            results[name] = (p50, p99, max(rates))
            print(f"{name:<12} {p50:8.2f} {p99:8.2f}  " + "  ".join(f"{r:8.1f}" for r in rates) +
                  f"  {max(rates):8.1f}")
        (d50, d99, drate), (b50, b99, brate) = results["driftsched"], results["bare serve"]
        print(f"gateway added latency: p50 {d50 - b50:+.2f} ms, p99 {d99 - b99:+.2f} ms; "
              f"sustained rate {drate:.0f} vs {brate:.0f} req/s ({drate / brate:.0%} of bare Serve)")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
