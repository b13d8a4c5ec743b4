"""DriftSched in front of real vLLM (CPU build) vs vLLM's own scheduling, on one multi-tenant load.

The same open-loop load (Poisson arrivals, fixed seed) is replayed against four set-ups that share
the engine settings and the concurrency cap (`--slots` running sequences on one replica):

* DriftSched `sjf` and `fifo`: the real Serve app (ingress, scheduler actor, one vLLM replica) over
  HTTP; the backlog waits in the scheduler and the policy picks who runs next.
* vLLM alone, `fcfs` and `priority` (tier as priority): `AsyncLLM` driven directly in this process,
  with every request handed to it on arrival, so the backlog waits in vLLM's own queue.

Output lengths are fixed per request (benchmark mode: `driftsched_target_tokens`, which the app
passes to vLLM as min_tokens/ignore_eos and never to the estimator or scheduler; vLLM alone gets the
same SamplingParams). Printed: median and P99 end-to-end latency, overall and per tenant.

Run: .venv/bin/python benchmarks/bench_vllm.py [--requests 120] [--rate 8] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# tenant -> (tier, API key, share of requests, category mix)
TENANTS: dict[str, tuple[int, str, float, dict[str, float]]] = {
    "interactive": (0, "sk-bench-interactive", 0.5, {"qa": 0.7, "chat": 0.3}),
    "batch": (1, "sk-bench-batch", 0.3, {"longform": 0.7, "chat": 0.3}),
    "free": (2, "sk-bench-free", 0.2, {"qa": 0.4, "chat": 0.3, "longform": 0.3}),
}
# category -> (prompt template, max_tokens, true output length range)
CATEGORIES: dict[str, tuple[str, int, tuple[int, int]]] = {
    "qa": ("What is the answer to question {i}?", 48, (8, 32)),
    "chat": ("Tell me about the scheduler and the queue, part {i}.", 256, (48, 128)),
    "longform": ("Write a report about token latency, section {i}.", 512, (256, 400)),
}
MAX_MODEL_LEN = 1024


@dataclass(slots=True, frozen=True)
class Item:
    """One request of the load: when, who, what, and its true output length (engine only)."""

    at_s: float
    tenant: str
    prompt: str
    max_tokens: int
    target: int


def make_load(n: int, rate: float, seed: int) -> list[Item]:
    rng = random.Random(seed)
    names = list(TENANTS)
    shares = [TENANTS[t][2] for t in names]
    items, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        tenant = rng.choices(names, shares)[0]
        mix = TENANTS[tenant][3]
        category = rng.choices(list(mix), list(mix.values()))[0]
        template, max_tokens, (lo, hi) = CATEGORIES[category]
        items.append(Item(t, tenant, template.format(i=i), max_tokens, rng.randint(lo, hi)))
    return items


def engine_args(model_dir: Path, slots: int, policy: str = "fcfs") -> dict[str, Any]:
    return {"dtype": "float32", "enforce_eager": True, "max_model_len": MAX_MODEL_LEN,
            "kv_cache_memory_bytes": 128 * 2**20, "scheduling_policy": policy,
            "max_num_seqs": slots, "max_num_batched_tokens": MAX_MODEL_LEN}


def cpu_env(work: Path) -> dict[str, str]:
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(work), "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
            "TOKENIZERS_PARALLELISM": "false"}


# -- vLLM alone ------------------------------------------------------------------------------------


async def run_vllm_alone(items: list[Item], model_dir: Path, slots: int, policy: str
                         ) -> list[tuple[str, float]]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    args = engine_args(model_dir, slots, policy)
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model_dir), disable_log_stats=True, **args))
    try:
        async def one(k: int, item: Item, t0: float) -> tuple[str, float]:
            await asyncio.sleep(max(0.0, t0 + item.at_s - time.monotonic()))
            start = time.monotonic()
            params = SamplingParams(max_tokens=item.target, min_tokens=item.target, ignore_eos=True,
                                    output_kind=RequestOutputKind.DELTA)
            prompt = TokensPrompt(prompt_token_ids=tok.encode(item.prompt))
            async for _ in engine.generate(prompt, params, f"{policy}-{k}", priority=TENANTS[item.tenant][0]):
                pass
            return item.tenant, time.monotonic() - start

        await one(-1, Item(0.0, "interactive", "hello", 8, 8), time.monotonic())
        t0 = time.monotonic()
        return list(await asyncio.gather(*(one(k, it, t0) for k, it in enumerate(items))))
    finally:
        engine.shutdown()


# -- DriftSched ------------------------------------------------------------------------------------


def driftsched_args(model_dir: Path, slots: int, policy: str, work: Path) -> dict[str, Any]:
    vllm_args = engine_args(model_dir, slots)
    for key in ("max_num_seqs", "max_num_batched_tokens", "scheduling_policy"):
        vllm_args.pop(key)
    return {
        "benchmark_mode": True,
        "auth": {"demo_keys": {spec[1]: name for name, spec in TENANTS.items()}, "keys_env": None},
        "core": {
            "tenants": [{"name": name, "tier": spec[0], "weight": 4.0 / (1 + spec[0]), "max_queued": 5000}
                        for name, spec in TENANTS.items()],
            "scheduler": {"policy": policy, "max_queued_total": 5000, "max_request_tokens": MAX_MODEL_LEN},
        },
        "replicas": {"engine": "vllm", "num_replicas": 1, "model": str(model_dir),
                     "served_model_name": "tiny-llama", "max_num_seqs": slots,
                     "max_num_batched_tokens": MAX_MODEL_LEN, "num_cpus": 1, "heartbeat_s": 0.2,
                     "engine_args": vllm_args, "env": cpu_env(work)},
        "gateway": {"queue_timeout_s": 600, "stall_timeout_s": 600, "drift_refresh_s": 0.5,
                    "ingress_max_ongoing_requests": 20000},
    }


async def run_driftsched(items: list[Item], base_url: str) -> list[tuple[str, float]]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 limits=httpx.Limits(max_connections=1000)) as client:
        async def one(item: Item, t0: float) -> tuple[str, float]:
            await asyncio.sleep(max(0.0, t0 + item.at_s - time.monotonic()))
            start = time.monotonic()
            key = TENANTS[item.tenant][1]
            resp = await client.post("/completions", headers={"authorization": f"Bearer {key}"},
                                     json={"model": "tiny-llama", "prompt": item.prompt,
                                           "max_tokens": item.max_tokens,
                                           "driftsched_target_tokens": item.target})
            resp.raise_for_status()
            assert resp.json()["usage"]["completion_tokens"] == item.target
            return item.tenant, time.monotonic() - start

        warm = Item(0.0, "interactive", "hello", 8, 8)
        await one(warm, time.monotonic())
        t0 = time.monotonic()
        return list(await asyncio.gather(*(one(it, t0) for it in items)))


# -- report ----------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, results: list[tuple[str, float]]) -> str:
    cols = [("all", [lat for _, lat in results])]
    cols += [(t, [lat for tenant, lat in results if tenant == t]) for t in TENANTS]
    cells = [f"{statistics.median(v):.2f} / {_pct(v, 0.99):.2f}" if v else "-" for _, v in cols]
    return f"{name:<20}" + "".join(f"{c:>20}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--rate", type=float, default=8.0, help="mean arrivals per second")
    parser.add_argument("--slots", type=int, default=4, help="running sequences (max_num_seqs)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-", dir="/tmp"))
    os.environ.update(cpu_env(work))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from driftsched.tiny_model import build_tiny_model

    model_dir = build_tiny_model(work / "tiny-llama")
    items = make_load(args.requests, args.rate, args.seed)
    tokens = sum(it.target for it in items)
    print(f"load: {len(items)} requests, {tokens} output tokens over {items[-1].at_s:.1f}s, "
          f"{args.slots} slots, seed {args.seed}")
    rows: list[str] = []
    for policy in ("fcfs", "priority"):
        results = asyncio.run(run_vllm_alone(items, model_dir, args.slots, policy))
        rows.append(report(f"vllm-alone {policy}", results))
        print(rows[-1], flush=True)

    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(_temp_dir=str(work / "ray"), include_dashboard=False, num_cpus=8, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8765})
        for policy in ("sjf", "fifo"):
            serve.run(build_app(driftsched_args(model_dir, args.slots, policy, work)), name="driftsched",
                      route_prefix="/")
            results = asyncio.run(run_driftsched(items, "http://127.0.0.1:8765/v1"))
            rows.append(report(f"driftsched {policy}", results))
            print(rows[-1], flush=True)
            serve.delete("driftsched")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    header = f"{'e2e p50 / p99 (s)':<20}" + "".join(f"{t:>20}" for t in ("all", *TENANTS))
    print("\n" + header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
